"""Dataset sources named in a spec's ``data.source``: ``SCHEME:ARGUMENT``.

- ``sklearn:digits``: scikit-learn's bundled 1,797 8x8 handwritten digits (10 classes).
- ``npz:PATH``: a NumPy ``.npz`` file with arrays ``X`` ``(n_samples, n_features)`` and ``y``
  ``(n_samples,)``, read with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tuner.errors import DataError

SKLEARN_DATASETS = ("digits",)
FILE_SCHEMES = ("npz",)
#: Sources whose labels are a column named by ``data.target``.
TABLE_SCHEMES: tuple[str, ...] = ()
SCHEMES = ("sklearn", *FILE_SCHEMES)


def _encode_labels(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    classes, y = np.unique(labels, return_inverse=True)
    return y.astype(np.int64).reshape(-1), [str(c) for c in classes]


def _load_sklearn(source: str, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if name not in SKLEARN_DATASETS:
        raise DataError(
            f"data.source {source!r}: unknown scikit-learn dataset {name!r}; known: "
            + ", ".join(f"sklearn:{d}" for d in SKLEARN_DATASETS)
        )
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    y, classes = _encode_labels(np.asarray(bunch.target))
    return np.asarray(bunch.data), y, classes


def _check_file(source: str, path: str) -> Path:
    file = Path(path)
    if not path:
        raise DataError(f"data.source {source!r}: no file path after the scheme; write e.g. npz:data/train.npz")
    if file.is_dir():
        raise DataError(f"data.source {source!r}: that is a folder; name the file itself")
    if not file.is_file():
        raise DataError(f"data.source {source!r}: no such file; check the path (relative paths start at the spec's folder)")
    if file.stat().st_size == 0:
        raise DataError(f"data.source {source!r}: the file is empty")
    return file


def _load_npz(source: str, path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    file = _check_file(source, path)
    not_npz = DataError(f"data.source {source!r}: not an npz archive of plain arrays; "
                        "save it with numpy.savez(path, X=..., y=...)")
    try:
        npz = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise not_npz from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise not_npz
    with npz:
        missing = [k for k in ("X", "y") if k not in npz.files]
        if missing:
            raise DataError(f"data.source {source!r}: the npz file has no array {' or '.join(missing)}; "
                            f"it holds {npz.files}; save it with numpy.savez(path, X=..., y=...)")
        try:
            X, labels = npz["X"], npz["y"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            raise not_npz from None
    if X.ndim != 2 or labels.ndim != 1 or X.shape[0] != labels.shape[0]:
        raise DataError(f"data.source {source!r}: X must be (n_samples, n_features) and y (n_samples,), "
                        f"got X {X.shape} and y {labels.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"data.source {source!r}: X must hold real numbers, got dtype {X.dtype}")
    y, classes = _encode_labels(labels)
    return X, y, classes


def load_source(source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a dataset source.

    Args:
        source: ``"sklearn:NAME"`` or ``"npz:PATH"`` (see the module docstring).

    Returns:
        ``(X, y, classes)``: finite features ``(n_samples, n_features)`` float32, labels
        ``(n_samples,)`` int64 in ``[0, len(classes))``, and the class names.

    Raises:
        DataError: an unknown scheme or dataset, or a file that is missing or malformed.
    """
    scheme, _, argument = source.partition(":")
    if scheme == "sklearn":
        X, y, classes = _load_sklearn(source, argument)
    elif scheme == "npz":
        X, y, classes = _load_npz(source, argument)
    else:
        raise DataError(
            f"data.source {source!r}: unknown scheme {scheme!r}; known: "
            + ", ".join(f"{s}:..." for s in SCHEMES)
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"data.source {source!r}: needs at least one row and one feature, got X {X.shape}")
    if len(classes) < 2:
        raise DataError(f"data.source {source!r}: needs at least 2 classes, found {len(classes)}")
    if not np.isfinite(X).all():
        raise DataError(f"data.source {source!r}: features contain NaN or infinity; clean or impute them first")
    with np.errstate(over="ignore"):
        X32 = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X32).all():
        raise DataError(f"data.source {source!r}: feature values exceed the float32 range (|x| > 3.4e38); rescale them")
    return X32, y, classes

"""Dataset sources named in a spec's ``data.source``: ``SCHEME:ARGUMENT``."""

from __future__ import annotations

import numpy as np

from tuner.errors import DataError

SKLEARN_DATASETS = ("digits",)
SCHEMES = ("sklearn",)


def load_source(source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a dataset source.

    Args:
        source: ``"sklearn:digits"`` (scikit-learn's bundled 1,797 8x8 handwritten digits).

    Returns:
        ``(X, y, classes)``: features ``(n_samples, n_features)`` float32, labels
        ``(n_samples,)`` int64 in ``[0, len(classes))``, and the class names.

    Raises:
        DataError: an unknown scheme or dataset name.
    """
    scheme, _, argument = source.partition(":")
    if scheme not in SCHEMES:
        raise DataError(
            f"data.source {source!r}: unknown scheme {scheme!r}; known: "
            + ", ".join(f"{s}:..." for s in SCHEMES)
        )
    if argument not in SKLEARN_DATASETS:
        raise DataError(
            f"data.source {source!r}: unknown scikit-learn dataset {argument!r}; known: "
            + ", ".join(f"sklearn:{d}" for d in SKLEARN_DATASETS)
        )
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{argument}")()
    X = np.ascontiguousarray(bunch.data, dtype=np.float32)
    labels = np.asarray(bunch.target)
    classes, y = np.unique(labels, return_inverse=True)
    names = getattr(bunch, "target_names", classes)
    return X, y.astype(np.int64), [str(names[c]) for c in classes]

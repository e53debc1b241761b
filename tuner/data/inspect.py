"""The audit behind ``tuner data inspect``: a spec's dataset, its split, and which row went where.

Reads labels of every split (to count them) but hands no test features to anyone.
"""

from __future__ import annotations

import numpy as np

from tuner.data.dataset import DataSpec, _fit_preprocessor, _load_and_split
from tuner.data.split import Split
from tuner.files import check_output_file, write_error


def split_labels(split: Split, n_rows: int) -> np.ndarray:
    """``(n_rows,)`` object array: ``"train"``, ``"validation"`` or ``"test"`` (with folds
    ``"fold 1"`` .. ``"fold K"`` or ``"test"``) for each source row."""
    labels = np.empty(n_rows, dtype=object)
    for name, rows in split.parts().items():
        labels[rows] = name
    return labels


def write_split(path: str, split: Split, n_rows: int) -> None:
    """Write a CSV with columns ``row`` (0-based position in the source) and ``split``.

    Raises:
        TunerError: the file cannot be written (:func:`tuner.files.check_output_file`).
    """
    import pandas as pd  # only here: every other command starts faster without it

    table = pd.DataFrame({"row": np.arange(n_rows), "split": split_labels(split, n_rows)})
    check_output_file(path, "--split-out")
    try:
        table.to_csv(path, index=False)
    except OSError as e:
        raise write_error(path, "--split-out", e) from None


def inspect_data(data_spec: DataSpec, *, split_out: str | None = None) -> dict:
    """Describe the dataset of ``data_spec`` (a :class:`DataSpec`) and its split.

    Returns:
        A JSON-able dict: ``source``, ``rows``, ``features`` (input columns of the network,
        after one-hot encoding fitted on the training split), ``numeric_features``,
        ``categorical_features`` (text columns), ``classes``, ``official_test_split`` (bool),
        ``splits`` (for each split: ``rows`` and ``class_counts`` by class name),
        ``fingerprint``, and ``split_out`` (the file written, or None).

    Raises:
        DataError: the source cannot be loaded, split or preprocessed.
        TunerError: ``split_out`` cannot be written.
    """
    if split_out is not None:  # before the data is loaded
        check_output_file(split_out, "--split-out")
    dataset, split, fp = _load_and_split(data_spec)
    pre = _fit_preprocessor(data_spec, dataset, split)
    splits = {}
    for name, rows in split.parts().items():
        counts = np.bincount(dataset.y[rows], minlength=len(dataset.classes))
        splits[name] = {
            "rows": int(counts.sum()),
            "class_counts": {c: int(n) for c, n in zip(dataset.classes, counts, strict=True)},
        }
    if split_out is not None:
        write_split(split_out, split, dataset.n_rows)
    return {
        "source": data_spec.source,
        "rows": dataset.n_rows,
        "features": pre.n_features,
        "numeric_features": dataset.X.shape[1],
        "categorical_features": dataset.categorical.shape[1],
        "classes": dataset.classes,
        "official_test_split": dataset.test_rows is not None,
        "splits": splits,
        "fingerprint": fp,
        "split_out": split_out,
    }


def describe(info: dict) -> str:
    """The text ``tuner data inspect`` prints for an :func:`inspect_data` result."""
    splits = info["splits"]
    sizes = ", ".join(f"{name} {part['rows']}" for name, part in splits.items())
    official = " (test: the source's official test split)" if info["official_test_split"] else ""
    features = f"{info['features']}"
    if info["categorical_features"]:
        n_text = info["categorical_features"]
        features += (
            f" ({info['numeric_features']} numeric, {n_text} text column{'s' if n_text != 1 else ''} "
            "one-hot encoded as fitted on the training split)"
        )
    width = max(len("class"), *(len(c) for c in info["classes"]))
    lines = [
        f"source       {info['source']}",
        f"rows         {info['rows']}: {sizes}{official}",
        f"features     {features}",
        f"classes      {len(info['classes'])}",
        f"  {'class':<{width}}" + "".join(f"  {name:>10}" for name in splits),
        *(
            f"  {c:<{width}}" + "".join(f"  {p['class_counts'][c]:>10}" for p in splits.values())
            for c in info["classes"]
        ),
        f"fingerprint  {info['fingerprint']}",
    ]
    if info["split_out"]:
        lines.append(f"split of each row written to {info['split_out']}")
    return "\n".join(lines)

"""The one place that splits data: stratified, seeded train/validation/test indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuner.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    """Row indices (int64, sorted ascending) of the training, validation and test splits."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def stratified_split(
    y: np.ndarray,
    fractions: dict[str, float],
    seed: int,
    class_names: list[str] | None = None,
    *,
    test_rows: np.ndarray | None = None,
) -> Split:
    """Split rows into train, validation and test, keeping class proportions in each.

    Each class's rows are shuffled by ``numpy.random.default_rng(seed)`` (classes in sorted
    order) and cut into ``round(n_c * fraction)`` validation and test rows, the rest training
    rows. The result depends only on the labels and the seed, never on feature values.

    A source with an official test split (MNIST's 10,000 ``t10k`` rows) passes it as
    ``test_rows``: those rows are the test split, whatever ``fractions["test"]`` says, and each
    class's remaining rows are cut into validation and training rows in the ratio
    ``fractions["validation"] : fractions["train"]`` (60/20/20 gives 1/4 of them to validation).

    Args:
        y: ``(n_samples,)`` integer labels.
        fractions: ``{"train": f, "validation": f, "test": f}``, each positive, summing to 1.
        seed: seed of the shuffle.
        class_names: names of the labels ``0..K-1``, for error messages.
        test_rows: int64 row indices of an official test split, or None.

    Returns:
        A :class:`Split` of sorted int64 row indices, disjoint and together covering every row.

    Raises:
        DataError: a class has too few rows to give every split at least one (with an official
            test split: the training and validation splits).
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    carved = np.ones(y.shape[0], dtype=bool)
    if test_rows is not None:
        carved[test_rows] = False
        parts["test"].append(np.asarray(test_rows, dtype=np.int64))
        validation_share, test_share = (
            fractions["validation"] / (fractions["train"] + fractions["validation"]),
            0.0,
        )
    else:
        validation_share, test_share = fractions["validation"], fractions["test"]
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero((y == label) & carved))
        n_val = int(round(rows.size * validation_share))
        n_test = int(round(rows.size * test_share))
        if min(n_val, rows.size - n_val - n_test) < 1 or (test_rows is None and n_test < 1):
            name = class_names[label] if class_names is not None else label.item()
            where = " outside the official test split" if test_rows is not None else ""
            raise DataError(
                f"class {name!r} has {rows.size} rows{where}, too few for the split {fractions}; "
                "every split needs at least one row of each class: add rows or drop the class"
            )
        parts["validation"].append(rows[:n_val])
        parts["test"].append(rows[n_val : n_val + n_test])
        parts["train"].append(rows[n_val + n_test :])
    return Split(**{s: np.sort(np.concatenate(parts[s])).astype(np.int64) for s in SPLITS})

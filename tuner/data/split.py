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


def stratified_split(y: np.ndarray, fractions: dict[str, float], seed: int,
                     class_names: list[str] | None = None) -> Split:
    """Split rows into train, validation and test, keeping class proportions in each.

    Each class's rows are shuffled by ``numpy.random.default_rng(seed)`` (classes in sorted
    order) and cut into ``round(n_c * fraction)`` validation and test rows, the rest training
    rows. The result depends only on the labels and the seed, never on feature values.

    Args:
        y: ``(n_samples,)`` integer labels.
        fractions: ``{"train": f, "validation": f, "test": f}``, each positive, summing to 1.
        seed: seed of the shuffle.
        class_names: names of the labels ``0..K-1``, for error messages.

    Raises:
        DataError: a class has too few rows to give every split at least one.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        n_val = int(round(rows.size * fractions["validation"]))
        n_test = int(round(rows.size * fractions["test"]))
        if min(n_val, n_test, rows.size - n_val - n_test) < 1:
            name = class_names[label] if class_names is not None else label.item()
            raise DataError(
                f"class {name!r} has {rows.size} rows, too few for the split {fractions}; "
                "every split needs at least one row of each class: add rows or drop the class"
            )
        parts["validation"].append(rows[:n_val])
        parts["test"].append(rows[n_val:n_val + n_test])
        parts["train"].append(rows[n_val + n_test:])
    return Split(**{s: np.sort(np.concatenate(parts[s])).astype(np.int64) for s in SPLITS})

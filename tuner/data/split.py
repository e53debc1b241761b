"""The one place that splits data: stratified, seeded train/validation/test indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuner.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    """Row indices (int64, sorted ascending) of the training, validation and test splits.

    With K-fold cross-validation (``data.folds``), ``train`` and ``validation`` both hold every
    non-test row and ``folds`` the fold (int8, ``0..K-1``) of each of them, in ``train``'s
    order: fold ``k``'s model trains on the rows of the other folds and is scored on fold
    ``k``'s. Otherwise ``folds`` is None.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    folds: np.ndarray | None = None

    def parts(self) -> dict[str, np.ndarray]:
        """Each part's row indices by name: ``train``, ``validation``, ``test``; with folds
        ``fold 1`` .. ``fold K`` and ``test``."""
        if self.folds is None:
            return {s: getattr(self, s) for s in SPLITS}
        n_folds = int(self.folds.max()) + 1
        folds = {f"fold {k + 1}": self.train[self.folds == k] for k in range(n_folds)}
        return {**folds, "test": self.test}


def stratified_split(
    y: np.ndarray,
    fractions: dict[str, float],
    seed: int,
    class_names: list[str] | None = None,
    *,
    test_rows: np.ndarray | None = None,
    folds: int | None = None,
) -> Split:
    """Split rows into train, validation and test, keeping class proportions in each.

    Each class's rows are shuffled by ``numpy.random.default_rng(seed)`` (classes in sorted
    order) and cut into ``round(n_c * fraction)`` validation and test rows, the rest training
    rows. The result depends only on the labels and the seed, never on feature values.

    A source with an official test split (MNIST's 10,000 ``t10k`` rows) passes it as
    ``test_rows``: those rows are the test split, whatever ``fractions["test"]`` says, and each
    class's remaining rows are cut into validation and training rows in the ratio
    ``fractions["validation"] : fractions["train"]`` (60/20/20 gives 1/4 of them to validation).

    With ``folds`` K, ``fractions`` holds only ``test``; each class's non-test rows, in their
    shuffled order, are dealt to folds ``0..K-1`` in turn, the deal going on from class to
    class, so every fold holds each class's rows within one and fold sizes differ by at most
    one (as scikit-learn's ``StratifiedKFold``, whose assignment differs).

    Args:
        y: ``(n_samples,)`` integer labels.
        fractions: ``{"train": f, "validation": f, "test": f}``, each positive, summing to 1.
        seed: seed of the shuffle.
        class_names: names of the labels ``0..K-1``, for error messages.
        test_rows: int64 row indices of an official test split, or None.
        folds: the number of cross-validation folds, or None for one validation split.

    Returns:
        A :class:`Split` of sorted int64 row indices, disjoint and together covering every row.

    Raises:
        DataError: a class has too few rows to give every split at least one (with an official
            test split: the training and validation splits), or, with ``folds``, fewer rows
            outside the test split than folds.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    carved = np.ones(y.shape[0], dtype=bool)
    if test_rows is not None:
        carved[test_rows] = False
        parts["test"].append(np.asarray(test_rows, dtype=np.int64))
        test_share = 0.0
    else:
        test_share = fractions["test"]
    if folds:  # the folds are cut from every non-test row
        validation_share = 0.0
    elif test_rows is not None:
        validation_share = fractions["validation"] / (fractions["train"] + fractions["validation"])
    else:
        validation_share = fractions["validation"]
    fold_rows: list[np.ndarray] = []
    fold_ids: list[np.ndarray] = []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero((y == label) & carved))
        n_val = int(round(rows.size * validation_share))
        n_test = int(round(rows.size * test_share))
        name = class_names[label] if class_names is not None else label.item()
        if (test_rows is None and n_test < 1) or (
            not folds and min(n_val, rows.size - n_val - n_test) < 1
        ):
            where = " outside the official test split" if test_rows is not None else ""
            raise DataError(
                f"class {name!r} has {rows.size} rows{where}, too few for the split {fractions}; "
                "every split needs at least one row of each class: add rows or drop the class"
            )
        left = rows.size - n_test
        if folds and left < folds:
            fix = (
                f"use at most {left} folds, or add rows or drop the class"
                if left >= 2
                else "lower data.split.test, add rows or drop the class"
            )
            raise DataError(
                f"data.folds = {folds}: class {name!r} has {left} row{'s' if left != 1 else ''} "
                "outside the test split, fewer than the folds (each fold needs a row of every "
                f"class); {fix}"
            )
        parts["validation"].append(rows[:n_val])
        parts["test"].append(rows[n_val : n_val + n_test])
        parts["train"].append(rows[n_val + n_test :])
        if folds:  # dealt in turn, going on from the previous class
            fold_rows.append(rows[n_test:])
            start = sum(r.size for r in fold_rows[:-1])
            fold_ids.append((start + np.arange(rows.size - n_test)) % folds)
    split = {s: np.sort(np.concatenate(parts[s])).astype(np.int64) for s in SPLITS}
    if not folds:
        return Split(**split)
    order = np.argsort(np.concatenate(fold_rows), kind="stable")
    return Split(
        train=split["train"],
        validation=split["train"],
        test=split["test"],
        folds=np.concatenate(fold_ids)[order].astype(np.int8),
    )

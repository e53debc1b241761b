"""The objective never sees a test row: changing test features leaves every trial value as it was."""

from __future__ import annotations

import numpy as np
import optuna
from conftest import write_spec

import tuner
from tuner.data import load_source, stratified_split


def _trial_values(spec_path, db_path):
    study = tuner.create_study(spec_path, storage=f"sqlite:///{db_path}")
    study.optimize()
    trials = study.optuna_study.get_trials()
    return [(t.state, t.value, t.params, t.intermediate_values) for t in trials]


def test_changed_test_rows_give_bit_identical_trial_values(tmp_path):
    X, y, _ = load_source("sklearn:digits")
    test_rows = stratified_split(y, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0).test
    np.savez(tmp_path / "original.npz", X=X, y=y)
    X_changed = X.copy()
    X_changed[test_rows] = np.random.default_rng(1).uniform(-50, 50, X_changed[test_rows].shape)
    np.savez(tmp_path / "changed.npz", X=X_changed, y=y)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    spec_a = write_spec(tmp_path / "a", n_trials=5, source=f"npz:{tmp_path / 'original.npz'}")
    spec_b = write_spec(tmp_path / "b", n_trials=5, source=f"npz:{tmp_path / 'changed.npz'}")
    original = _trial_values(spec_a, tmp_path / "a" / "s.db")
    changed = _trial_values(spec_b, tmp_path / "b" / "s.db")
    assert len(original) == 5
    assert all(
        state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for state, *_ in original
    )
    assert original == changed  # bit-identical values, params and per-epoch scores


def test_changed_test_rows_of_a_csv_table_give_bit_identical_trial_values(tmp_path):
    """A table with a text column and missing values: the one-hot encoding and the imputation
    are fitted on the training split, so new values, new categories and new gaps in the test
    rows change nothing a trial sees."""
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True)
    table = wine.frame.drop(columns="target")
    rng = np.random.default_rng(0)
    table["region"] = rng.choice(["north", "south", "east"], len(table))
    table.loc[rng.choice(len(table), 15, replace=False), "alcohol"] = np.nan
    table["label"] = [wine.target_names[t] for t in wine.target]
    test_rows = stratified_split(
        wine.target.to_numpy(), {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0
    ).test
    changed = table.copy()
    features = [c for c in table.columns if c not in ("region", "label")]
    changed.loc[test_rows, features] = rng.uniform(-1e3, 1e3, (len(test_rows), len(features)))
    changed.loc[test_rows[:5], "alcohol"] = np.nan
    changed.loc[test_rows, "region"] = "atlantis"  # a category the training split never saw
    assert (changed["label"] == table["label"]).all()

    values = []
    for folder, data in (("a", table), ("b", changed)):
        (tmp_path / folder).mkdir()
        data.to_csv(tmp_path / folder / "wine.csv", index=False)
        spec = write_spec(
            tmp_path / folder,
            n_trials=4,
            epochs=3,
            source="csv:wine.csv",
            data_extra='target = "label"\nmissing = "median"\nscaling = "minmax"',
        )
        values.append(_trial_values(spec, tmp_path / folder / "s.db"))
    assert len(values[0]) == 4 and any(
        state == optuna.trial.TrialState.COMPLETE for state, *_ in values[0]
    )
    assert values[0] == values[1]  # bit-identical values, params and per-epoch scores

"""The split: disjoint, stratified, deterministic, label-only; scaling fitted on train only."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.data import load_source, load_training_data, stratified_split
from tuner.errors import DataError
from tuner.spec import parse_spec_dict

FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}


def test_digits_split_is_disjoint_complete_and_stratified():
    X, y, classes = load_source("sklearn:digits")
    assert X.shape == (1797, 64) and X.dtype == np.float32 and len(classes) == 10
    split = stratified_split(y, FRACTIONS, seed=0)
    parts = [split.train, split.validation, split.test]
    assert sum(p.size for p in parts) == 1797
    assert np.unique(np.concatenate(parts)).size == 1797
    assert (split.train.size, split.validation.size, split.test.size) == (1079, 359, 359)
    for label in range(10):
        n = int(np.sum(y == label))
        assert int(np.sum(y[split.validation] == label)) == round(n * 0.2)
        assert int(np.sum(y[split.test] == label)) == round(n * 0.2)


def test_split_is_deterministic_and_depends_on_seed_only():
    _, y, _ = load_source("sklearn:digits")
    a, b = stratified_split(y, FRACTIONS, seed=3), stratified_split(y, FRACTIONS, seed=3)
    other = stratified_split(y, FRACTIONS, seed=4)
    np.testing.assert_array_equal(a.test, b.test)
    np.testing.assert_array_equal(a.validation, b.validation)
    assert not np.array_equal(a.test, other.test)


def test_class_too_small_for_split_is_refused():
    y = np.array([0] * 20 + [1] * 2)
    with pytest.raises(DataError, match="class 1 has 2 rows, too few"):
        stratified_split(y, FRACTIONS, seed=0)


def test_scaler_is_fitted_on_training_rows_only(tmp_path):
    X, y, _ = load_source("sklearn:digits")
    split = stratified_split(y, FRACTIONS, seed=0)
    X_changed = X.copy()
    X_changed[split.test] = 1e6  # absurd test rows: a scaler that saw them would shift
    np.savez(tmp_path / "a.npz", X=X, y=y)
    np.savez(tmp_path / "b.npz", X=X_changed, y=y)
    spec_a = parse_spec_dict({"data": {"source": f"npz:{tmp_path / 'a.npz'}"}})
    spec_b = parse_spec_dict({"data": {"source": f"npz:{tmp_path / 'b.npz'}"}})
    a, b = load_training_data(spec_a.data), load_training_data(spec_b.data)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.X_validation, b.X_validation)
    assert a.fingerprint != b.fingerprint
    np.testing.assert_allclose(a.X_train.mean(axis=0)[X[split.train].std(axis=0) > 0], 0, atol=1e-5)

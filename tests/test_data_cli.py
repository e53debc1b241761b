"""``tuner data inspect``, the fingerprint refusal on resume, the specs in studies/, and every
bad data input through the real command: exit code 2, one line naming the input, no traceback."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import REPO, invoke_tuner, people_table, run_tuner, write_mnist, write_spec

from tuner.data import load_source, load_training_data, stratified_split
from tuner.data.inspect import inspect_data
from tuner.spec import load_spec

TARGET = 'target = "label"'


def _csv(folder, table, *, extra=TARGET, name="d.csv"):
    table.to_csv(folder / name, index=False)
    return write_spec(folder, source=f"csv:{name}", data_extra=extra)


def _spec(folder, source, extra=""):
    return write_spec(folder, source=source, data_extra=extra)


def _mnist_with(folder, file, transform):
    write_mnist(folder / "m")
    path = folder / "m" / file
    path.write_bytes(transform(path.read_bytes()))
    return _spec(folder, "mnist:m")


def _people(changes: dict):
    table = people_table()
    for (row, column), value in changes.items():
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
    return table


CASES = {
    "csv missing": (
        lambda p: _spec(p, "csv:nope.csv", TARGET),
        "nope.csv'",
        "no such file; check the path",
    ),
    "csv empty": (
        lambda p: ((p / "d.csv").write_text(""), _spec(p, "csv:d.csv", TARGET))[1],
        "d.csv'",
        "the file is empty",
    ),
    "csv header only": (
        lambda p: ((p / "d.csv").write_text("a,label\n"), _spec(p, "csv:d.csv", TARGET))[1],
        "d.csv'",
        "the file has a header but no rows",
    ),
    "target column missing": (
        lambda p: _csv(p, people_table().rename(columns={"label": "y"})),
        "csv:",
        "no column 'label' (data.target); the columns are 'age', 'income', 'city', 'y'; set data.target",
    ),
    "feature column missing": (
        lambda p: _csv(p, people_table(), extra=TARGET + '\nfeatures = ["age", "height"]'),
        "csv:",
        "data.features names 'height', not in the file; the columns are 'age', 'income', 'city', 'label'",
    ),
    "one class": (
        lambda p: _csv(p, people_table().assign(label="stay")),
        "csv:",
        "needs at least 2 classes, found 1 ('stay')",
    ),
    "class too small": (
        lambda p: _csv(p, _people({(0, "label"): "rare", (1, "label"): "rare"})),
        "csv:",
        "class 'rare' has 2 rows, too few for the split",
    ),
    "missing label": (
        lambda p: _csv(p, _people({(7, "label"): None})),
        "csv:",
        "the label column 'label' is empty in 1 row (first: row 7, counting from 0); every row needs a label",
    ),
    "NaN in features": (
        lambda p: _csv(
            p, people_table().assign(income=lambda t: t.income.where(t.index % 10 != 3))
        ),
        "csv:",
        "features contain NaN or infinity: column 'income' has missing values in 6 rows (first: row 3, "
        'counting from 0); fill them, or set data.missing = "mean" or "median"',
    ),
    "infinity in features": (
        lambda p: _csv(p, people_table().assign(age=lambda t: t.age.where(t.index != 5, np.inf))),
        "csv:",
        "column 'age' is infinite (or beyond the float32 range, |x| > 3.4e38) in 1 row (first: row 5",
    ),
    "text in a number column": (
        lambda p: _csv(p, _people({(4, "age"): "forty"})),
        "csv:",
        "column 'age' needs numbers but holds text such as 'forty' in 1 row (first: row 4",
    ),
    "text column refused": (
        lambda p: _csv(p, people_table(), extra=TARGET + '\ncategorical = "refuse"'),
        "csv:",
        "column 'city' is not numeric (e.g. ",
    ),
    "missing category": (
        lambda p: _csv(p, _people({(2, "city"): None})),
        "csv:",
        "column 'city' has missing values in 1 row (first: row 2, counting from 0)",
    ),
    "not parquet": (
        lambda p: (
            (p / "d.parquet").write_text("a,b\n1,2\n"),
            _spec(p, "parquet:d.parquet", TARGET),
        )[1],
        "parquet:",
        "not a readable parquet file",
    ),
    "npz without X": (
        lambda p: (np.savez(p / "d.npz", y=np.arange(4)), _spec(p, "npz:d.npz"))[1],
        "npz:",
        "the npz file has no array X; it holds ['y']",
    ),
    "idx wrong magic": (
        lambda p: _mnist_with(p, "train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:]),
        "mnist:",
        "train-images-idx3-ubyte: wrong magic number 0x00000801, expected 0x00000803",
    ),
    "idx truncated": (
        lambda p: _mnist_with(p, "t10k-images-idx3-ubyte", lambda b: b[:-5]),
        "mnist:",
        "t10k-images-idx3-ubyte: truncated: the header announces 20 x 4 x 4 values (320 bytes) but the file holds 315",
    ),
    "idx images without labels": (
        lambda p: _mnist_with(p, "t10k-labels-idx1-ubyte", lambda b: b[:7] + b"\x13" + b[8:-1]),
        "mnist:",
        "t10k-images-idx3-ubyte holds 20 images but t10k-labels-idx1-ubyte 19 labels",
    ),
    "mnist folder absent": (
        lambda p: _spec(p, "mnist:nowhere"),
        "nowhere'",
        "does not exist; put the MNIST or Fashion-MNIST files train-images-idx3-ubyte",
    ),
    "mnist files absent": (
        lambda p: ((p / "m").mkdir(), _spec(p, "mnist:m"))[1],
        "mnist:",
        "has no train-images-idx3-ubyte (or train-images-idx3-ubyte.gz); put the MNIST",
    ),
    "split fraction negative": (
        lambda p: _spec(
            p, "sklearn:iris", "split = { train = 0.9, validation = 0.2, test = -0.1 }"
        ),
        "data.split",
        "data.split.test: must be a fraction in (0, 1), got -0.1",
    ),
    "split fractions sum": (
        lambda p: _spec(p, "sklearn:iris", "split = { train = 0.5, validation = 0.2, test = 0.2 }"),
        "data.split",
        "data.split: fractions must sum to 1, got 0.9",
    ),
    "unknown scheme": (
        lambda p: _spec(p, "hdf5:x.h5"),
        "hdf5:x.h5",
        "unknown scheme 'hdf5'; known: sklearn:..., npz:..., csv:..., parquet:..., mnist:...",
    ),
    "imputing an empty column": (
        lambda p: _csv(
            p, people_table().assign(income=np.nan), extra=TARGET + '\nmissing = "mean"'
        ),
        "csv:",
        "column 'income' has no value in the training split",
    ),
}


def _assert_one_line_error(result, *texts):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("tuner: error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in texts:
        assert text in result.stderr


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory) -> dict:
    """Each case's spec, run through ``tuner data inspect`` in this process
    (:func:`conftest.invoke_tuner`); one case also runs as a real process, in
    :func:`test_a_bad_data_input_gets_the_same_line_from_a_real_process`."""
    results = {}
    for case in sorted(CASES):
        folder = tmp_path_factory.mktemp(case.replace(" ", "-"))
        spec = CASES[case][0](folder)
        results[case] = (spec, invoke_tuner("data", "inspect", str(spec), cwd=folder))
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_input_exits_2_with_one_line(bad_input_results, case):
    _, names, message = CASES[case]
    _assert_one_line_error(bad_input_results[case][1], names, message)


def test_a_bad_data_input_gets_the_same_line_from_a_real_process(bad_input_results):
    case = "NaN in features"
    spec, in_process = bad_input_results[case]
    process = run_tuner("data", "inspect", str(spec), cwd=spec.parent)
    _assert_one_line_error(process, *CASES[case][1:])
    assert process.stderr == in_process.stderr


def test_split_out_to_a_missing_folder_or_a_folder_exits_2_naming_it(tmp_path):
    spec = _spec(tmp_path, "sklearn:iris")
    (tmp_path / "taken").mkdir()
    for path, message in (
        (
            "no/such/dir/split.csv",
            "--split-out 'no/such/dir/split.csv': folder 'no/such/dir' does not exist; create "
            "it or name a file in an existing folder",
        ),
        ("taken", "--split-out 'taken' is a folder; name a file in it"),
    ):
        result = run_tuner("data", "inspect", str(spec), "--split-out", path, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr == f"tuner: error: {message}\n"


def test_inspect_a_csv_table_with_a_text_column(tmp_path):
    table = people_table(n=80)
    spec = _csv(tmp_path, table)
    result = run_tuner(
        "data", "inspect", str(spec), "--json", "--split-out", "split.csv", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (
        info["rows"],
        info["features"],
        info["numeric_features"],
        info["categorical_features"],
    ) == (80, 5, 2, 1)
    assert info["classes"] == ["churn", "stay"] and info["official_test_split"] is False
    assert {s: v["class_counts"] for s, v in info["splits"].items()} == {
        "train": {"churn": 12, "stay": 36},
        "validation": {"churn": 4, "stay": 12},
        "test": {"churn": 4, "stay": 12},
    }

    written = pd.read_csv(tmp_path / "split.csv")
    assert list(written.columns) == ["row", "split"] and written["row"].tolist() == list(range(80))
    dataset = load_source(f"csv:{tmp_path / 'd.csv'}", target="label")
    split = stratified_split(dataset.y, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0)
    for name in ("train", "validation", "test"):
        assert written.index[written["split"] == name].tolist() == getattr(split, name).tolist()

    text = run_tuner("data", "inspect", str(spec), cwd=tmp_path).stdout
    assert "rows         80: train 48, validation 16, test 16" in text
    assert "features     5 (2 numeric, 1 text column one-hot encoded" in text
    assert f"fingerprint  {info['fingerprint']}" in text


def test_inspect_mnist_shows_the_official_test_split(tmp_path):
    write_mnist(tmp_path / "m", compress=True)
    spec = _spec(tmp_path, "mnist:", "split = { train = 0.75, validation = 0.15, test = 0.10 }")
    result = run_tuner(
        "data",
        "inspect",
        str(spec),
        "--json",
        "--split-out",
        "s.csv",
        cwd=tmp_path,
        env={"TUNER_MNIST_DIR": str(tmp_path / "m")},
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["rows"], info["features"], info["official_test_split"]) == (80, 16, True)
    assert {s: v["rows"] for s, v in info["splits"].items()} == {
        "train": 50,
        "validation": 10,
        "test": 20,
    }
    assert set(info["splits"]["validation"]["class_counts"].values()) == {
        1
    }  # 6 rows per class, 5:1
    written = pd.read_csv(tmp_path / "s.csv")
    assert (
        written["split"].iloc[60:].eq("test").all()
        and not written["split"].iloc[:60].eq("test").any()
    )


def test_resume_with_changed_data_exits_2_naming_both_fingerprints(tmp_path):
    table = people_table(n=80)
    spec = _csv(tmp_path, table)
    spec.write_text(
        spec.read_text().replace("n_trials = 4", "n_trials = 2").replace("epochs = 4", "epochs = 2")
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    before = load_training_data(load_spec(spec).data).fingerprint
    assert run_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    table.loc[0, "income"] += 1.0  # one feature value of one row
    table.to_csv(tmp_path / "d.csv", index=False)
    after = load_training_data(load_spec(spec).data).fingerprint
    assert after != before
    result = run_tuner(
        "study", "start", str(spec), "--storage", url, "--n-trials", "3", cwd=tmp_path
    )
    _assert_one_line_error(
        result, f"created with data fingerprint {before}, but the data and split now give {after}"
    )
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.user_attrs["data_fingerprint"] == before and len(study.get_trials()) == 2


def test_the_study_specs_in_studies(tmp_path, monkeypatch):
    for name, sizes in [
        ("breast_cancer", (343, 113, 113)),
        ("wine", (106, 36, 36)),
        ("iris_csv", (90, 30, 30)),
    ]:
        info = inspect_data(load_spec(REPO / "studies" / f"{name}.toml").data)
        assert tuple(v["rows"] for v in info["splits"].values()) == sizes
    mnist = REPO / "studies" / "mnist.toml"
    _assert_one_line_error(
        run_tuner("data", "inspect", str(mnist), cwd=tmp_path),
        "$TUNER_MNIST_DIR is not set; put the MNIST or Fashion-MNIST files train-images-idx3-ubyte",
    )
    write_mnist(tmp_path / "m")
    monkeypatch.setenv("TUNER_MNIST_DIR", str(tmp_path / "m"))
    info = inspect_data(load_spec(mnist).data)
    assert {s: v["rows"] for s, v in info["splits"].items()} == {
        "train": 50,
        "validation": 10,
        "test": 20,
    }

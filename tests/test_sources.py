"""Every source (files built here), the official test split, preprocessing fitted on the
training split only, and the fingerprint."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from conftest import people_table, write_mnist

from tuner.data import (
    Dataset,
    Preprocessor,
    fingerprint,
    load_holdout_data,
    load_source,
    load_training_data,
    stratified_split,
)
from tuner.data.idx import IdxError, read_idx, write_idx
from tuner.errors import DataError
from tuner.spec import load_spec, parse_spec_dict

FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}


def data_spec(**data):
    return parse_spec_dict({"data": data}).data


@pytest.mark.parametrize(
    "name,shape,classes,counts",
    [
        (
            "digits",
            (1797, 64),
            [str(d) for d in range(10)],
            [178, 182, 177, 183, 181, 182, 181, 179, 174, 180],
        ),
        ("breast_cancer", (569, 30), ["malignant", "benign"], [212, 357]),
        ("wine", (178, 13), ["class_0", "class_1", "class_2"], [59, 71, 48]),
        ("iris", (150, 4), ["setosa", "versicolor", "virginica"], [50, 50, 50]),
    ],
)
def test_bundled_sklearn_datasets(name, shape, classes, counts):
    dataset = load_source(f"sklearn:{name}")
    assert dataset.X.shape == shape and dataset.X.dtype == np.float32
    assert dataset.classes == classes
    assert np.bincount(dataset.y).tolist() == counts
    assert len(dataset.feature_names) == shape[1] and dataset.test_rows is None


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "wine", "iris"])
def test_bundled_sklearn_datasets_are_exactly_what_sklearns_loaders_give(name):
    """The files are read without importing scikit-learn; the result is its load_NAME()'s."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    dataset = load_source(f"sklearn:{name}")
    assert np.array_equal(dataset.X, bunch.data.astype(np.float32))
    assert np.array_equal(dataset.y, bunch.target)
    assert dataset.classes == [str(c) for c in bunch.target_names]
    assert dataset.feature_names == [str(f) for f in bunch.feature_names]


def test_unknown_sklearn_dataset_lists_the_bundled_ones():
    with pytest.raises(
        DataError,
        match="unknown scikit-learn dataset 'mnist'; known: sklearn:digits, "
        "sklearn:breast_cancer, sklearn:wine, sklearn:iris",
    ):
        load_source("sklearn:mnist")


def test_csv_with_string_labels_a_feature_subset_and_a_text_column(tmp_path):
    table = people_table()
    table.to_csv(tmp_path / "p.csv", index=False)
    dataset = load_source(f"csv:{tmp_path / 'p.csv'}", target="label", features=["city", "age"])
    assert dataset.classes == ["churn", "stay"]
    np.testing.assert_array_equal(dataset.y, (table["label"] == "stay").astype(int))
    assert dataset.feature_names == ["age"] and dataset.X.dtype == np.float32
    np.testing.assert_array_equal(dataset.X[:, 0], table["age"].to_numpy(np.float32))
    assert dataset.categorical_names == ["city"] and dataset.categories == [
        ["bergen", "oslo", "tromso"]
    ]
    np.testing.assert_array_equal(
        np.array(dataset.categories[0])[dataset.categorical[:, 0]], table["city"]
    )

    every = load_source(
        f"csv:{tmp_path / 'p.csv'}", target="label"
    )  # features default: all but the target
    assert every.feature_names == ["age", "income"] and every.categorical_names == ["city"]


def test_csv_with_integer_labels_sorts_them_as_numbers(tmp_path):
    pd.DataFrame({"x": np.arange(30.0), "y": [10, 2, 1] * 10}).to_csv(
        tmp_path / "d.csv", index=False
    )
    dataset = load_source(f"csv:{tmp_path / 'd.csv'}", target="y")
    assert dataset.classes == ["1", "2", "10"]
    assert dataset.y[:3].tolist() == [2, 1, 0]


def test_parquet_gives_the_same_dataset_as_csv(tmp_path):
    table = people_table()
    table.to_csv(tmp_path / "p.csv", index=False)
    table.to_parquet(tmp_path / "p.parquet")
    a = load_source(f"csv:{tmp_path / 'p.csv'}", target="label")
    b = load_source(f"parquet:{tmp_path / 'p.parquet'}", target="label")
    for field in ("X", "y", "categorical"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.classes, a.categories, a.feature_names) == (b.classes, b.categories, b.feature_names)


def test_npz_with_string_labels(tmp_path):
    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    np.savez(tmp_path / "d.npz", X=X, y=np.array(["cat", "dog"] * 10))
    X_loaded, y, classes = load_source(f"npz:{tmp_path / 'd.npz'}")
    assert classes == ["cat", "dog"] and y[:4].tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(X_loaded, X.astype(np.float32))


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_mnist_idx_files_keep_the_official_test_split(tmp_path, compress):
    X, y = write_mnist(tmp_path / "mnist", compress=compress)
    dataset = load_source(f"mnist:{tmp_path / 'mnist'}")
    assert dataset.X.dtype == np.uint8 and dataset.X.shape == (80, 16)
    np.testing.assert_array_equal(dataset.X, X)
    np.testing.assert_array_equal(dataset.y, y)
    assert dataset.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(dataset.test_rows, np.arange(60, 80))

    split = stratified_split(dataset.y, FRACTIONS, seed=0, test_rows=dataset.test_rows)
    np.testing.assert_array_equal(split.test, np.arange(60, 80))
    # 60/20/20 -> validation gets 20/(60+20) = 1/4 of each class's 6 training-file rows: round(1.5) = 2.
    assert np.bincount(dataset.y[split.validation]).tolist() == [2] * 10
    assert np.bincount(dataset.y[split.train]).tolist() == [4] * 10
    assert np.union1d(split.train, split.validation).tolist() == list(range(60))

    data = load_training_data(data_spec(source=f"mnist:{tmp_path / 'mnist'}", scaling="none"))
    np.testing.assert_array_equal(data.X_train, X[split.train].astype(np.float32))
    holdout = load_holdout_data(data_spec(source=f"mnist:{tmp_path / 'mnist'}", scaling="none"))
    np.testing.assert_array_equal(holdout.X_test, X[60:].astype(np.float32))


def test_mnist_folder_from_the_environment_variable(tmp_path, monkeypatch):
    X, _ = write_mnist(tmp_path / "m", compress=True)
    monkeypatch.setenv("TUNER_MNIST_DIR", str(tmp_path / "m"))
    np.testing.assert_array_equal(load_source("mnist:").X, X)


def test_idx_float32_round_trip_and_malformed_files(tmp_path):
    images = np.random.default_rng(0).normal(size=(5, 3, 2)).astype(np.float32)
    write_idx(tmp_path / "f.idx", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx", ndim=3), images)
    assert read_idx(tmp_path / "f.idx", tmp_path / "f.idx", ndim=3).shape == (10, 3, 2)
    raw = (tmp_path / "f.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(raw[:-1])
    with pytest.raises(
        IdxError,
        match=r"truncated: the header announces 5 x 3 x 2 values \(120 bytes\) but the file holds 119",
    ):
        read_idx(tmp_path / "short.idx", ndim=3)
    with pytest.raises(IdxError, match="wrong magic number 0x00000D03, expected 0x00000801"):
        read_idx(tmp_path / "f.idx", ndim=1)
    (tmp_path / "g.idx.gz").write_bytes(gzip.compress(raw + b"\x00"))
    with pytest.raises(IdxError, match="longer than its header says"):
        read_idx(tmp_path / "g.idx.gz", ndim=3)
    (tmp_path / "empty.idx").write_bytes(b"")
    with pytest.raises(IdxError, match="empty.idx: the file is empty"):
        read_idx(tmp_path / "empty.idx", ndim=3)


def test_npz_uint8_features_become_float32_as_before(tmp_path):
    # Only IDX pixels stay uint8 until preprocessing; an npz file hashes as it always has.
    X = np.random.default_rng(0).integers(0, 256, size=(30, 3)).astype(np.uint8)
    np.savez(tmp_path / "u.npz", X=X, y=np.arange(30) % 3)
    np.savez(tmp_path / "f.npz", X=X.astype(np.float32), y=np.arange(30) % 3)
    assert load_source(f"npz:{tmp_path / 'u.npz'}").X.dtype == np.float32
    a = load_training_data(data_spec(source=f"npz:{tmp_path / 'u.npz'}"))
    b = load_training_data(data_spec(source=f"npz:{tmp_path / 'f.npz'}"))
    assert a.fingerprint == b.fingerprint


def test_split_is_disjoint_stratified_and_deterministic_on_string_labels(tmp_path):
    table = people_table(n=200)
    table.to_csv(tmp_path / "p.csv", index=False)
    spec = data_spec(source=f"csv:{tmp_path / 'p.csv'}", target="label", seed=7)
    dataset = load_source(spec.source, target="label")
    split = stratified_split(dataset.y, FRACTIONS, seed=7)
    parts = [split.train, split.validation, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    assert [np.bincount(dataset.y[p]).tolist() for p in parts] == [[30, 90], [10, 30], [10, 30]]
    a, b = load_training_data(spec), load_training_data(spec)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert a.fingerprint == b.fingerprint
    assert len(a.y_train) + len(a.y_validation) == 160  # no test row reaches the objective


def test_preprocessing_is_fitted_on_the_training_rows_only(tmp_path):
    table = pd.DataFrame(
        {"x": np.arange(40.0), "colour": ["red", "blue"] * 20, "label": [0, 1] * 20}
    )
    split = stratified_split(table["label"].to_numpy(), FRACTIONS, seed=0)
    table.loc[split.test[0], "colour"] = "green"  # a category only the test split has
    table.loc[split.validation[0], "x"] = np.nan  # a missing number outside the training split
    table.to_csv(tmp_path / "t.csv", index=False)
    dataset = load_source(f"csv:{tmp_path / 't.csv'}", target="label", missing="median")
    assert dataset.categories == [["blue", "green", "red"]]

    pre = Preprocessor(scaling="minmax", missing="median").fit(dataset, split.train)
    assert pre.feature_names_ == ["x", "colour=blue", "colour=red"]  # no column for green
    train = pre.transform(dataset, split.train)
    x_train = table["x"].to_numpy()[split.train]
    np.testing.assert_allclose(train[:, 0], (x_train - x_train.min()) / np.ptp(x_train), rtol=1e-6)
    assert train[:, 0].min() == 0 and train[:, 0].max() == 1
    validation = pre.transform(dataset, split.validation)
    expected = (np.median(x_train) - x_train.min()) / np.ptp(x_train)
    assert validation[0, 0] == pytest.approx(expected)  # the training split's median
    test = pre.transform(dataset, split.test)
    assert test[0, 1:].tolist() == [0.0, 0.0]  # green: unseen in training, all zeros


def test_standard_scaling_in_blocks_matches_numpy():
    n = 40_000  # 64 features: blocks of 16,384 rows, so three blocks merged
    X = np.random.default_rng(0).normal(3, 2, size=(n, 64)).astype(np.float32)
    dataset = Dataset(
        X=X,
        y=np.zeros(n, np.int64),
        classes=["a"],
        feature_names=[f"f{j}" for j in range(64)],
        categorical=np.empty((n, 0), np.int32),
        categorical_names=[],
        categories=[],
    )
    rows = np.arange(n)
    pre = Preprocessor(scaling="standard", missing="refuse").fit(dataset, rows)
    out = pre.transform(dataset, rows)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(pre.scaler_.mean_, X64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pre.scaler_.scale_, X64.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(out, (X64 - X64.mean(axis=0)) / X64.std(axis=0), atol=1e-5)


def test_digits_fingerprint_is_unchanged_so_existing_studies_resume():
    data = load_training_data(data_spec(source="sklearn:digits"))
    assert data.fingerprint == "03a65fe2cf52338d456a3949f8c4bc9c9dd475a21faf9491f168f23d108838fc"


def test_fingerprint_covers_text_columns(tmp_path):
    table = people_table()
    table.to_csv(tmp_path / "a.csv", index=False)
    table.loc[3, "city"] = "oslo" if table.loc[3, "city"] != "oslo" else "bergen"
    table.to_csv(tmp_path / "b.csv", index=False)
    a = load_training_data(data_spec(source=f"csv:{tmp_path / 'a.csv'}", target="label"))
    b = load_training_data(data_spec(source=f"csv:{tmp_path / 'b.csv'}", target="label"))
    assert a.fingerprint != b.fingerprint
    dataset = load_source(f"csv:{tmp_path / 'a.csv'}", target="label")
    split = stratified_split(dataset.y, FRACTIONS, seed=0)
    assert fingerprint(dataset.X, dataset.y, split) != a.fingerprint  # the text column counts


def test_table_spec_resolves_its_path_and_parses_back(tmp_path):
    (tmp_path / "s.toml").write_text(
        '[data]\nsource = "csv:data/t.csv"\ntarget = "y"\nfeatures = ["a", "b"]\n'
        'categorical = "refuse"\nmissing = "mean"\nscaling = "minmax"\n'
    )
    spec = load_spec(tmp_path / "s.toml")
    assert spec.data.source == f"csv:{tmp_path / 'data' / 't.csv'}"
    assert (spec.data.features, spec.data.categorical, spec.data.missing, spec.data.scaling) == (
        ["a", "b"],
        "refuse",
        "mean",
        "minmax",
    )
    assert parse_spec_dict(spec.resolved) == spec
    (tmp_path / "m.toml").write_text('[data]\nsource = "mnist:"\n')
    assert (
        load_spec(tmp_path / "m.toml").data.source == "mnist:"
    )  # the folder comes from $TUNER_MNIST_DIR at load time


@pytest.mark.parametrize(
    "header, target, message",
    [
        (
            "alcohol,hue,cultivar,cultivar",
            "cultivar",
            "repeated column name 'cultivar' at columns 3, 4 (counted from 1)",
        ),
        ("a,a,b,a", "b", "repeated column name 'a' at columns 1, 2, 4 (counted from 1)"),
    ],
)
def test_csv_with_a_repeated_column_name_is_refused(tmp_path, header, target, message):
    n = len(header.split(","))
    rows = "\n".join(",".join(str(i + j) for j in range(n)) for i in range(10))
    (tmp_path / "r.csv").write_text(f"{header}\n{rows}\n")
    with pytest.raises(DataError) as error:
        load_source(f"csv:{tmp_path / 'r.csv'}", target=target)
    assert str(error.value) == (
        f"data.source 'csv:{tmp_path / 'r.csv'}': {message}; give each column its own name in "
        "the header"
    )


def test_parquet_with_a_repeated_column_name_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = [pa.array([1.0, 2.0]), pa.array([3.0, 4.0]), pa.array(["x", "y"])]
    pq.write_table(pa.table(columns, names=["a", "a", "label"]), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"repeated column name 'a' at columns 1, 2 \(counted"):
        load_source(f"parquet:{tmp_path / 'r.parquet'}", target="label")


def test_data_inspect_names_a_repeated_column(tmp_path):
    from conftest import run_tuner, write_spec

    (tmp_path / "r.csv").write_text(
        "alcohol,hue,cultivar,cultivar\n"
        + "".join(f"{i},{i},c{i % 2},c{i % 2}\n" for i in range(20))
    )
    spec = write_spec(tmp_path, source="csv:r.csv", data_extra='target = "cultivar"')
    result = run_tuner("data", "inspect", str(spec), cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "repeated column name 'cultivar' at columns 3, 4" in result.stderr


def test_test_fingerprint_identifies_the_test_rows_alone(tmp_path):
    write_mnist(tmp_path / "mnist")
    source = f"mnist:{tmp_path / 'mnist'}"
    a = load_holdout_data(data_spec(source=source, scaling="none"))
    b = load_holdout_data(
        data_spec(
            source=source, scaling="none", split={"train": 0.3, "validation": 0.5, "test": 0.2}
        )
    )
    # Another train : validation ratio, the same official test rows.
    assert a.fingerprint != b.fingerprint and a.test_fingerprint == b.test_fingerprint
    write_mnist(tmp_path / "other", seed=1)
    c = load_holdout_data(data_spec(source=f"mnist:{tmp_path / 'other'}", scaling="none"))
    assert c.test_fingerprint != a.test_fingerprint

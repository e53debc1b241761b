"""Spec validation: defaults, and bad keys or values named in a one-line error."""

from __future__ import annotations

import pytest
from conftest import REPO, run_tuner

from tuner.errors import SpecError
from tuner.spec import DEFAULTS, load_spec, parse_recorded_spec, parse_spec_dict


def test_only_source_is_required_and_defaults_are_filled_in():
    spec = parse_spec_dict({"data": {"source": "sklearn:digits"}}, default_name="x")
    assert (spec.name, spec.metric, spec.direction, spec.n_trials, spec.seed) == (
        "x",
        "accuracy",
        "maximize",
        40,
        0,
    )
    assert spec.data.split == {"train": 0.6, "validation": 0.2, "test": 0.2}
    assert spec.data.seed == 0 and spec.data.scaling == "standard"
    assert spec.resolved["model"] == DEFAULTS["model"]
    assert {n: p.kind for n, p in spec.search.items()} == {
        "learning_rate": "float",
        "weight_decay": "float",
        "batch_size": "categorical",
        "width": "int",
        "initializer": "categorical",
        "optimizer": "fixed",
        "momentum": "fixed",
        "beta1": "fixed",
        "beta2": "fixed",
        "hidden_layers": "fixed",
        "activation": "fixed",
        "epochs": "fixed",
        "dropout": "fixed",
    }
    assert spec.sampler == {"name": "tpe", "n_startup_trials": 10}
    assert spec.pruner == {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 5}
    assert parse_spec_dict(spec.resolved) == spec  # the stored resolved spec parses back


SEARCHED_MODEL_KEYS = {
    "hidden_layers": "{ low = 1, high = 3 }",
    "activation": '{ choices = ["relu", "tanh"] }',
    "epochs": "{ choices = [2, 3] }",
    "dropout": "{ low = 0.0, high = 0.5 }",
}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param((REPO / "studies" / p.name).read_text(), id=p.name)
        for p in sorted((REPO / "studies").glob("*.toml"))
    ]
    + [
        pytest.param(f'[data]\nsource = "sklearn:digits"\n[search]\n{k} = {v}\n', id=f"search.{k}")
        for k, v in SEARCHED_MODEL_KEYS.items()
    ]
    + [
        pytest.param(
            '[data]\nsource = "sklearn:wine"\nfolds = 3\nsplit = { test = 0.2 }\n', id="folds"
        )
    ],
)
def test_every_recorded_spec_parses_back_to_the_same_spec(tmp_path, text):
    """What a study records (the resolved spec, stored as JSON) is parsed again by every
    command after the first: it must give the very spec it was resolved from."""
    import json
    import tomllib

    spec = parse_spec_dict(tomllib.loads(text), base_dir=REPO / "studies", default_name="s")
    stored = json.loads(json.dumps(spec.resolved))
    assert parse_recorded_spec(stored) == spec
    assert parse_spec_dict(stored) == spec


def test_default_spec_file_parses():
    spec = load_spec(REPO / "studies" / "digits.toml")
    assert spec.name == "digits" and spec.search["width"].log and spec.model["epochs"] == 30


def test_relative_npz_path_resolves_against_spec_folder(tmp_path):
    (tmp_path / "s.toml").write_text('[data]\nsource = "npz:data/d.npz"\n')
    assert load_spec(tmp_path / "s.toml").data.source == f"npz:{tmp_path / 'data' / 'd.npz'}"


BAD = [
    (
        {"data": {"source": "sklearn:digits"}, "studdy": {}},
        "studdy: unknown key; did you mean 'study'?",
    ),
    (
        {"data": {"source": "sklearn:digits", "scalling": "none"}},
        "data.scalling: unknown key; did you mean 'scaling'?",
    ),
    ({"data": {}}, "data.source: is required"),
    (
        {"data": {"source": "sklearn:digits"}, "search": {"learning_rat": 0.1}},
        "search.learning_rat: unknown key; did you mean 'learning_rate'?",
    ),
    (
        {
            "data": {"source": "sklearn:digits"},
            "search": {"learning_rate": {"low": 0.1, "high": 0.01}},
        },
        "search.learning_rate: low must be < high",
    ),
    (
        {
            "data": {"source": "sklearn:digits"},
            "search": {"learning_rate": {"low": -0.1, "high": 1.0}},
        },
        "search.learning_rate.low: must be a number > 0, got -0.1",
    ),
    (
        {
            "data": {"source": "sklearn:digits"},
            "search": {"width": {"low": 0, "high": 8, "log": True}},
        },
        "search.width.low: must be an integer in [1, 16384], got 0",
    ),
    (
        {"data": {"source": "sklearn:digits"}, "search": {"batch_size": {"choices": []}}},
        "search.batch_size.choices: must be a non-empty list",
    ),
    (
        {
            "data": {"source": "sklearn:digits"},
            "search": {"initializer": {"choices": ["he", "zeros"]}},
        },
        "search.initializer.choices: each choice must be",
    ),
    (
        {
            "data": {
                "source": "sklearn:digits",
                "split": {"train": 0.5, "validation": 0.2, "test": 0.2},
            }
        },
        "data.split: fractions must sum to 1",
    ),
    (
        {"data": {"source": "sklearn:digits"}, "model": {"epochs": 0}},
        "model.epochs: must be an integer in [1, 100000], got 0",
    ),
    (
        {"data": {"source": "sklearn:digits"}, "sampler": {"name": "bayes"}},
        "sampler.name: must be one of",
    ),
    (
        {"data": {"source": "sklearn:digits"}, "study": {"n_trials": "10"}},
        "study.n_trials: must be an integer >= 1, got '10'",
    ),
    (
        {"data": {"source": "sklearn:digits"}, "study": {"seed": 2**40}},
        "study.seed: must be an integer in [0, 4294967295]",
    ),
    (
        {"data": {"source": "sklearn:digits"}, "search": {"width": 10**10}},
        "search.width: must be an integer in [1, 16384]",
    ),
    (
        {"data": {"source": "sklearn:digits", "split": {"train": 0.8, "validation": 0.2}}},
        "data.split: needs train, validation and test fractions; 'test' missing",
    ),
    (
        {"data": {"source": "sklearn:digits", "target": "label"}},
        "data.target: names the label column of a table source",
    ),
    ({"data": {"source": "csv:x.csv"}}, "data.target: is required for a csv: source"),
    (
        {"data": {"source": "sklearn:wine", "features": ["a"]}},
        "data.features: applies to table sources (csv, parquet) only",
    ),
    (
        {"data": {"source": "npz:x.npz", "categorical": "refuse"}},
        "data.categorical: applies to table sources",
    ),
    (
        {"data": {"source": "csv:x.csv", "target": "y", "features": ["a", "y"]}},
        "data.features: includes the target column 'y'",
    ),
    (
        {"data": {"source": "csv:x.csv", "target": "y", "features": []}},
        "data.features: must be a non-empty list of column names",
    ),
    (
        {"data": {"source": "csv:x.csv", "target": "y", "features": ["a", "a"]}},
        "data.features: names a column twice",
    ),
    (
        {"data": {"source": "csv:x.csv", "target": "y", "categorical": "ordinal"}},
        "data.categorical: must be one of 'onehot', 'refuse', got 'ordinal'",
    ),
    (
        {"data": {"source": "sklearn:iris", "missing": "zero"}},
        "data.missing: must be one of 'refuse', 'mean', 'median', got 'zero'",
    ),
    (
        {"data": {"source": "sklearn:iris", "scaling": "robust"}},
        "data.scaling: must be one of 'standard', 'minmax', 'none', got 'robust'",
    ),
    (
        {"data": {"source": "csv:x.csv", "target": "y", "featurs": ["a"]}},
        "data.featurs: unknown key; did you mean 'features'?",
    ),
    (
        {"data": {"source": "sklearn:digits"}, "study": {"name": "   "}},
        "study.name: must be a non-blank string",
    ),
    (
        {"data": {"source": "sklearn:digits"}, "study": {"name": "x" * 513}},
        "study.name: must be a non-blank string of at most 512",
    ),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_spec_names_the_key(raw, message):
    with pytest.raises(SpecError) as info:
        parse_spec_dict(raw)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_bad_spec_through_cli_exits_2_naming_file_and_key(tmp_path):
    (tmp_path / "bad.toml").write_text('[data]\nsource = "sklearn:digits"\n[model]\nepochs = -3\n')
    result = run_tuner("study", "start", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "tuner: error: bad.toml: model.epochs: must be an integer in [1, 100000], got -3"
    )


def test_spec_that_is_not_utf8_exits_2(tmp_path):
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    result = run_tuner("study", "start", "binary.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "tuner: error: spec file 'binary.toml' is not UTF-8 text; pass a .toml spec such as studies/digits.toml"
    )


def test_unknown_source_scheme_lists_known_ones(tmp_path):
    (tmp_path / "s.toml").write_text('[data]\nsource = "hdf5:x.h5"\n')
    result = run_tuner("study", "start", "s.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown scheme 'hdf5'; known: sklearn:..., npz:..." in result.stderr

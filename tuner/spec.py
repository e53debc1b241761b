"""The study spec (TOML): schema, defaults and validation at the boundary.

A spec has the tables ``[study]``, ``[data]``, ``[model]``, ``[search]``, ``[sampler]`` and
``[pruner]``. Only ``data.source`` is required; every other key has the default in
:data:`DEFAULTS`. Unknown keys, wrong types and values out of range raise :class:`SpecError`
naming the key, what was given and what is allowed.
"""

from __future__ import annotations

import copy
import decimal
import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuner.data.dataset import DataSpec
from tuner.data.sources import CATEGORICAL, FILE_SCHEMES, MISSING, SCHEMES, TABLE_SCHEMES
from tuner.errors import SpecError
from tuner.nn.initializers import INITIALIZERS, resolve
from tuner.nn.layers import ACTIVATIONS
from tuner.nn.optimizers import OPTIMIZERS

#: ``study.metric``: each metric (:func:`tuner.metrics.classification_metrics`) and the
#: direction the study optimizes it in.
METRICS: dict[str, Literal["minimize", "maximize"]] = {
    "accuracy": "maximize",
    "balanced_accuracy": "maximize",
    "macro_f1": "maximize",
    "log_loss": "minimize",
}
#: Each sampler's options and their defaults (all samplers are Optuna's, seeded).
SAMPLERS: dict[str, dict[str, Any]] = {
    "tpe": {"n_startup_trials": 10},
    "random": {},
    "gp": {"n_startup_trials": 10},
    "cmaes": {"n_startup_trials": 1},
    "qmc": {"qmc_type": "sobol"},
    "grid": {},
}
#: Each pruner's options and their defaults; the intermediate values are per-epoch
#: validation scores, so resources and warm-up steps are counted in epochs.
PRUNERS: dict[str, dict[str, Any]] = {
    "median": {"n_startup_trials": 5, "n_warmup_steps": 5},
    "percentile": {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 5},
    "hyperband": {"min_resource": 1, "reduction_factor": 3},
    "successive_halving": {"min_resource": 1, "reduction_factor": 4, "min_early_stopping_rate": 0},
    "none": {},
}
QMC_TYPES = ("sobol", "halton")
#: Model keys that [search] may search over instead; a key may be in one table, not both.
SEARCHABLE_MODEL_KEYS = ("hidden_layers", "activation", "epochs", "dropout")
#: Search parameters whose values are integers.
INT_PARAMS = ("batch_size", "width", "hidden_layers", "epochs")
#: The optimizer options suggested only when their optimizer is chosen.
OPTIMIZER_PARAMS = {
    "momentum": ("momentum", "nesterov"),
    "beta1": ("adam", "adamw"),
    "beta2": ("adam", "adamw"),
}
SCALINGS = ("standard", "minmax", "none")
#: Allowed values of ``data.folds`` (K-fold cross-validation on the non-test rows).
MIN_FOLDS, MAX_FOLDS = 2, 10

#: Every key's default. ``study.name`` defaults to the spec file's stem and ``data.seed`` to
#: ``study.seed``.
DEFAULTS: dict[str, dict[str, Any]] = {
    "study": {
        "name": None,
        "metric": "accuracy",
        "n_trials": 40,
        "seed": 0,
        "stop_after_no_improvement": None,
        "trial_plots": True,
    },
    "data": {
        "source": None,
        "target": None,
        "features": None,
        "categorical": "onehot",
        "missing": "refuse",
        "na_values": [],
        "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
        "folds": None,
        "scaling": "standard",
        "seed": None,
    },
    "model": {
        "hidden_layers": 2,
        "activation": "relu",
        "batchnorm": True,
        "epochs": 30,
        "dropout": 0.0,
    },
    "search": {
        "learning_rate": {"low": 1e-4, "high": 1.0, "log": True},
        "weight_decay": {"low": 1e-8, "high": 1e-2, "log": True},
        "batch_size": {"choices": [32, 64, 128, 256]},
        "width": {"low": 16, "high": 512, "log": True},
        "initializer": {"choices": ["he", "xavier", "normal:0.01"]},
        "optimizer": "momentum",
        "momentum": 0.9,
        "beta1": 0.9,
        "beta2": 0.999,
    },
    "sampler": {"name": "tpe", **SAMPLERS["tpe"]},
    "pruner": {"name": "median", **PRUNERS["median"]},
}


@dataclass(frozen=True)
class Param:
    """One search-space entry: a fixed value, a float or int range, or categorical choices."""

    name: str
    kind: str  # "fixed", "float", "int" or "categorical"
    value: Any = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    per_layer: bool = False  # width only: one value per hidden layer (width_1, width_2, ...)

    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a float or int range.

        Raises:
            ValueError: the entry is fixed or categorical.
        """
        if self.low is None or self.high is None:
            raise ValueError(f"search.{self.name} is {self.kind}, not a range")
        return self.low, self.high


@dataclass(frozen=True)
class StudySpec:
    """A validated spec. ``resolved`` is the complete spec as a JSON-able dict (defaults filled
    in, file paths absolute); :func:`parse_spec_dict` of it gives this spec back."""

    name: str
    metric: str
    direction: Literal["minimize", "maximize"]
    n_trials: int
    seed: int
    data: DataSpec
    model: dict[str, Any]
    search: dict[str, Param]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    resolved: dict[str, Any] = field(repr=False)


def _fail(key: str, message: str) -> None:
    raise SpecError(f"{key}: {message}")


def _check_keys(table: dict, known, where: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            _fail(f"{where}.{key}" if where else key, f"unknown key{hint}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


#: Upper bounds that keep a typo (an extra zero or ten) from exhausting memory or time.
MAX_SEED = 2**32 - 1
MAX_WIDTH = 16_384
MAX_BATCH_SIZE = 65_536
MAX_HIDDEN_LAYERS = 64
MAX_EPOCHS = 100_000
MAX_NAME_LENGTH = 512  # Optuna's study-name column


def _int(table: dict, key: str, where: str, minimum: int, maximum: int | None = None) -> int:
    v = table[key]
    if not _is_int(v) or v < minimum or (maximum is not None and v > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        _fail(f"{where}.{key}", f"must be an integer {allowed}, got {v!r}")
    return v


def check_study_name(name, key: str = "study.name") -> str:
    """A study name: a non-blank string of at most :data:`MAX_NAME_LENGTH` printable
    characters (a newline, tab or other control or format character would break every
    message and ``tuner study list``).

    Raises:
        SpecError: naming ``key``.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        _fail(
            key,
            f"must be a non-blank string of at most {MAX_NAME_LENGTH} characters, got {name!r:.60}",
        )
    if not name.isprintable():
        bad = next(c for c in name if not c.isprintable())
        _fail(
            key,
            f"must be printable, without newlines, tabs or other control characters; got "
            f"{name!r:.60}, which holds {bad!r}",
        )
    return name


def _choice(table: dict, key: str, where: str, allowed) -> str:
    v = table[key]
    if v not in allowed:
        _fail(f"{where}.{key}", f"must be one of {', '.join(map(repr, allowed))}, got {v!r}")
    return v


def _bool(table: dict, key: str, where: str) -> bool:
    v = table[key]
    if not isinstance(v, bool):
        _fail(f"{where}.{key}", f"must be true or false, got {v!r}")
    return v


# Domain of each searchable parameter: a check of one value, and what it allows.
def _positive(v):
    return _is_number(v) and v > 0


def _non_negative(v):
    return _is_number(v) and v >= 0


def _valid_initializer(v):
    try:
        return isinstance(v, str) and resolve(v, "relu") is not None
    except ValueError:
        return False


SEARCH_PARAMS: dict[str, tuple[Any, str]] = {
    "learning_rate": (_positive, "a number > 0"),
    "weight_decay": (_non_negative, "a number >= 0"),
    "batch_size": (
        lambda v: _is_int(v) and 2 <= v <= MAX_BATCH_SIZE,
        f"an integer in [2, {MAX_BATCH_SIZE}]",
    ),
    "width": (lambda v: _is_int(v) and 1 <= v <= MAX_WIDTH, f"an integer in [1, {MAX_WIDTH}]"),
    "initializer": (_valid_initializer, ", ".join(repr(i) for i in INITIALIZERS) + " (STD > 0)"),
    "optimizer": (lambda v: v in OPTIMIZERS, " or ".join(map(repr, OPTIMIZERS))),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "beta1": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "beta2": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "hidden_layers": (
        lambda v: _is_int(v) and 1 <= v <= MAX_HIDDEN_LAYERS,
        f"an integer in [1, {MAX_HIDDEN_LAYERS}]",
    ),
    "activation": (lambda v: v in ACTIVATIONS, " or ".join(map(repr, ACTIVATIONS))),
    "epochs": (lambda v: _is_int(v) and 1 <= v <= MAX_EPOCHS, f"an integer in [1, {MAX_EPOCHS}]"),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
}


def _parse_param(name: str, raw: Any, where: str = "search") -> Param:
    key = f"{where}.{name}"
    valid, allowed = SEARCH_PARAMS[name]
    per_layer = False
    if isinstance(raw, dict) and "per_layer" in raw:
        if name != "width":
            _fail(f"{key}.per_layer", "applies to search.width only")
        raw = dict(raw)
        per_layer = raw.pop("per_layer")
        if not isinstance(per_layer, bool):
            _fail(f"{key}.per_layer", f"must be true or false, got {per_layer!r}")
    if not isinstance(raw, dict):
        if not valid(raw):
            _fail(key, f"must be {allowed}, got {raw!r}")
        return Param(name, "fixed", value=raw)
    if "choices" in raw:
        _check_keys(raw, ["choices", *(["per_layer"] if name == "width" else [])], key)
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            _fail(f"{key}.choices", f"must be a non-empty list, got {choices!r}")
        for c in choices:
            if not valid(c):
                _fail(f"{key}.choices", f"each choice must be {allowed}, got {c!r}")
        if len(set(map(repr, choices))) != len(choices):
            _fail(f"{key}.choices", f"has a repeated choice: {choices!r}")
        return Param(name, "categorical", choices=tuple(choices), per_layer=per_layer)
    _check_keys(
        raw, ["low", "high", "log", "step", *(["per_layer"] if name == "width" else [])], key
    )
    for bound in ("low", "high"):
        if bound not in raw:
            _fail(
                key,
                f"a range needs 'low' and 'high' (or use 'choices' or a fixed value); '{bound}' is missing",
            )
        if not valid(raw[bound]):
            _fail(f"{key}.{bound}", f"must be {allowed}, got {raw[bound]!r}")
    low, high = raw["low"], raw["high"]
    if not low < high:
        _fail(key, f"low must be < high, got low={low!r}, high={high!r}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        _fail(f"{key}.log", f"must be true or false, got {log!r}")
    if log and low <= 0:
        _fail(f"{key}.low", f"must be > 0 when log = true, got {low!r}")
    step = raw.get("step")
    if step is not None:
        if not _is_number(step) or step <= 0:
            _fail(f"{key}.step", f"must be a number > 0, got {step!r}")
        if log:
            _fail(f"{key}.step", "cannot be combined with log = true")
    is_int = _is_int(low) and _is_int(high) and (step is None or _is_int(step))
    if name in INT_PARAMS and not is_int:
        _fail(f"{key}.step", f"must be an integer for an integer parameter, got {step!r}")
    if step is not None:
        # As Optuna would otherwise lower high to the last multiple, with a warning per trial.
        d_low, d_step = decimal.Decimal(str(low)), decimal.Decimal(str(step))
        span = decimal.Decimal(str(high)) - d_low
        if span % d_step:
            below = d_low + (span // d_step) * d_step
            highs = [h for h in (below, below + d_step) if h > d_low]
            shown = " or ".join(repr(int(h) if is_int else float(h)) for h in highs)
            _fail(
                f"{key}.step",
                f"high - low ({span}) must be a multiple of step ({step}); e.g. high = {shown}",
            )
    return Param(
        name,
        "int" if is_int else "float",
        low=low,
        high=high,
        log=log,
        step=step,
        per_layer=per_layer,
    )


def _options(given: dict, where: str, known: dict[str, dict], default_name: str) -> dict:
    """A ``[sampler]`` or ``[pruner]`` table: its name and the options of that name, with defaults."""
    name = given.get("name", default_name)
    if name not in known:
        _fail(f"{where}.name", f"must be one of {', '.join(map(repr, known))}, got {name!r}")
    options = known[name]
    for key in given:
        if key != "name" and key not in options:
            others = [n for n, o in known.items() if key in o]
            if others:
                _fail(
                    f"{where}.{key}",
                    f"does not apply to {where} {name!r} (only to {', '.join(others)}); "
                    f"its options: {', '.join(options) or 'none'}",
                )
    _check_keys(given, ["name", *options], where)
    return {"name": name, **copy.deepcopy(options), **copy.deepcopy(given)}


def _check_sampler(sampler: dict, params: dict[str, Param]) -> None:
    if "n_startup_trials" in sampler:
        _int(sampler, "n_startup_trials", "sampler", 0)
    if sampler["name"] == "qmc":
        _choice(sampler, "qmc_type", "sampler", QMC_TYPES)
    if sampler["name"] == "grid":
        for p in params.values():
            if p.kind == "float" and p.step is None:
                _fail(
                    f"search.{p.name}",
                    "the grid sampler needs choices, a fixed value or a range with a step",
                )
            if p.kind in ("int", "float") and p.log:
                _fail(
                    f"search.{p.name}",
                    "the grid sampler needs choices or a range with a step, not log = true",
                )
        if params["width"].per_layer and params["hidden_layers"].kind != "fixed":
            _fail(
                "search.width.per_layer",
                "the grid sampler needs a fixed hidden_layers for per-layer widths",
            )


def _check_pruner(pruner: dict) -> None:
    for key in ("n_startup_trials", "n_warmup_steps", "min_early_stopping_rate"):
        if key in pruner:
            _int(pruner, key, "pruner", 0)
    if "min_resource" in pruner:
        _int(pruner, "min_resource", "pruner", 1)
    if "reduction_factor" in pruner:
        _int(pruner, "reduction_factor", "pruner", 2)
    if "percentile" in pruner:
        p = pruner["percentile"]
        if not _is_number(p) or not 0 < p < 100:
            _fail("pruner.percentile", f"must be a number in (0, 100), got {p!r}")


def _merge(defaults: dict, given: dict, where: str) -> dict:
    """Defaults overlaid by the given table, after refusing unknown keys."""
    _check_keys(given, defaults, where)
    return {**copy.deepcopy(defaults), **copy.deepcopy(given)}


def parse_spec_dict(
    raw: dict, *, base_dir: Path | None = None, default_name: str = "study"
) -> StudySpec:
    """Validate a spec given as a dict (as TOML parses it) and fill in the defaults.

    Args:
        raw: the spec's tables.
        base_dir: folder against which a relative file path in ``data.source`` is resolved;
            the resolved spec holds the absolute path.
        default_name: the study name when ``study.name`` is absent.

    Raises:
        SpecError: an unknown key (named, with the closest known one), a wrong type or a
            value out of range.
    """
    if not isinstance(raw, dict):
        raise SpecError("the spec must be a TOML document of tables")
    _check_keys(raw, DEFAULTS, "")
    for section, value in raw.items():
        if not isinstance(value, dict):
            _fail(section, f"must be a table ([{section}]), got {value!r}")
    study = _merge(DEFAULTS["study"], raw.get("study", {}), "study")
    data = _merge(DEFAULTS["data"], raw.get("data", {}), "data")
    model = _merge(DEFAULTS["model"], raw.get("model", {}), "model")
    search_raw = raw.get("search", {})
    _check_keys(search_raw, SEARCH_PARAMS, "search")
    search = {**copy.deepcopy(DEFAULTS["search"]), **copy.deepcopy(search_raw)}
    for key in SEARCHABLE_MODEL_KEYS:
        if key in search and key in raw.get("model", {}):
            _fail(
                f"search.{key}",
                f"is also set as model.{key}; keep one: a fixed value in [model] "
                "or a fixed value or range in [search]",
            )
    sampler = _options(raw.get("sampler", {}), "sampler", SAMPLERS, DEFAULTS["sampler"]["name"])
    pruner = _options(raw.get("pruner", {}), "pruner", PRUNERS, DEFAULTS["pruner"]["name"])

    if study["name"] is None:
        study["name"] = default_name
    check_study_name(study["name"])
    _choice(study, "metric", "study", METRICS)
    _int(study, "n_trials", "study", 1)
    _int(study, "seed", "study", 0, MAX_SEED)
    _bool(study, "trial_plots", "study")
    if study["stop_after_no_improvement"] is not None:
        _int(study, "stop_after_no_improvement", "study", 1)

    if data["source"] is None:
        _fail("data.source", 'is required, e.g. source = "sklearn:digits"')
    if not isinstance(data["source"], str) or ":" not in data["source"]:
        _fail(
            "data.source",
            f"must be 'SCHEME:ARGUMENT' such as 'sklearn:digits', got {data['source']!r}",
        )
    scheme, _, argument = data["source"].partition(":")
    if scheme not in SCHEMES:  # before any key that depends on the scheme, such as target
        raise SpecError(
            f"data.source {data['source']!r}: unknown scheme {scheme!r}; known: "
            + ", ".join(f"{s}:..." for s in SCHEMES)
        )
    if scheme in FILE_SCHEMES and base_dir is not None and argument:
        data["source"] = f"{scheme}:{(Path(base_dir) / Path(argument).expanduser()).resolve()}"
    folds = data["folds"]
    if folds is not None:
        _int(data, "folds", "data", MIN_FOLDS, MAX_FOLDS)
        if "split" not in raw.get("data", {}):
            data["split"] = {"test": DEFAULTS["data"]["split"]["test"]}
    split = data["split"]
    if not isinstance(split, dict):
        _fail("data.split", f"must be a table {{train, validation, test}}, got {split!r}")
    _check_keys(split, DEFAULTS["data"]["split"], "data.split")
    if folds is not None:
        for part in ("train", "validation"):
            if part in split:
                _fail(
                    f"data.split.{part}",
                    f"is set with data.folds = {folds}; with folds the split gives only the test "
                    "fraction (the folds are cut from the other rows): split = { test = 0.2 }",
                )
    required = ("test",) if folds is not None else ("train", "validation", "test")
    missing = [k for k in required if k not in split]
    if missing:
        needs = "a test fraction" if folds is not None else "train, validation and test fractions"
        _fail("data.split", f"needs {needs}; {', '.join(map(repr, missing))} missing")
    for part, fraction in split.items():
        if not _is_number(fraction) or not 0 < fraction < 1:
            _fail(f"data.split.{part}", f"must be a fraction in (0, 1), got {fraction!r}")
    if folds is None and not math.isclose(sum(split.values()), 1.0, abs_tol=1e-9):
        _fail("data.split", f"fractions must sum to 1, got {round(sum(split.values()), 9)!r}")
    data["split"] = {k: float(v) for k, v in split.items()}
    _choice(data, "scaling", "data", SCALINGS)
    if data["seed"] is None:
        data["seed"] = study["seed"]
    _int(data, "seed", "data", 0, MAX_SEED)
    if data["target"] is not None:
        if scheme not in TABLE_SCHEMES:
            _fail(
                "data.target",
                f"names the label column of a table source ({', '.join(TABLE_SCHEMES) or 'none yet'}); "
                f"{scheme}: sources carry their labels, so remove it",
            )
        if not isinstance(data["target"], str) or not data["target"]:
            _fail("data.target", f"must be a column name, got {data['target']!r}")
    elif scheme in TABLE_SCHEMES:
        _fail(
            "data.target",
            f'is required for a {scheme}: source: name the label column, e.g. target = "label"',
        )
    for key in ("features", "categorical", "na_values"):
        # The resolved spec (parsed again on resume) holds every key with its default.
        if data[key] != DEFAULTS["data"][key] and scheme not in TABLE_SCHEMES:
            _fail(
                f"data.{key}",
                f"applies to table sources ({', '.join(TABLE_SCHEMES)}) only; remove it for a {scheme}: source",
            )
    features = data["features"]
    if features is not None:
        if (
            not isinstance(features, list)
            or not features
            or not all(isinstance(f, str) and f for f in features)
        ):
            _fail("data.features", f"must be a non-empty list of column names, got {features!r}")
        if len(set(features)) != len(features):
            _fail("data.features", f"names a column twice: {features!r}")
        if data["target"] in features:
            _fail(
                "data.features",
                f"includes the target column {data['target']!r}; a label cannot be a feature",
            )
    na_values = data["na_values"]
    if not isinstance(na_values, list) or not all(isinstance(v, str) for v in na_values):
        _fail(
            "data.na_values",
            f'must be a list of texts that mark a missing value, e.g. ["NA", "?"], got {na_values!r}',
        )
    _choice(data, "categorical", "data", CATEGORICAL)
    _choice(data, "missing", "data", MISSING)

    _bool(model, "batchnorm", "model")
    params = {
        name: _parse_param(name, value, "model")
        for name, value in model.items()
        if name in SEARCHABLE_MODEL_KEYS and name not in search
    }
    params.update({name: _parse_param(name, value) for name, value in search.items()})
    _check_sampler(sampler, params)
    _check_pruner(pruner)

    resolved = {
        "study": study,
        "data": data,
        # A searched model key is in [search] only: parsed again, both would be refused.
        "model": {
            k: v for k, v in model.items() if k not in SEARCHABLE_MODEL_KEYS or k not in search
        },
        "search": search,
        "sampler": sampler,
        "pruner": pruner,
    }
    return StudySpec(
        name=study["name"],
        metric=study["metric"],
        direction=METRICS[study["metric"]],
        n_trials=study["n_trials"],
        seed=study["seed"],
        data=DataSpec(
            source=data["source"],
            target=data["target"],
            split=data["split"],
            folds=data["folds"],
            scaling=data["scaling"],
            seed=data["seed"],
            features=data["features"],
            categorical=data["categorical"],
            missing=data["missing"],
            na_values=tuple(data["na_values"]),
        ),
        model=model,
        search=params,
        sampler=sampler,
        pruner=pruner,
        resolved=resolved,
    )


def parse_recorded_spec(resolved: dict) -> StudySpec:
    """Parse the resolved spec recorded on a study (:func:`tuner.schema.recorded_spec`).

    A spec recorded before December 2026 holds each searched model key twice, its ``[model]``
    default beside its ``[search]`` entry (``model.epochs = 30`` beside ``search.epochs``),
    which :func:`parse_spec_dict` refuses; the ``[model]`` copy is dropped.

    Raises:
        SpecError: the recorded spec is not valid.
    """
    model, search = resolved.get("model", {}), resolved.get("search", {})
    twice = [k for k in SEARCHABLE_MODEL_KEYS if k in model and k in search]
    if twice:
        resolved = {**resolved, "model": {k: v for k, v in model.items() if k not in twice}}
    return parse_spec_dict(resolved)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec file.

    Raises:
        SpecError: the file is missing, not valid TOML, or fails validation.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"spec file {str(path)!r} not found; pass the path of a .toml spec such as studies/digits.toml"
        ) from None
    except UnicodeDecodeError:
        raise SpecError(
            f"spec file {str(path)!r} is not UTF-8 text; pass a .toml spec such as studies/digits.toml"
        ) from None
    except OSError as e:
        raise SpecError(f"spec file {str(path)!r} cannot be read: {e.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"spec file {str(path)!r} is not valid TOML: {e}") from None
    try:
        return parse_spec_dict(raw, base_dir=path.resolve().parent, default_name=path.stem)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None

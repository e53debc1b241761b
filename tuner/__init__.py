"""tuner: hyperparameter tuning of NumPy BN-MLPs with Optuna and a locked test evaluation.

The Python API::

    import tuner

    study = tuner.create_study("studies/digits.toml", storage="sqlite:///tuner.db")
    study.optimize(n_trials=20)
    print(study.summary()["best"])
    record = study.finalize()  # the one locked test evaluation; the study is then sealed
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tuner._version import __version__

#: Each public name and the module that defines it. They are imported on first use (PEP 562),
#: so that ``python -m tuner`` and ``tuner.workers`` can act before NumPy, Optuna and the data
#: libraries are loaded (``tuner --help`` does not load them at all).
_API = {
    "DataError": "tuner.errors",
    "SpecError": "tuner.errors",
    "StudyRefused": "tuner.errors",
    "TunerError": "tuner.errors",
    "StudySpec": "tuner.spec",
    "load_spec": "tuner.spec",
    "parse_spec_dict": "tuner.spec",
    "Study": "tuner.study",
    "create_study": "tuner.study",
    "inspect_data": "tuner.study",
    "list_studies": "tuner.study",
    "load_study": "tuner.study",
}

if TYPE_CHECKING:
    from tuner.errors import DataError, SpecError, StudyRefused, TunerError
    from tuner.spec import StudySpec, load_spec, parse_spec_dict
    from tuner.study import Study, create_study, inspect_data, list_studies, load_study

__all__ = [  # the names of _API, and the version
    "DataError",
    "SpecError",
    "Study",
    "StudyRefused",
    "StudySpec",
    "TunerError",
    "__version__",
    "create_study",
    "inspect_data",
    "list_studies",
    "load_spec",
    "load_study",
    "parse_spec_dict",
]


def __getattr__(name: str) -> object:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})

"""Pure functions called directly, in-process: the Wilson interval against published values,
the test metrics against scikit-learn, spec comparison on resume, the read-only middleware
against a stub app, the study-wide budget with threads on one SQLite file, and the progress
output."""

from __future__ import annotations

import json
import statistics
import threading

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from sklearn import metrics as skm

from tuner.budget import BudgetedStudy, BudgetExhausted
from tuner.dashboard import READ_ONLY_BANNER, READ_ONLY_REASON, ReadOnly
from tuner.holdout import simultaneous_interval
from tuner.metrics import classification_metrics, metric_value, wilson_interval
from tuner.progress import Progress
from tuner.storage import get_storage
from tuner.study import spec_changes


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    # Newcombe 1998, "Two-sided confidence intervals for the single proportion" (Stat Med
    # 17:857-872), Table I, method 3 (score interval without continuity correction).
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombes_published_values(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=5e-5)


def test_simultaneous_interval_is_bonferroni_over_the_looks():
    assert simultaneous_interval(300, 359, 1) == wilson_interval(300, 359)
    z3 = statistics.NormalDist().inv_cdf(1 - 0.05 / 6)  # two-sided, alpha / 3 looks
    assert simultaneous_interval(300, 359, 3) == wilson_interval(300, 359, z3)
    one, three = simultaneous_interval(300, 359, 1), simultaneous_interval(300, 359, 3)
    assert three[0] < one[0] and three[1] > one[1]


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    n, k = 200, 4
    y = rng.integers(0, k - 1, size=n)  # class 3 never occurs: F1 0 for it, as in sklearn
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.integers(0, 2, size=(n, 1))
    got = classification_metrics(logits.astype(np.float32), y, k)
    pred = logits.argmax(axis=1)
    labels = list(range(k))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert got["accuracy"] == skm.accuracy_score(y, pred)
    assert got["n_correct"] == int((pred == y).sum())
    assert got["macro_f1"] == pytest.approx(
        skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0), abs=1e-12
    )
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=labels), rel=1e-6)
    assert got["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(y, pred), abs=1e-12
    )
    assert got["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert got["accuracy_ci95"] == list(wilson_interval(got["n_correct"], n))
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss"):  # the per-epoch one
        assert metric_value(metric, logits.astype(np.float32), y, k) == got[metric], metric


def test_spec_changes_names_every_changed_key_but_the_resumable_ones():
    recorded = {
        "study": {"name": "a", "n_trials": 10, "seed": 0},
        "search": {"lr": {"low": 1e-4, "high": 1e-1}},
        "data": {"source": "sklearn:digits"},
    }
    current = {
        "study": {"name": "b", "n_trials": 50, "seed": 1},
        "search": {"lr": {"low": 1e-4, "high": 1.0}},
        "data": {"source": "sklearn:digits", "scaling": "standard"},
    }
    assert spec_changes(recorded, current) == ["data.scaling", "search.lr.high", "study.seed"]
    assert spec_changes(recorded, recorded) == []


def _stub_app(status="200 OK", content_type="text/html", body=b"<html><body>hi</body></html>"):
    calls = []

    def app(environ, start_response):
        calls.append(environ["REQUEST_METHOD"])
        start_response(
            status,
            [("Content-Type", content_type), ("Content-Length", str(len(body))), ("ETag", "x")],
        )
        return [body]

    return app, calls


def _call(app, method):
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen.update(status=status, headers=dict(headers))

    body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": "/"}, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_read_only_refuses_writes_before_the_app_sees_them(method):
    app, calls = _stub_app()
    status, headers, body = _call(ReadOnly(app), method)
    assert status == "403 Forbidden" and calls == []
    assert json.loads(body) == {"reason": READ_ONLY_REASON}
    assert headers["Content-Length"] == str(len(body))


def test_read_only_passes_reads_and_marks_html_pages():
    app, calls = _stub_app()
    status, headers, body = _call(ReadOnly(app), "GET")
    assert status == "200 OK" and calls == ["GET"]
    assert body == f"<html><body>hi{READ_ONLY_BANNER}</body></html>".encode()
    assert headers["Content-Length"] == str(len(body)) and "ETag" not in headers
    json_app, _ = _stub_app(content_type="application/json", body=b'{"a": 1}')
    status, headers, body = _call(ReadOnly(json_app), "HEAD")
    assert (status, body, headers["ETag"]) == ("200 OK", b'{"a": 1}', "x")


def test_the_budget_holds_with_threads_on_one_sqlite_file(tmp_path):
    """Eight threads, each its own BudgetedStudy on one SQLite file, ask and tell until the
    budget refuses: exactly ``n_trials`` trials exist, all complete."""
    storage = get_storage(f"sqlite:///{tmp_path / 's.db'}")
    optuna.create_study(storage=storage, study_name="b")
    errors = []

    def run():
        study = BudgetedStudy(optuna.load_study(study_name="b", storage=storage), storage, 20)
        try:
            while True:
                trial = study.ask()
                study.tell(trial, trial.number)
        except BudgetExhausted:
            pass
        except Exception as e:  # noqa: BLE001  (reported by the assertion below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    trials = optuna.load_study(study_name="b", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 20
    assert sorted(t.number for t in trials) == list(range(20))


def test_progress_prints_each_finished_trial_once(tmp_path, capsys):
    study = optuna.create_study(storage=get_storage(f"sqlite:///{tmp_path / 's.db'}"))
    for value in (0.5, 0.75):
        trial = study.ask()
        trial.suggest_float("lr", 0.1, 0.1)
        study.tell(trial, value)
    progress = Progress(study, 4, "json", label="worker 1")
    progress.update()  # the trials finished before it started are not reported
    trial = study.ask()
    trial.suggest_float("lr", 0.01, 0.01)
    study.tell(trial, state=TrialState.PRUNED)
    progress.update(study.trials[-1])
    progress.update()  # nothing new
    progress.close()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["worker"], x["number"], x["state"], x["params"]) for x in lines] == [
        ("worker 1", 2, "PRUNED", {"lr": 0.01})
    ]
    assert progress.bar.n == 3

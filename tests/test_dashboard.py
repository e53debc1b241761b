"""`tuner dashboard` (optuna-dashboard over the study storage, read-only where asked), the
per-trial learning curves and PNG artifacts, `tuner study report`, and a headless-browser
check of both pages.

Screenshots go to ``$TUNER_SCREENSHOT_DIR``, else ``tests/screenshots/`` (ignored by git).
The browser tests need Debian's ``chromium``; they skip without it unless
``TUNER_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import REPO, run_tuner, stop_process, write_spec

from tuner.dashboard import READ_ONLY_REASON, is_loopback, resolve_read_only

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = 3
N_TRIALS = 4
SCREENSHOT_DIR = Path(os.environ.get("TUNER_SCREENSHOT_DIR") or REPO / "tests" / "screenshots")


@pytest.fixture(scope="module")
def finalized(tmp_path_factory) -> dict:
    """A tiny finalized study in a SQLite file: its folder, storage URL, name and artifact folder."""
    folder = tmp_path_factory.mktemp("dashboard")
    name = f"dash-{uuid.uuid4().hex[:8]}"
    spec = write_spec(folder, name=name, n_trials=N_TRIALS, epochs=EPOCHS, trial_plots=True)
    url = f"sqlite:///{folder / 'studies.db'}"
    for args in (
        ["study", "start", str(spec), "--storage", url],
        ["study", "finalize", name, "--storage", url],
    ):
        result = run_tuner(*args, cwd=folder)
        assert result.returncode == 0, result.stderr
    return {
        "folder": folder,
        "url": url,
        "name": name,
        "artifacts": folder / "studies.db-artifacts",
        "db": folder / "studies.db",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get_json(url: str) -> dict:
    status, body = _request(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


@contextlib.contextmanager
def dashboard(storage_url: str, cwd: Path, *extra: str):
    """Run `tuner dashboard` on a free port until the block ends; yields (base URL, process).
    The process is always stopped (SIGTERM, then SIGKILL) and reaped."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuner",
            "dashboard",
            "--storage",
            storage_url,
            "--port",
            str(port),
            *extra,
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tuner dashboard exited {proc.returncode}: {proc.stderr.read()}")
            try:
                if _request(f"{base}/api/meta")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("tuner dashboard did not answer within 30 s")
            time.sleep(0.2)
        yield base, proc
    finally:
        stop_process(proc)


def _study_id(base: str, name: str) -> int:
    summaries = _get_json(f"{base}/api/studies")["study_summaries"]
    return next(s["study_id"] for s in summaries if s["study_name"] == name)


def test_dashboard_serves_study_trials_note_and_artifacts(finalized):
    study = optuna.load_study(study_name=finalized["name"], storage=finalized["url"])
    with dashboard(finalized["url"], finalized["folder"]) as (base, _proc):
        study_id = _study_id(base, finalized["name"])
        detail = _get_json(f"{base}/api/studies/{study_id}")
        assert detail["name"] == finalized["name"]
        assert len(detail["trials"]) == len(study.trials) == N_TRIALS
        note = detail["note"]["body"]
        assert study.user_attrs["data_fingerprint"] in note
        assert "Locked test evaluation" in note and "95% Wilson interval" in note
        assert "test split evaluated 1 time in this storage" in note

        for t in detail["trials"]:
            # Every finished trial: per-epoch user attributes; every complete one its two PNGs.
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            attrs = {k: json.loads(attrs[k]) for k in ("training_loss", "validation_accuracy")}
            n_epochs = len(t["intermediate_values"])
            assert len(attrs["training_loss"]) == len(attrs["validation_accuracy"]) == n_epochs
            if t["state"] == "Complete":
                assert n_epochs == EPOCHS
            assert [v["value"] for v in t["intermediate_values"]] == pytest.approx(
                attrs["validation_accuracy"], abs=1e-5
            )
            pngs = sorted(a["filename"] for a in t["artifacts"] if a["mimetype"] == "image/png")
            assert pngs == (
                [
                    f"trial-{t['number']}-activations-at-init.png",
                    f"trial-{t['number']}-learning-curve.png",
                ]
                if t["state"] == "Complete"
                else []
            )
            for a in t["artifacts"]:
                status, body = _request(
                    f"{base}/artifacts/{study_id}/{t['trial_id']}/{a['artifact_id']}"
                )
                assert status == 200
                assert body == (finalized["artifacts"] / a["artifact_id"]).read_bytes()
                if a["mimetype"] == "image/png":
                    assert body.startswith(PNG_MAGIC)


WRITES = [
    ("DELETE", "/api/studies/{id}", None),
    ("POST", "/api/studies/{id}/rename", {"study_name": "renamed"}),
    ("PUT", "/api/studies/{id}/note", {"version": 99, "body": "overwritten"}),
    ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
    ("POST", "/api/trials/{trial_id}/tell", {"state": "Fail"}),
    ("POST", "/api/trials/{trial_id}/user-attrs", {"user_attrs": {"x": 1}}),
]


def test_read_only_dashboard_refuses_every_write_and_the_study_remains(finalized):
    study = optuna.load_study(study_name=finalized["name"], storage=finalized["url"])
    trial_id = study.trials[0]._trial_id
    with dashboard(finalized["url"], finalized["folder"], "--read-only") as (base, proc):
        study_id = _study_id(base, finalized["name"])
        note_before = _get_json(f"{base}/api/studies/{study_id}")["note"]
        for method, path, body in WRITES:
            status, reply = _request(
                base + path.format(id=study_id, trial_id=trial_id), method, body
            )
            assert status == 403, (method, path, reply)
            assert json.loads(reply)["reason"] == READ_ONLY_REASON
        detail = _get_json(f"{base}/api/studies/{study_id}")
        assert detail["name"] == finalized["name"] and detail["note"] == note_before
        page = _request(f"{base}/dashboard/studies/{study_id}")[1].decode()
        assert page.count('id="tuner-read-only"') == 1 and page.index(
            "tuner-read-only"
        ) < page.index("</body>")
        assert [s["study_name"] for s in _get_json(f"{base}/api/studies")["study_summaries"]] == [
            finalized["name"]
        ]
    after = optuna.load_study(study_name=finalized["name"], storage=finalized["url"])
    assert len(after.trials) == N_TRIALS and after.trials[0].state == study.trials[0].state


def test_writable_dashboard_deletes_so_the_refusal_is_the_read_only_guard(finalized, tmp_path):
    # A copy of the database: the loopback default is writable, and the same DELETE succeeds
    # on a study that is not sealed.
    with sqlite3.connect(finalized["db"]) as src, sqlite3.connect(tmp_path / "copy.db") as dst:
        src.backup(dst)
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    optuna.create_study(study_name="open", storage=url, direction="maximize")
    with dashboard(url, tmp_path, "--artifact-dir", str(tmp_path / "no-artifacts")) as (
        base,
        _proc,
    ):
        study_id = _study_id(base, "open")
        assert "tuner-read-only" not in _request(f"{base}/dashboard")[1].decode()
        status, _ = _request(
            f"{base}/api/studies/{study_id}", "DELETE", {"remove_associated_artifacts": False}
        )
        assert status == 204
        assert [s["study_name"] for s in _get_json(f"{base}/api/studies")["study_summaries"]] == [
            finalized["name"]
        ]


def test_writable_dashboard_refuses_to_rename_delete_or_tell_a_sealed_study(
    tmp_path, storage_url, study_name
):
    spec = write_spec(tmp_path, name="sealed", n_trials=3, epochs=2)
    for args in (
        ["study", "start", str(spec), "--name", study_name, "--quiet"],
        ["study", "finalize", study_name],
    ):
        result = run_tuner(*args, "--storage", storage_url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    other = f"{study_name}-open"
    optuna.create_study(study_name=other, storage=storage_url, direction="maximize")
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    trial_id = study.trials[0]._trial_id
    with dashboard(storage_url, tmp_path) as (base, _proc):
        study_id = _study_id(base, study_name)
        for method, path, body in (
            ("POST", f"/api/studies/{study_id}/rename", {"study_name": f"{study_name}-renamed"}),
            ("DELETE", f"/api/studies/{study_id}", {"remove_associated_artifacts": True}),
            ("POST", f"/api/trials/{trial_id}/tell", {"state": "Complete", "values": [1.0]}),
            ("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": {"x": 1}}),
        ):
            status, reply = _request(base + path, method, body)
            assert status == 403, (method, path, reply)
            reason = json.loads(reply)["reason"]
            assert reason.startswith(f"study {study_name!r} is sealed") and "--reuse-test" in reason
        status, reply = _request(
            f"{base}/api/studies/{_study_id(base, other)}/rename",
            "POST",
            {"study_name": f"{other}-renamed"},
        )
        assert status == 201, reply  # the guard is for sealed studies only
        names = sorted(
            s["study_name"]
            for s in _get_json(f"{base}/api/studies")["study_summaries"]
            if s["study_name"].startswith(study_name)
        )
        assert names == [study_name, f"{other}-renamed"]
    after = optuna.load_study(study_name=study_name, storage=storage_url)
    assert [(t.state, t.value, t.user_attrs) for t in after.trials] == [
        (t.state, t.value, t.user_attrs) for t in study.trials
    ]
    again = run_tuner("study", "finalize", study_name, "--storage", storage_url, cwd=tmp_path)
    assert again.returncode == 2 and "is sealed" in again.stderr


def test_non_loopback_host_forces_read_only_with_a_warning(finalized):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("192.0.2.1")
    assert resolve_read_only("127.0.0.1", False) == (False, None)
    read_only, warning = resolve_read_only("0.0.0.0", False)
    assert read_only and "not a loopback address" in warning
    # 192.0.2.1 (TEST-NET-1) is no address of this host: the warning is printed, then binding
    # fails with exit 2, so nothing listens beyond loopback.
    result = run_tuner(
        "dashboard",
        "--storage",
        finalized["url"],
        "--host",
        "192.0.2.1",
        "--port",
        str(_free_port()),
        cwd=finalized["folder"],
        timeout=60,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 2 and lines[0].startswith(
        "tuner: warning: '192.0.2.1' is not a loopback address"
    )
    assert "serves read-only" in lines[0] and "cannot serve the dashboard on 192.0.2.1" in lines[1]


def test_dashboard_refuses_a_missing_sqlite_file(tmp_path):
    result = run_tuner(
        "dashboard",
        "--storage",
        f"sqlite:///{tmp_path / 'none.db'}",
        "--port",
        str(_free_port()),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2 and "no database file" in result.stderr
    assert not (tmp_path / "none.db").exists()


def _report(finalized) -> Path:
    out = finalized["folder"] / "report"
    if not (out / "report.html").exists():
        result = run_tuner(
            "study",
            "report",
            finalized["name"],
            "--storage",
            finalized["url"],
            "--out",
            str(out),
            cwd=finalized["folder"],
        )
        assert result.returncode == 0, result.stderr
    return out


def test_report_is_offline_html_with_pngs(finalized):
    import plotly.offline

    from tuner import holdout
    from tuner.storage import get_storage

    out = _report(finalized)
    page = (out / "report.html").read_text()
    assert f"<span id='study-name'>{finalized['name']}</span>" in page
    # plotly.js embedded exactly once; no script is loaded from anywhere.
    assert page.count(plotly.offline.get_plotlyjs()[:200]) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert "cdn" not in " ".join(re.findall(r"<script[^>]*>", page, re.I)).lower()
    for title in (
        "Optimization history",
        "Parameter importances",
        "Parallel coordinates",
        "Slice plots",
        "Learning curves of the best trials",
        "Activation histograms at initialization, per initializer",
        "Locked test evaluation",
    ):
        assert f"<h2>{title}" in page
    record = holdout.get_record(get_storage(finalized["url"]), finalized["name"])
    low, high = record["metrics"]["accuracy_ci95"]
    assert (
        f"test accuracy {record['metrics']['accuracy']:.4f} (95% Wilson interval {low:.4f} to {high:.4f}, "
        f"n = {record['n_test']})"
    ) in page
    assert "test split evaluated 1 time in this storage" in page
    for initializer in ("he", "xavier", "normal:0.01"):
        assert f"{initializer}, layer 1: std" in page
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {
        "optimization_history.png",
        "param_importances.png",
        "parallel_coordinate.png",
        "slice.png",
        "learning_curves.png",
        "activations_at_init.png",
        "activations_at_init_no_batchnorm.png",
        "test_result.png",
    }
    assert all((out / p).read_bytes().startswith(PNG_MAGIC) for p in pngs)
    assert "drawn with matplotlib" in page


def test_report_with_one_trial_notes_what_it_cannot_draw(tmp_path):
    from tuner.report import write_report
    from tuner.storage import get_storage

    storage = get_storage(f"sqlite:///{tmp_path / 'one.db'}")
    study = optuna.create_study(storage=storage, study_name="one-trial", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    report = write_report(study, storage, tmp_path / "out")
    page = report.html.read_text()
    assert "one-trial" in page
    assert report.skipped["Parameter importances"].startswith("not drawn:")
    assert "not finalized" in report.skipped["Locked test evaluation"]
    assert (
        "no recorded spec"
        in report.skipped["Activation histograms at initialization, per initializer"]
    )
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in report.pngs)


# --- headless browser -------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("TUNER_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "TUNER_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install -y chromium)"
            )
        pytest.skip("browser tests need Debian's chromium (apt-get install -y chromium)")
    return path


def _run_chromium(chromium: str, url: str, *action: str) -> str:
    """Run headless chromium on ``url`` with ``action`` (``--dump-dom`` or ``--screenshot=F``),
    and return its stdout. Its whole process group is killed afterwards."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "--virtual-time-budget=10000",
                *action,
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=90)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


def _render(chromium: str, url: str, screenshot: Path) -> str:
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    _run_chromium(chromium, url, f"--screenshot={screenshot}")
    assert screenshot.read_bytes().startswith(PNG_MAGIC)
    return _run_chromium(chromium, url, "--dump-dom")


def test_browser_renders_dashboard_and_report(finalized):
    chromium = _chromium()
    with dashboard(finalized["url"], finalized["folder"], "--read-only") as (base, _proc):
        study_id = _study_id(base, finalized["name"])
        static = _request(f"{base}/dashboard/studies/{study_id}")[1].decode()
        assert finalized["name"] not in static  # so a name in the DOM was rendered by the React app
        dom = _render(
            chromium, f"{base}/dashboard/studies/{study_id}", SCREENSHOT_DIR / "dashboard-study.png"
        )
        assert finalized["name"] in dom and "Read-only dashboard" in dom
        dom = _render(
            chromium,
            f"{base}/dashboard/studies/{study_id}/note",
            SCREENSHOT_DIR / "dashboard-note.png",
        )
        assert "Locked test evaluation" in dom
    report = _report(finalized) / "report.html"
    dom = _render(chromium, report.as_uri(), SCREENSHOT_DIR / "report.png")
    assert f'<span id="study-name">{finalized["name"]}</span>' in dom
    assert "plotly-graph-div" in dom and 'class="main-svg"' in dom  # plotly drew its figures

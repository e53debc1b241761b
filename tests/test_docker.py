"""The Docker job (``docker/``): Dockerfile, compose file and Kubernetes manifests.

No Docker engine runs here, so the files are checked as data: the Dockerfile's instructions,
the compose file and the manifests parsed with PyYAML (compose's ``${VAR:-default}``
interpolation done as Compose does it). Every ``tuner`` command they run goes through the
CLI's own click parser without running. Then the compose topology's commands, read from the
compose file, run as local processes against the local PostgreSQL: create (twice), two
workers at once, finalize, and the dashboard over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import optuna
import pytest
import yaml
from conftest import REPO, _drop_studies, _postgres_url, run_tuner, stop_process, write_spec

from tuner.cli import cli
from tuner.dashboard import resolve_read_only
from tuner.holdout import get_record
from tuner.spec import load_spec

DOCKER = REPO / "docker"
#: Environment keys that name a secret: they may only take their value from elsewhere.
SECRET_KEY = re.compile(r"passw(or)?d|secret|token|api[_-]?key|credential", re.IGNORECASE)
#: A password inside a URL (``scheme://user:PASSWORD@host``).
URL_PASSWORD = re.compile(r"://[^/@\s:]+:([^@\s]+)@")
#: Compose's interpolation: ``$$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``.
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ---------------------------------------------------------------------------- the files, parsed


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    instructions, pending = [], ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT value as argv: its JSON array, or the shell form run by ``/bin/sh -c``."""
    return json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]


def image_argv() -> tuple[list[str], list[str]]:
    """The image's (ENTRYPOINT, CMD), the last of each as Docker takes them."""
    entrypoint = [exec_form(a) for k, a in dockerfile() if k == "ENTRYPOINT"]
    cmd = [exec_form(a) for k, a in dockerfile() if k == "CMD"]
    return (entrypoint[-1] if entrypoint else []), (cmd[-1] if cmd else [])


def interpolate(value, variables: dict[str, str]):
    """``value`` (any YAML data) with Compose's variable interpolation applied to its strings.

    Raises:
        KeyError: a ``${VAR:?error}`` whose variable is unset or empty.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        current = variables.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("-"):
            return arg if missing else current
        if op and op.endswith("?") and missing:
            raise KeyError(f"{name}: {arg}")
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def compose_raw() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def compose(variables: dict[str, str] | None = None) -> dict:
    """The compose file as Compose sees it, with ``variables`` as docker/.env (a placeholder
    password unless given)."""
    return interpolate(compose_raw(), {"POSTGRES_PASSWORD": "placeholder", **(variables or {})})


def environment(service: dict) -> dict[str, str]:
    """A compose service's ``environment`` (mapping or ``KEY=VALUE`` list) as a dict."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _as_argv(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def compose_argv(service: dict) -> list[str]:
    """What a compose service runs: its ``entrypoint`` (else the image's ENTRYPOINT) and its
    ``command`` (else the image's CMD, unless ``entrypoint`` was overridden)."""
    entrypoint, cmd = image_argv() if runs_tuner_image(service) else ([], [])
    if "entrypoint" in service:
        return _as_argv(service["entrypoint"]) + _as_argv(service.get("command") or [])
    return entrypoint + (_as_argv(service["command"]) if "command" in service else cmd)


def runs_tuner_image(service: dict) -> bool:
    build = service.get("build") or {}
    return str(service.get("image", "")).startswith("tuner") or (
        isinstance(build, dict) and build.get("dockerfile") == "docker/Dockerfile"
    )


def k8s_documents() -> list[tuple[str, dict]]:
    """Every object of docker/k8s/*.yaml, with its file name."""
    return [
        (path.name, doc)
        for path in sorted((DOCKER / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def pod_specs() -> list[tuple[str, dict, dict]]:
    """(``Kind/name``, the object, its pod spec) for every workload in the manifests."""
    return [
        (f"{doc['kind']}/{doc['metadata']['name']}", doc, doc["spec"]["template"]["spec"])
        for _file, doc in k8s_documents()
        if doc["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet")
    ]


def k8s_argv(container: dict) -> list[str]:
    """What a container runs: ``command`` (else the image's ENTRYPOINT) and ``args`` (else the
    image's CMD, unless ``command`` was set)."""
    if not container["image"].startswith("tuner"):
        return [str(c) for c in container.get("command", [])] + [
            str(a) for a in container.get("args", [])
        ]
    entrypoint, cmd = image_argv()
    if "command" in container:
        return [str(c) for c in container["command"]] + [str(a) for a in container.get("args", [])]
    return entrypoint + ([str(a) for a in container["args"]] if "args" in container else cmd)


def tuner_commands_in(argv: list[str]) -> list[list[str]]:
    """The ``tuner`` command lines in argv: argv itself, or those in a ``sh -c`` script."""
    if argv and Path(argv[0]).name == "tuner":
        return [argv]
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        pieces = re.split(r"[;\n]|&&|\|\|?", argv[2])
        return [
            words
            for piece in pieces
            if (words := shlex.split(piece)) and Path(words[0]).name == "tuner"
        ]
    return []


def all_tuner_commands() -> list[tuple[str, list[str]]]:
    """(origin, argv) of every ``tuner`` command line the Dockerfile, compose and k8s run."""
    commands = [("Dockerfile", argv) for argv in tuner_commands_in(sum(image_argv(), []))]
    for name, service in compose()["services"].items():
        commands += [(f"compose:{name}", argv) for argv in tuner_commands_in(compose_argv(service))]
    for where, _doc, pod in pod_specs():
        for container in pod.get("initContainers", []) + pod["containers"]:
            commands += [
                (f"k8s:{where}:{container['name']}", argv)
                for argv in tuner_commands_in(k8s_argv(container))
            ]
    return commands


def parse_cli(args: list[str]) -> click.Context:
    """Parse ``tuner ARGS`` with the CLI's click parser, group by group, without invoking any
    command; returns the context of the command that would run.

    Raises:
        click.UsageError: an unknown command or option, a missing argument, a bad value.
    """
    ctx = cli.make_context("tuner", list(args))
    while isinstance(ctx.command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            raise click.UsageError(f"{ctx.command_path} needs a command", ctx)
        name, command, rest = ctx.command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


TUNER_COMMANDS = all_tuner_commands()


# ---------------------------------------------------------------------------- Dockerfile


def build_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults (an ARG without one maps to "")."""
    return {
        name: default
        for k, a in dockerfile()
        if k == "ARG"
        for name, _, default in [a.partition("=")]
    }


def test_dockerfile_runs_tuner_as_non_root_on_a_slim_base():
    instructions = dockerfile()
    base = [interpolate(a, build_args()) for k, a in instructions if k == "FROM"]
    assert base and re.fullmatch(r"python:3\.\d+-slim", base[-1].split()[0]), base
    users = [a for k, a in instructions if k == "USER"]
    assert users, "the image runs as root: no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) > 0)
    if user.isdigit():  # a numeric USER must be the uid of a user the image creates
        assert any(
            k == "RUN" and re.search(rf"useradd\b.*--uid {user}\b", a) for k, a in instructions
        )
    # The last USER comes after every RUN: nothing runs as root at the end.
    last_user = max(i for i, (k, _) in enumerate(instructions) if k == "USER")
    assert all(i < last_user for i, (k, _) in enumerate(instructions) if k == "RUN")

    entrypoint, cmd = image_argv()
    assert entrypoint == ["tuner"]
    assert (
        cmd[:2] == ["study", "start"] and cmd[2].endswith("/digits.toml") and "--storage" not in cmd
    )

    installs = " ".join(a for k, a in instructions if k == "RUN" and "pip install" in a)
    assert "[postgres]" in installs and "test" not in installs and "-e " not in installs
    # Reproducible: the exact versions of constraints.txt, which the build context holds.
    assert re.search(r"--constraint \S*constraints\.txt", installs)
    copied = [a.split()[:-1] for k, a in instructions if k == "COPY"]
    assert any("constraints.txt" in sources for sources in copied)
    assert "!constraints.txt" in (DOCKER / "Dockerfile.dockerignore").read_text().split()


def test_dockerfile_bakes_in_no_secret():
    for keyword, args in dockerfile():
        if keyword in ("ENV", "ARG", "LABEL"):
            for key, value in re.findall(r"([A-Za-z_][\w.-]*)[= ]([^\s]*)", args):
                assert not (SECRET_KEY.search(key) and value), f"{keyword} {key} holds a value"
            assert not URL_PASSWORD.search(args), f"{keyword} {args} holds a password in a URL"
        if keyword in ("COPY", "ADD"):
            sources = args.split()[:-1]
            assert not any(".env" in s or s.startswith(("docker", ".")) for s in sources), args
    # The build context (the repository root) leaves out all but what the image needs.
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and not any(".env" in line for line in ignore if line.startswith("!"))


# ---------------------------------------------------------------------------- compose


def test_credentials_come_from_an_uncommitted_env_file():
    assert subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO).returncode == 0
    assert not subprocess.run(
        ["git", "ls-files", "docker/.env"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert example == {"POSTGRES_PASSWORD": "", "COMPOSE_PROJECT_NAME": "tuner"}

    services = compose_raw()["services"]
    assert services["postgres"]["env_file"] in (".env", [".env"])
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", value), (
                    f"{name}: {key} has a literal value"
                )
            for password in URL_PASSWORD.findall(value):
                assert re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", password), (
                    f"{name}: {key} has a literal password"
                )
    # Without docker/.env Compose stops with a message instead of using an empty password.
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(compose_raw(), {})


def test_compose_file_is_read_by_compose_v1_and_v2():
    """Compose v1 (Debian's docker-compose 1.29) rejects a top-level ``name:``; the project is
    named by COMPOSE_PROJECT_NAME in docker/.env instead, and every knob has a default."""
    raw = compose_raw()
    assert "name" not in raw and "version" not in raw
    assert set(raw) <= {"services", "volumes", "networks"} | {k for k in raw if k.startswith("x-")}
    services = compose()["services"]  # only POSTGRES_PASSWORD set
    assert services["postgres"]["image"] == "postgres:16"
    worker = compose_argv(services["worker"])
    assert worker[worker.index("--heartbeat-interval") + 1] == "10"
    assert worker[worker.index("--grace-period") + 1] == "30"
    knobs = {"WORKER_HEARTBEAT_INTERVAL": "1", "WORKER_GRACE_PERIOD": "4", "DASHBOARD_PORT": "9"}
    services = compose(knobs)["services"]
    worker = compose_argv(services["worker"])
    assert worker[worker.index("--grace-period") + 1] == "4"
    assert _published(services["dashboard"]) == [("127.0.0.1", "8080")]  # the container's port
    assert services["dashboard"]["ports"] == ["127.0.0.1:9:8080"]


def test_ci_runs_the_docker_job_after_the_tests():
    """.ci/run ends with docker/ci.sh (the real engine, images and compose stack), whose every
    run tears down what it started; its CI images come from the same files."""
    run = (REPO / ".ci" / "run").read_text()
    assert run.index("python -m pytest") < run.index("bash docker/ci.sh")
    script = (DOCKER / "ci.sh").read_text()
    assert subprocess.run(["bash", "-n", str(DOCKER / "ci.sh")]).returncode == 0
    assert "trap teardown EXIT" in script
    assert '-f "$SRC/docker/Dockerfile"' in script and '"$SRC/docker/compose.yaml"' in script
    assert "--iptables=false" in script and "--bridge=none" in script
    # The CI's PostgreSQL is initialised in UTF-8 (SQL_ASCII breaks every tuner command).
    entrypoint = (DOCKER / "ci" / "postgres" / "entrypoint.sh").read_text()
    assert "--encoding=UTF8" in entrypoint and "--locale=C.UTF-8" in entrypoint


def test_postgres_healthcheck_gates_the_job():
    services = compose()["services"]
    check = services["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in (check if isinstance(check, str) else " ".join(check))
    assert "pgdata" in " ".join(services["postgres"]["volumes"])
    assert services["create"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["finalize"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "dashboard"):
        assert (
            services[name]["depends_on"]["create"]["condition"] == "service_completed_successfully"
        )


def _published(service: dict) -> list[tuple[str, str]]:
    """(host IP, container port) of each published port, short or long syntax."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip", ""), str(port["target"])))
        else:
            parts = str(port).rsplit(":", 2)
            ports.append((parts[0] if len(parts) == 3 else "", parts[-1]))
    return ports


def test_only_the_dashboard_is_published_and_only_on_loopback():
    services = compose()["services"]
    assert _published(services["dashboard"]) == [("127.0.0.1", "8080")]
    assert all(not _published(s) for name, s in services.items() if name != "dashboard")
    # Inside the container it listens on every interface, which forces it read-only.
    argv = compose_argv(services["dashboard"])
    host, port = argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]
    assert port == "8080" and resolve_read_only(host, False)[0] is True


def test_workers_scale_and_finalize_waits_behind_a_profile():
    services = compose()["services"]
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert services["finalize"]["profiles"] == ["finalize"]
    assert all(
        "profiles" not in services[name] for name in ("postgres", "create", "worker", "dashboard")
    )
    assert all(
        services[name].get("restart", "no") == "no" for name in ("create", "worker", "finalize")
    )


def test_every_tuner_service_shares_the_storage_and_the_artifact_volume():
    config = compose()
    tuner_services = {n: s for n, s in config["services"].items() if runs_tuner_image(s)}
    assert set(tuner_services) == {"create", "worker", "dashboard", "finalize"}
    for name, service in tuner_services.items():
        env = environment(service)
        assert (
            env["TUNER_STORAGE"] == "postgresql+psycopg://tuner:placeholder@postgres:5432/tuner"
        ), name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts.get(env["TUNER_ARTIFACT_DIR"]) == "artifacts", name
    assert {"pgdata", "artifacts"} <= set(config["volumes"])
    # The image's own default, so that `docker run` alone also finds the folder.
    assert ("ENV", "TUNER_ARTIFACT_DIR=/artifacts") in dockerfile()


# ---------------------------------------------------------------------------- Kubernetes


def test_k8s_has_the_same_job():
    kinds = {f"{doc['kind']}/{doc['metadata']['name']}": doc for _f, doc in k8s_documents()}
    assert {
        "StatefulSet/postgres",
        "Service/postgres",
        "Job/tuner-create",
        "Job/tuner-worker",
        "Deployment/tuner-dashboard",
        "Service/tuner-dashboard",
        "Job/tuner-finalize",
        "PersistentVolumeClaim/tuner-artifacts",
    } <= set(kinds)
    assert kinds["Job/tuner-worker"]["spec"]["parallelism"] >= 2
    assert (
        "completions" not in kinds["Job/tuner-worker"]["spec"]
    )  # a work queue: done when the budget is
    assert kinds["PersistentVolumeClaim/tuner-artifacts"]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    assert kinds["Service/tuner-dashboard"]["spec"].get("type", "ClusterIP") == "ClusterIP"
    postgres = kinds["StatefulSet/postgres"]["spec"]["template"]["spec"]["containers"][0]
    assert "pg_isready" in postgres["readinessProbe"]["exec"]["command"]


def test_k8s_runs_tuner_as_non_root_with_secrets_from_a_secret():
    assert not [doc for _f, doc in k8s_documents() if doc["kind"] == "Secret"], (
        "a Secret is committed"
    )
    tuner_pods = 0
    for where, _doc, pod in pod_specs():
        for container in pod.get("initContainers", []) + pod["containers"]:
            env = container.get("env", [])
            for var in env:
                if SECRET_KEY.search(var["name"]):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], (
                        f"{where}: {var['name']}"
                    )
                for password in URL_PASSWORD.findall(str(var.get("value", ""))):
                    assert re.fullmatch(r"\$\(\w+\)", password), (
                        f"{where}: {var['name']} has a literal password"
                    )
            if not container["image"].startswith("tuner"):
                continue
            tuner_pods += 1
            context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) > 0, where
            values = {v["name"]: v.get("value") for v in env}
            assert (
                values["TUNER_STORAGE"]
                == "postgresql+psycopg://tuner:$(POSTGRES_PASSWORD)@postgres:5432/tuner"
            )
            # $(VAR) expands only from variables defined earlier in the list.
            assert [v["name"] for v in env].index("POSTGRES_PASSWORD") < [
                v["name"] for v in env
            ].index("TUNER_STORAGE")
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
            mounts = {m["mountPath"]: claims[m["name"]] for m in container["volumeMounts"]}
            assert mounts[values["TUNER_ARTIFACT_DIR"]] == "tuner-artifacts", where
    assert tuner_pods == 4


# ---------------------------------------------------------------------------- the tuner commands


def test_every_place_that_runs_tuner_was_found():
    origins = {origin for origin, _ in TUNER_COMMANDS}
    assert origins == {
        "Dockerfile",
        "compose:create",
        "compose:worker",
        "compose:dashboard",
        "compose:finalize",
        "k8s:Job/tuner-create:tuner",
        "k8s:Job/tuner-worker:tuner",
        "k8s:Deployment/tuner-dashboard:tuner",
        "k8s:Job/tuner-finalize:tuner",
    }


@pytest.mark.parametrize("origin,argv", TUNER_COMMANDS, ids=[o for o, _ in TUNER_COMMANDS])
def test_the_cli_accepts_the_command(origin, argv):
    try:
        ctx = parse_cli(argv[1:])
    except click.UsageError as e:
        pytest.fail(f"{origin}: {shlex.join(argv)}: exit {e.exit_code}: {e.format_message()}")
    assert not isinstance(ctx.command, click.Group)
    # The storage URL (with its password) comes from the environment, never the command line.
    assert ctx.params.get("storage_url") is None, origin


def _copied_to_image(container_path: str) -> Path:
    """The repository file that the Dockerfile's COPY puts at ``container_path``."""
    for keyword, args in dockerfile():
        if keyword == "COPY":
            *sources, dest = args.split()
            if len(sources) == 1 and container_path.startswith(dest.rstrip("/") + "/"):
                return REPO / sources[0] / container_path[len(dest.rstrip("/")) + 1 :]
    raise AssertionError(f"{container_path} is copied into the image by no COPY")


def test_create_worker_and_finalize_name_the_same_study_from_a_spec_in_the_image():
    by_origin = {origin: argv for origin, argv in TUNER_COMMANDS}
    for prefix, create, worker, finalize in (
        ("compose", "compose:create", "compose:worker", "compose:finalize"),
        (
            "k8s",
            "k8s:Job/tuner-create:tuner",
            "k8s:Job/tuner-worker:tuner",
            "k8s:Job/tuner-finalize:tuner",
        ),
    ):
        created = parse_cli(by_origin[create][1:]).params
        spec = load_spec(_copied_to_image(created["spec_path"]))
        name = created["name"] or spec.name
        assert name == "digits" and spec.name == "digits", prefix
        assert parse_cli(by_origin[worker][1:]).params["name"] == name, prefix
        assert parse_cli(by_origin[finalize][1:]).params["name"] == name, prefix
    assert _copied_to_image(image_argv()[1][2]).is_file()


def test_readme_commands_name_the_files_services_and_jobs_that_exist():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Run as a Docker job") :]
    section = section[: section.index("\n## ", 1)]
    lines = [line.split("#")[0].strip() for line in section.splitlines()]
    services, kinds = (
        compose()["services"],
        {f"{d['kind']}/{d['metadata']['name']}" for _f, d in k8s_documents()},
    )
    assert "cp docker/.env.example docker/.env" in lines
    compose_lines = [line for line in lines if line.startswith("docker compose")]
    assert compose_lines and all(
        line.startswith("docker compose -f docker/compose.yaml --env-file docker/.env ")
        for line in compose_lines
    )
    assert any(re.search(r" up --scale worker=\d+$", line) for line in compose_lines)
    assert any(line.endswith("--profile finalize run --rm finalize") for line in compose_lines)
    assert services["finalize"]["profiles"] == ["finalize"]
    for line in lines:
        for path in re.findall(r"-f (docker/\S+)", line):
            assert (REPO / path).is_file(), line
        for job in re.findall(r"job/([\w-]+)", line):
            assert f"Job/{job}" in kinds, line
        for svc in re.findall(r"svc/([\w-]+)", line):
            assert f"Service/{svc}" in kinds, line
    # What was run for real, and how to run it again.
    assert "Verified on this machine" in section and "bash docker/ci.sh" in section
    assert (DOCKER / "ci.sh").is_file()
    assert "No Kubernetes cluster was available" in section


# ---------------------------------------------------------------------------- tuner study create


def test_study_create_is_idempotent_and_runs_no_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = write_spec(tmp_path, name="made", n_trials=3, epochs=2)
    args = [
        "study",
        "create",
        str(spec),
        "--storage",
        url,
        "--artifact-dir",
        str(tmp_path / "weights"),
    ]
    first = run_tuner(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("study 'made' created in") and "3 trials to run" in first.stdout
    second = run_tuner(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert (
        second.stdout.strip()
        == "study 'made' exists with this spec and data (no trials); nothing to do"
    )

    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name="made", storage=storage)
    assert study.get_trials() == []
    assert (
        study.user_attrs["artifact_dir"] == str(tmp_path / "weights")
        and (tmp_path / "weights").is_dir()
    )
    assert (
        study.user_attrs["spec"]["study"]["n_trials"] == 3 and study.user_attrs["data_fingerprint"]
    )
    assert get_record(storage, "made") is None  # the holdout table exists and is empty
    storage.engine.dispose()

    changed = run_tuner(
        "study",
        "create",
        str(write_spec(tmp_path, name="made", n_trials=3, epochs=3)),
        "--storage",
        url,
        cwd=tmp_path,
    )
    assert changed.returncode == 2
    assert "was created with a different spec (model.epochs changed)" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1 and "Traceback" not in changed.stderr


# ---------------------------------------------------------------------------- end to end


@pytest.fixture
def postgres_url(request):
    """``TUNER_TEST_POSTGRES_URL``; skipped without it (failed with ``TUNER_REQUIRE_POSTGRES=1``).
    The test's studies and holdout rows are deleted afterwards."""
    url = _postgres_url()
    if not url:
        pytest.skip(
            "the compose job runs against TUNER_TEST_POSTGRES_URL, e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        )
    yield url
    _drop_studies(url, request.node.study_names)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalService:
    """A compose service's command as a local process: the ``tuner`` image's entrypoint becomes
    ``python -m tuner``, its named volumes folders under ``root``, and the database URL the
    local PostgreSQL's."""

    def __init__(self, service: dict, *, root: Path, storage_url: str, cwd: Path) -> None:
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = root / source
            mounts[target].mkdir(parents=True, exist_ok=True)

        def local(value: str) -> str:
            for target, folder in mounts.items():
                if value == target or value.startswith(target + "/"):
                    return str(folder) + value[len(target) :]
            return value

        argv = compose_argv(service)
        assert argv[0] == "tuner", argv
        self.argv = [sys.executable, "-m", "tuner", *map(local, argv[1:])]
        env = environment(service)
        assert (
            env["TUNER_STORAGE"].startswith("postgresql+psycopg://tuner:")
            and "@postgres:5432/" in env["TUNER_STORAGE"]
        )
        env["TUNER_STORAGE"] = storage_url
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TUNER_")},
            **{k: local(v) for k, v in env.items()},
        }
        self.cwd = cwd

    def set_option(self, option: str, value: str) -> None:
        """Replace the value of ``option``, which the command must have."""
        self.argv[self.argv.index(option) + 1] = value

    def popen(self) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def run(self, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv, cwd=self.cwd, env=self.env, text=True, capture_output=True, timeout=timeout
        )


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_compose_job_runs_as_local_processes(tmp_path, postgres_url, study_name):
    n_trials = 6
    spec = write_spec(tmp_path, name="compose-job", n_trials=n_trials, epochs=2)
    services = compose({"STUDY_SPEC": str(spec), "STUDY_NAME": study_name})["services"]
    root, cwd = tmp_path / "volumes", tmp_path / "home"
    cwd.mkdir()
    create, worker, finalize, dashboard = (
        LocalService(services[name], root=root, storage_url=postgres_url, cwd=cwd)
        for name in ("create", "worker", "finalize", "dashboard")
    )

    created = create.run()
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"study {study_name!r} created in")
    again = create.run()  # a second `docker compose up` runs create again
    assert again.returncode == 0, again.stderr
    assert "exists with this spec and data (no trials); nothing to do" in again.stdout

    workers = [worker.popen() for _ in range(2)]  # --scale worker=2
    outputs = []
    try:
        for proc in workers:
            outputs.append(proc.communicate(timeout=150))
    finally:
        for proc in workers:
            stop_process(proc, terminate=False)
    assert [p.returncode for p in workers] == [0, 0], [err for _out, err in outputs]
    # Each worker prints the trials it ran, prefixed by its id; together, every trial once.
    printed = [
        [words for words in map(str.split, out.splitlines()) if words[:3:2] == ["worker", "trial"]]
        for out, _err in outputs
    ]
    numbers = [[int(words[3]) for words in lines] for lines in printed]
    assert sorted(numbers[0] + numbers[1]) == list(range(n_trials)), outputs
    ids = [{words[1] for words in lines} for lines in printed]
    assert all(len(i) == 1 for i in ids) and ids[0] != ids[1], ids

    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
        assert len(trials) == n_trials
        assert {t.state for t in trials} <= {
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
        }
        assert any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        artifacts = Path(worker.env["TUNER_ARTIFACT_DIR"])
        assert artifacts == root / "artifacts" and any(artifacts.iterdir())

        finalized = finalize.run()
        assert finalized.returncode == 0, finalized.stderr
        assert f"study {study_name!r} finalized and sealed" in finalized.stdout
        record = get_record(storage, study_name)
        assert record["completed"] and record["n_test"] == 359
    finally:
        storage.engine.dispose()

    sealed = create.run()  # `docker compose up` after finalize: create refuses, workers never start
    assert sealed.returncode == 2 and "is sealed" in sealed.stderr

    port = _free_port()
    dashboard.set_option(
        "--host", "127.0.0.1"
    )  # the container's 0.0.0.0, on this machine's loopback only
    dashboard.set_option("--port", str(port))
    proc = dashboard.popen()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                status, body = _get(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not answer within 30 s"
                time.sleep(0.3)
        assert status == 200
        names = [s["study_name"] for s in json.loads(body)["study_summaries"]]
        assert study_name in names
    finally:
        stop_process(proc)
    assert proc.returncode is not None

"""optuna-dashboard integration: the study's note (Markdown shown on its dashboard page) and
serving the dashboard over a study storage and its artifact store, read-only where asked.

optuna-dashboard has no authentication, and its API deletes, renames and creates studies,
tells trials and edits notes. :func:`make_server` serves optuna-dashboard's own WSGI app;
with ``read_only`` it is wrapped in :class:`ReadOnly`, which refuses every request but GET and
HEAD. Every write route of optuna-dashboard 0.21 uses another method: ``POST /api/studies``,
``POST /api/studies/<id>/rename``, ``DELETE /api/studies/<id>``, ``PUT
/api/studies/<id>/note``, ``PUT /api/studies/<id>/<trial_id>/note``, ``POST
/api/trials/<id>/tell``, ``POST /api/trials/<id>/user-attrs``, ``POST
/api/studies/<id>/<trial_id>/skip``, the preference routes, artifact upload (``POST``) and
deletion (``DELETE /api/artifacts/...``), and the schema migration ``POST
/incompatible-rdb-schema``.

A writable dashboard is wrapped in :class:`SealGuard`: a sealed study (its test split
evaluated or claimed) cannot be renamed, deleted, told trials or lose artifacts through it,
since optuna-dashboard renames a study by copying it to a new name and deleting the original.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _make_wsgi_server

import optuna
import sqlalchemy
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from tuner import holdout, schema
from tuner import storage as storage_module
from tuner.errors import TunerError

#: Request methods that optuna-dashboard only uses to read.
READ_METHODS = frozenset({"GET", "HEAD"})
#: The body of a refused request; optuna-dashboard's page shows ``reason`` to the user.
READ_ONLY_REASON = (
    "this tuner dashboard is read-only: it refuses every change (deleting, renaming or "
    "creating studies, telling trials, notes, artifacts); to edit, run `tuner dashboard` "
    "without --read-only on a loopback host (127.0.0.1)"
)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` (a name or an IPv4/IPv6 address) resolves to is a
    loopback address; an empty, wildcard (``0.0.0.0``, ``::``) or unresolvable host is not."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    addresses = {str(info[4][0]).split("%", 1)[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def resolve_read_only(host: str, read_only: bool) -> tuple[bool, str | None]:
    """Whether to serve read-only, and the warning to print, for ``--host`` and ``--read-only``.

    A host that is not a loopback address makes the dashboard reachable from other machines
    without authentication: read-only is forced there, with a warning.
    """
    if is_loopback(host):
        return read_only, None
    return True, (
        f"{host!r} is not a loopback address: the dashboard is reachable from other hosts "
        "without authentication, so it serves read-only"
    )


#: The notice a read-only dashboard adds to every HTML page, so that people know before a
#: change is refused.
READ_ONLY_BANNER = (
    '<div id="tuner-read-only" style="position:fixed;bottom:0;left:0;right:0;z-index:9999;'
    'padding:4px 8px;background:#fff3cd;color:#664d03;font:13px sans-serif;text-align:center">'
    "Read-only dashboard: deleting, renaming, telling trials and editing notes are refused.</div>"
)


class ReadOnly:
    """WSGI middleware that passes GET and HEAD requests to ``app`` and refuses every other
    method with ``403 Forbidden`` and a JSON body ``{"reason": ...}`` (:data:`READ_ONLY_REASON`),
    before ``app`` sees the request. HTML pages get :data:`READ_ONLY_BANNER` before ``</body>``."""

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS:
            body = json.dumps({"reason": READ_ONLY_REASON}).encode()
            start_response(
                "403 Forbidden",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        response: dict[str, Any] = {}

        def capture(status, headers, exc_info=None):
            response.update(status=status, headers=headers)
            return start_response(status, headers, exc_info) if not _is_html(headers) else None

        chunks = self.app(environ, capture)
        if not response:  # start_response is called on the first iteration
            chunks = list(chunks)
        if not _is_html(response["headers"]):
            return chunks
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        body = body.replace(b"</body>", READ_ONLY_BANNER.encode() + b"</body>", 1)
        # The page is no longer the file its length, validators and byte ranges describe.
        stale = ("content-length", "etag", "last-modified", "accept-ranges")
        headers = [(k, v) for k, v in response["headers"] if k.lower() not in stale]
        start_response(response["status"], [*headers, ("Content-Length", str(len(body)))])
        return [body]


#: Write routes that name a study (``/api/studies/<id>...``, ``/api/artifacts/<id>...``) or a
#: trial (``/api/trials/<id>/...``); the study's note is not guarded.
_STUDY_ROUTE = re.compile(r"^/api/(?:studies|artifacts)/(\d+)(?:/|$)")
_TRIAL_ROUTE = re.compile(r"^/api/trials/(\d+)/")
_NOTE_ROUTE = re.compile(r"/note$")


class SealGuard:
    """WSGI middleware that refuses, with ``403 Forbidden`` and a JSON ``{"reason": ...}``,
    every change through optuna-dashboard to a sealed study but its notes: rename (a copy to
    a new name and a delete of the original), delete, telling or skipping trials, trial user
    attributes, artifact uploads and deletions."""

    def __init__(self, app, storage: optuna.storages.RDBStorage) -> None:
        self.app, self.storage = app, storage

    def _sealed_study(self, path: str) -> str | None:
        study_id = None
        if match := _STUDY_ROUTE.match(path):
            study_id = int(match.group(1))
        elif match := _TRIAL_ROUTE.match(path):
            query = "SELECT study_id FROM trials WHERE trial_id = :trial_id"
            with self.storage.engine.connect() as conn:
                study_id = conn.execute(
                    sqlalchemy.text(query), {"trial_id": int(match.group(1))}
                ).scalar()
        if study_id is None:
            return None
        try:
            name = self.storage.get_study_name_from_id(study_id)
        except KeyError:
            return None
        return name if holdout.is_sealed(self.storage, name) else None

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method not in READ_METHODS and not _NOTE_ROUTE.search(path):
            name = self._sealed_study(path)
            if name is not None:
                reason = (
                    f"study {name!r} is sealed: its test split was evaluated by `tuner study "
                    "finalize`, so it cannot be renamed, deleted or changed (a renamed copy would "
                    "lose the seal); a new study on the same data needs `tuner study finalize NEW "
                    "--reuse-test`, which counts the extra look at the test rows"
                )
                body = json.dumps({"reason": reason}).encode()
                start_response(
                    "403 Forbidden",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                )
                return [body]
        return self.app(environ, start_response)


def _is_html(headers: list[tuple[str, str]]) -> bool:
    return any(k.lower() == "content-type" and v.startswith("text/html") for k, v in headers)


class StudiesArtifactStore:
    """Optuna's artifact store protocol over the artifact folders of all studies in a storage.

    Each study records its own folder (:func:`tuner.schema.artifact_folder`), and optuna-dashboard
    asks one store for an artifact id without naming the study: reads look in every study's
    folder (resolved as :func:`tuner.storage.artifact_dir` does, so ``--artifact-dir`` and
    ``$TUNER_ARTIFACT_DIR`` override them all) and in the storage's default folder. Writes (an
    upload through a writable dashboard) go to the override, else the default folder.
    """

    def __init__(
        self, url: str, storage: optuna.storages.BaseStorage, override: str | None = None
    ) -> None:
        self.url, self.storage, self.override = url, storage, override

    def folders(self) -> list[Path]:
        """The folders searched, the one written to first; resolved per call, so that studies
        created while the dashboard runs are found."""
        folders = [storage_module.artifact_dir(self.url, self.override)]
        for study in self.storage.get_all_studies():
            folder = storage_module.artifact_dir(
                self.url, self.override, schema.artifact_folder(study)
            )
            if folder not in folders:
                folders.append(folder)
        return folders

    def open_reader(self, artifact_id: str):
        for folder in self.folders():
            if (folder / artifact_id).is_file():
                return FileSystemArtifactStore(folder).open_reader(artifact_id)
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the folders {self.folders()}")

    def write(self, artifact_id: str, content_body) -> None:
        folder = self.folders()[0]
        folder.mkdir(parents=True, exist_ok=True)
        FileSystemArtifactStore(folder).write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        for folder in self.folders():
            if (folder / artifact_id).is_file():
                FileSystemArtifactStore(folder).remove(artifact_id)
                return
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the folders {self.folders()}")


def dashboard_app(url: str, *, artifact_dir: str | None = None, read_only: bool = False):
    """optuna-dashboard's WSGI app over the storage ``url`` and its studies' artifact folders
    (``artifact_dir`` overrides them), wrapped in :class:`ReadOnly` if ``read_only``, else in
    :class:`SealGuard`.

    Raises:
        TunerError: the storage cannot be opened, or it is a SQLite file that does not exist
            (serving it would create an empty database).
    """
    storage = storage_module.get_existing_storage(url)
    import optuna_dashboard

    app = optuna_dashboard.wsgi(
        storage, artifact_store=StudiesArtifactStore(url, storage, artifact_dir)
    )
    return ReadOnly(app) if read_only else SealGuard(app, storage)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code="-", size="-") -> None:
        pass  # no access log: a page load makes dozens of requests; errors are still logged


def make_server(
    url: str, *, host: str, port: int, artifact_dir: str | None = None, read_only: bool = False
) -> WSGIServer:
    """A bound (not yet serving) HTTP server of :func:`dashboard_app` on ``host``:``port``.

    One request at a time, like optuna-dashboard's own ``run_server`` (wsgiref).

    Raises:
        TunerError: the storage cannot be opened, or the address cannot be bound (in use,
            not an address of this host).
    """
    app = dashboard_app(url, artifact_dir=artifact_dir, read_only=read_only)

    class Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        return _make_wsgi_server(host, port, app, server_class=Server, handler_class=_QuietHandler)
    except (OSError, OverflowError) as e:
        raise TunerError(
            f"cannot serve the dashboard on {host}:{port}: {getattr(e, 'strerror', None) or e}; "
            "pick another --port or --host"
        ) from None


def dashboard_url(host: str, port: int) -> str:
    """The address of the dashboard page served on ``host``:``port``."""
    return f"http://[{host}]:{port}/dashboard" if ":" in host else f"http://{host}:{port}/dashboard"


def serve_forever(server: WSGIServer) -> None:
    """Serve until SIGINT or SIGTERM, then close the socket and return."""

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()

"""Stopping a process that runs trials on SIGINT (Ctrl-C) or SIGTERM (a scheduler, ``kill``).

A signal is recorded, and :class:`KeyboardInterrupt` is raised only where it is safe: inside a
trial's training (:func:`interruptible`), so that Optuna marks the running trial failed, and
at the points that call :func:`check` (before a trial is created, after each trial, between
epochs); a second Ctrl-C raises at once. Raised anywhere else, in the middle of a database
write or a garbage collector's callback, the interrupt could be swallowed ("Exception ignored
in ... KeyboardInterrupt") and the process would go on running trials. Finished trials stay;
the same command resumes.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_interrupted = False
_raise_now = False


def check() -> None:
    """Raise :class:`KeyboardInterrupt` if a signal has arrived."""
    if _interrupted:
        raise KeyboardInterrupt


def _on_signal(signum, frame) -> None:
    global _interrupted
    if not _interrupted:
        _interrupted = True
    elif signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait
        raise KeyboardInterrupt
    if _raise_now:
        raise KeyboardInterrupt


def _unraisable(hook):
    def quiet_hook(unraisable) -> None:
        # The interrupt is recorded and raised again at the next check(): nothing is lost.
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    return quiet_hook


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM stop trials as described above; one recorded
    before the block (:func:`record_signals`) stops them at the first :func:`check`. Both
    handlers are set because a process started in the background of a script inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt."""
    global _interrupted, _raise_now
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    raise_before, _raise_now = _raise_now, False
    hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = hook
        _raise_now = raise_before
        _interrupted = False  # a later run in this process starts afresh


def record_signals(*, raise_at_once: bool) -> None:
    """From now on SIGINT and SIGTERM are recorded, so that the next :func:`check` raises
    :class:`KeyboardInterrupt` (inside :func:`stop_on_signals` too); with ``raise_at_once``
    they also raise it where they land, as Python's own SIGINT handler does. For a process
    starting up: a ``tuner`` command (``raise_at_once``: a Ctrl-C that a finalizer swallows
    while it imports or opens its study still stops its run, at the first check) and a worker
    of ``start --workers`` (never raised: :func:`tuner.workers.unblock_signals`)."""
    global _raise_now
    _raise_now = raise_at_once
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    sys.unraisablehook = _unraisable(sys.unraisablehook)


def received() -> bool:
    """Whether a signal has been recorded (and not yet ended a run)."""
    return _interrupted


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A signal raises :class:`KeyboardInterrupt` at once while the block runs (pure
    computation, such as a trial's mini-batch steps)."""
    global _raise_now
    check()
    _raise_now = True
    try:
        yield
    finally:
        _raise_now = False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside :func:`interruptible`: a signal waits until the block ends (a database write,
    such as reporting an epoch's score), then raises."""
    global _raise_now
    outer, _raise_now = _raise_now, False
    try:
        yield
    finally:
        _raise_now = outer
    check()


class HeldSignals:
    """SIGINT and SIGTERM held back from :meth:`hold` to :meth:`release`, which raises
    :class:`KeyboardInterrupt` if one came meanwhile.

    For a step that must not be cut between two points that are not one block, such as the
    commit of a test-split claim and the ``try`` that releases the claim on any error. Outside
    the main thread (where Python runs signal handlers) it holds nothing.
    """

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._received: list[int] = []

    def _record(self, signum: int, frame: object) -> None:
        self._received.append(signum)

    def hold(self) -> None:
        """From now on a SIGINT or SIGTERM is recorded, not acted on."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in SIGNALS}

    def release(self, *, deliver: bool = True) -> None:
        """Put the handlers back; with ``deliver``, raise :class:`KeyboardInterrupt` if a
        signal was held.

        Raises:
            KeyboardInterrupt: a signal came while held (and ``deliver``).
        """
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous = {}
        if deliver and self._received:
            self._received.clear()
            raise KeyboardInterrupt

"""``python -m tuner`` and the ``tuner`` command (:func:`run`)."""

import sys

from tuner import interrupt


def run() -> None:
    """Record SIGINT and SIGTERM before anything else (:func:`tuner.interrupt.record_signals`),
    then import the CLI (which takes a second or more) and run it: a Ctrl-C while tuner starts
    up ends it with one line and exit code 130, and one that a finalizer swallowed still stops
    the run at its first check. A worker of ``start --workers`` starts with both signals
    blocked and records them without raising (:func:`tuner.workers.unblock_signals`)."""
    interrupt.record_signals(raise_at_once=True)
    try:
        from tuner.workers import parent_pid, unblock_signals

        if parent_pid() is not None:
            unblock_signals()
        from tuner.cli import main
    except KeyboardInterrupt:
        print("tuner: interrupted while starting up; nothing was changed", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()

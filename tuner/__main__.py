"""``python -m tuner``: the same as the ``tuner`` command."""

from tuner.workers import quiet_exit_on_interrupt

quiet_exit_on_interrupt()  # a worker of `start --workers`, interrupted while it starts up

from tuner.cli import main  # noqa: E402  (after the handler: this import takes seconds)

main()

"""User-facing failures, and the stop the operator asks for."""


class SensorError(Exception):
    """A failure the user can fix: the message says what is wrong and what to
    do, in one line. The CLI prints it without a traceback and exits non-zero."""

    exit_code = 2


class Shutdown(BaseException):
    """A stop the operator asked for (SIGTERM, SIGINT), raised as an exception
    so every ``finally:`` runs.  The one exception rule code cannot turn into
    a rule error: what a rule raises itself (KeyboardInterrupt, SystemExit,
    CancelledError...) is caught and counted, this goes through."""

"""User-facing failures."""


class SensorError(Exception):
    """A failure the user can fix: the message says what is wrong and what to
    do, in one line. The CLI prints it without a traceback and exits non-zero."""

    exit_code = 2

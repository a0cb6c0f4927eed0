"""Structured logs: JSON lines on stdout (one line per unit of work, never
one per packet), a console renderer on a TTY, or JSON lines appended to a
file (``--log-file``) that ``reopen()`` opens again after logrotate renamed
it (the sensor calls it from its loop after SIGUSR1).

Every stdlib logger goes through the same handler and renderer: pyroute2's
(``logging.getLogger("pyroute2...")``), Python's own warnings
(``logging.captureWarnings``) and anything else a library logs.  bcc has no
stdlib logger: what it says comes from its C library (clang, libbpf) straight
to file descriptor 2, i.e. stderr (the journal under systemd).
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

from sensor.errors import SensorError
from sensor.files import open_private

__all__ = ["configure", "reopen", "ReopenableFileHandler"]


class ReopenableFileHandler(logging.StreamHandler):
    """Append to ``path``; ``reopen()`` closes it and opens ``path`` again
    (a new file once the old one was renamed; created 0600, sensor.files).
    Each record is flushed."""

    def __init__(self, path):
        self.path = os.fspath(path)
        super().__init__(self._open())

    def _open(self):
        try:
            return open_private(self.path, "a")
        except OSError as exc:
            raise SensorError(f"cannot write the log file {self.path}: {exc.strerror or exc}") from None

    def reopen(self) -> None:
        """Open the path again; on failure keep writing to the old file."""
        self.acquire()
        try:
            new = open_private(self.path, "a")
            old, self.stream = self.stream, new
            try:
                old.close()
            except OSError:
                pass
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            try:
                if self.stream is not None:
                    self.stream.close()
            finally:
                self.stream = None
                super().close()
        finally:
            self.release()

    def emit(self, record) -> None:
        if self.stream is not None:
            super().emit(record)


def configure(level: str = "info", json: bool | None = None, stream=None, file=None) -> None:
    """Set up structlog and the stdlib root logger.

    ``file``: a path; logs are appended there (JSON unless ``json=False``)
    instead of ``stream`` (default stdout; console rendering when it is a TTY
    and ``json`` is None)."""
    if file is not None:
        handler = ReopenableFileHandler(file)
        if json is None:
            json = True
    else:
        stream = stream or sys.stdout
        if json is None:
            json = not stream.isatty()
        handler = logging.StreamHandler(stream)
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,
    )
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, ReopenableFileHandler):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)


def reopen() -> list[str]:
    """Reopen every log file of the root logger (after logrotate moved it);
    returns their paths.  Raises OSError when one cannot be opened (the old
    file is then kept)."""
    paths = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
            paths.append(handler.path)
    return paths

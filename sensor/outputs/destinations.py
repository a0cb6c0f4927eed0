"""Where an output's lines go: a file, standard output, syslog or a Unix socket.

A destination takes whole lines (``write_line(text)``, the newline added
here) and has the output's life cycle: ``reopen()`` (SIGUSR1, after
logrotate renamed the file), ``flush()``, ``close()``.  ``name`` says what
it is, for the "files reopened" log line and errors.

* ``FileDestination``: appended to, created 0600 (``sensor.files``), each
  line flushed as it is written (as the native records always were);
  reopened at the same path; a file that cannot be opened again keeps the
  old one.
* ``StreamDestination``: an already open stream (standard output); never
  closed or reopened by us.
* ``SyslogDestination``: one syslog message a line (the ``syslog`` module:
  the local syslog daemon's socket), priority ``info``, the facility and the
  ident given (Suricata's EVE ``filetype: syslog``: facility ``local5``).
* ``UnixSocketDestination``: a Unix socket, ``dgram`` (one datagram a line,
  Suricata's ``unix_dgram``) or ``stream`` (Suricata's ``unix_stream``).
  Nobody listening, a full buffer or a reader gone never stop the sensor:
  the line is dropped and counted (``dropped``), and the socket is
  connected again on the next line (at most once a second) and on
  ``reopen()``.

``LineOutput`` is the base of the outputs that write one line a record to a
destination (native, eve): the life cycle passed on to it, the count.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time

from sensor.config import SOCKET_TYPES, SYSLOG_FACILITIES as FACILITIES
from sensor.errors import SensorError
from sensor.files import open_private

__all__ = ["LineOutput", "FileDestination", "StreamDestination", "SyslogDestination", "UnixSocketDestination",
           "DestinationError"]


class DestinationError(SensorError):
    """A destination that cannot be opened at start: one line saying which and why."""


class FileDestination:
    reopens = True

    def __init__(self, path, mode: str = "a"):
        """``mode`` "a": appended to; "w": emptied first (the next ``reopen`` appends)."""
        self.path = os.fspath(path)
        self.name = self.path
        self.handle = self._open(mode)

    def _open(self, mode: str = "a"):
        try:
            return open_private(self.path, mode)
        except OSError as exc:
            raise DestinationError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write_line(self, text: str) -> None:
        self.handle.write(text + "\n")
        self.handle.flush()             # a whole line for tail -f, Filebeat, a crash

    def reopen(self) -> None:
        """Open the path again (a new file after a rename); DestinationError keeps the old one."""
        new = self._open()
        old, self.handle = self.handle, new
        old.close()

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class StreamDestination:
    reopens = False

    def __init__(self, stream=None, name: str = "stdout"):
        self.stream = stream if stream is not None else sys.stdout
        self.name = name

    def write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def reopen(self) -> None:
        """Nothing to reopen: the stream is the caller's."""

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()


class SyslogDestination:
    reopens = True

    def __init__(self, facility: str = "local5", ident: str = "smtp-sensor"):
        import syslog

        if facility not in FACILITIES:
            raise DestinationError(f"syslog facility must be one of {', '.join(FACILITIES)}, not {facility!r}")
        self._syslog = syslog
        self.name = f"syslog:{facility}"
        self.facility = getattr(syslog, f"LOG_{facility.upper()}")
        self.ident = ident
        syslog.openlog(ident, syslog.LOG_PID, self.facility)

    def write_line(self, text: str) -> None:
        self._syslog.syslog(self.facility | self._syslog.LOG_INFO, text)

    def reopen(self) -> None:
        self._syslog.openlog(self.ident, self._syslog.LOG_PID, self.facility)

    def flush(self) -> None:
        """Each message is sent when written."""

    def close(self) -> None:
        self._syslog.closelog()


class UnixSocketDestination:
    reopens = True
    #: seconds between two attempts to connect while nobody listens
    RETRY_S = 1.0

    def __init__(self, path, socket_type: str = "dgram", clock=time.monotonic):
        if socket_type not in SOCKET_TYPES:
            raise DestinationError(f"socket_type must be one of {', '.join(SOCKET_TYPES)}, not {socket_type!r}")
        self.path = os.fspath(path)
        self.name = f"unix_{socket_type}:{self.path}"
        self.kind = socket.SOCK_DGRAM if socket_type == "dgram" else socket.SOCK_STREAM
        self.clock = clock
        self.sock = None
        self.dropped = 0
        self._next_try = 0.0
        self._connect()

    def _connect(self) -> bool:
        self._next_try = self.clock() + self.RETRY_S
        sock = socket.socket(socket.AF_UNIX, self.kind | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return False
        sock.setblocking(False)             # a slow reader costs lines, never the loop's time
        self.sock = sock
        return True

    def _drop_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def write_line(self, text: str) -> None:
        if self.sock is None and (self.clock() < self._next_try or not self._connect()):
            self.dropped += 1
            return
        data = (text + "\n").encode("utf-8", "surrogateescape")
        try:
            if self.kind == socket.SOCK_DGRAM:
                self.sock.send(data)
            else:
                sent = self.sock.send(data)
                if sent < len(data):        # its rest cannot follow later without tearing the
                    self._drop_socket()     # next line: closed, the next connection starts whole
                    self.dropped += 1
        except OSError as exc:
            self.dropped += 1
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EMSGSIZE):
                self._drop_socket()         # the reader went away: connect again later

    def reopen(self) -> None:
        self._drop_socket()
        self._connect()

    def flush(self) -> None:
        """Each line is sent when written."""

    def close(self) -> None:
        self._drop_socket()


class LineOutput:
    """An output writing one line a record to ``destination``: subclasses
    define ``line(record)``; ``written`` counts the records given to it."""

    def __init__(self, destination):
        self.destination = destination
        self.written = 0

    @property
    def name(self) -> str:
        return self.destination.name

    def line(self, record: dict) -> str:
        raise NotImplementedError

    def write(self, record: dict) -> None:
        self.destination.write_line(self.line(record))
        self.written += 1

    __call__ = write

    def reopen(self) -> None:
        self.destination.reopen()

    def flush(self) -> None:
        self.destination.flush()

    def close(self) -> None:
        self.destination.close()

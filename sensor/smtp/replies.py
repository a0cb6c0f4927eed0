"""Server replies: reading them from the server's octets, their syntax,
enhanced status codes and EHLO extensions.

:class:`ReplyReader` frames the server's direction into lines and assembles
them into complete replies.  The functions parse already-split lines; they
keep no state but a bounded cache of parsed EHLO extension lists (most
servers send one of a few, and one is kept per open flow: bench/bench_memory.py).
"""

from __future__ import annotations

import re

from sensor.smtp import anomalies as A
from sensor.smtp.events import SERVER, SmtpAnomaly
from sensor.smtp.lines import LineBuffer

__all__ = ["ReplyReader", "parse_reply_line", "parse_enhanced", "parse_ehlo_keywords"]

# RFC 5321 4.2: Reply-code [ SP / "-" text ].  We accept any code 200-599.
_REPLY_RE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?\Z", re.S)
_REPLY_START = re.compile(rb"[2-5][0-9][0-9](?:[ -]|\r?\Z)")
_NONE = ()   # ReplyReader._lines between replies (a list only while a reply is read)


class ReplyReader(LineBuffer):
    """The server's direction: its lines (a LineBuffer of ``SmtpLimits.reply_line``
    octets), assembled into complete replies.

    A reply is a tuple (code, enhanced, lines, multiline): the code, the RFC
    3463 enhanced code of its first line, the text of its lines (at most
    ``SmtpLimits.reply_lines``: more are counted and dropped) and whether it
    had several.  Line-level problems are anomalies (MAX_REPLY_LINE_LEN_EXCEEDED,
    TRUNCATED_LINE past ``buffer_limit`` octets, INVALID_REPLY, REPLY_CODE_MISMATCH,
    REPLY_TOO_MANY_LINES); a line that is not a reply line is left out, a
    reply whose code is not in Suricata's table is INVALID_REPLY and kept.
    """

    __slots__ = ("_max_lines", "_buffer_limit", "_code", "_lines", "_dropped")

    def __init__(self, line_limit: int, max_lines: int, buffer_limit: int = 4096) -> None:
        super().__init__(line_limit)
        self._max_lines = max_lines
        self._buffer_limit = buffer_limit
        self._code: int | None = None      # code of the reply being read
        self._lines: list[str] | tuple = _NONE
        self._dropped = 0

    @property
    def in_reply(self) -> bool:
        """A reply was begun and is not complete (a partial line or its first lines)."""
        return self.partial or self._code is not None

    def next_reply(self, ts: float, out: list) -> tuple | None:
        """The next complete reply in the octets fed so far, or None."""
        while True:
            got = self.take_line()
            if got is None:
                return None
            line, _bare_lf, truncated = got
            if truncated:
                out.append(SmtpAnomaly(ts, A.MAX_REPLY_LINE_LEN_EXCEEDED, SERVER,
                                       f"reply line longer than {self._limit} octets"))
                if self.overlong > self._buffer_limit:
                    out.append(SmtpAnomaly(ts, A.TRUNCATED_LINE, SERVER,
                                           f"reply line of {self.overlong} octets, longer than "
                                           f"{self._buffer_limit}"))
            parsed = parse_reply_line(line)
            if parsed is None:
                out.append(SmtpAnomaly(ts, A.INVALID_REPLY, SERVER, f"not a reply line: '{A.excerpt(line)}'"))
                continue
            code, last, text = parsed
            if self._code is None:
                self._code = code
                self._lines = [text]
                self._dropped = 0
            else:
                if code != self._code:
                    out.append(SmtpAnomaly(ts, A.REPLY_CODE_MISMATCH, SERVER,
                                           f"code {code} inside a multi-line {self._code} reply"))
                if len(self._lines) < self._max_lines:
                    self._lines.append(text)
                else:
                    self._dropped += 1
            if not last:
                continue
            if self._dropped:
                out.append(SmtpAnomaly(ts, A.REPLY_TOO_MANY_LINES, SERVER,
                                       f"{self._dropped} lines past {self._max_lines} dropped"))
            code = self._code
            if code not in A.REPLY_CODES:
                out.append(SmtpAnomaly(ts, A.INVALID_REPLY, SERVER, f"reply code {code} is not in Suricata's table"))
            lines = tuple(self._lines)
            self._code = None
            self._lines = _NONE
            return code, parse_enhanced(code, lines[0]), lines, len(lines) > 1 or self._dropped > 0

    def lost(self, ts: float, out: list) -> None:
        """Server octets were lost after those fed: the reply being read is
        dropped, reading resumes at the next line that looks like a reply."""
        if self.in_reply:
            out.append(SmtpAnomaly(ts, A.INCOMPLETE_LINE, SERVER, "reply cut by a gap"))
        self.gap(_looks_like_reply)
        self._code = None
        self._lines = _NONE


def _looks_like_reply(line: bytes) -> bool:
    return _REPLY_START.match(line) is not None
# RFC 3463: class "." subject "." detail, class 2, 4 or 5, 1-3 digits each.
_ENHANCED_RE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|\Z)")


def parse_reply_line(line: bytes) -> tuple[int, bool, str] | None:
    """Return (code, last_line, text) for a reply line without its CRLF, or None if invalid.

    ``last_line`` is False for a continuation line (``250-...``).  A line made
    of the code alone counts as a last line with empty text.
    """
    m = _REPLY_RE.match(line)
    if m is None:
        return None
    text = (m.group(3) or b"").decode("utf-8", "backslashreplace")
    return int(m.group(1)), m.group(2) != b"-", text


def parse_enhanced(code: int, text: str) -> str | None:
    """The RFC 3463 enhanced code at the start of ``text`` ("5.7.1"), if its class matches ``code``."""
    m = _ENHANCED_RE.match(text)
    if m is None or m.group(1) != str(code // 100):
        return None
    return m.group(0)


def parse_ehlo_keywords(lines: tuple[str, ...], first: str = "") -> dict:
    """Parse the extension lines of a positive EHLO reply (all lines but the
    first); ``first``, the first line (the server's name), counts for
    PIPELINING when that is its first word (``250-PIPELINING`` as the reply's
    first line, which Suricata honours too).

    Returns the keyword arguments of :class:`~sensor.smtp.events.ServerCapabilities`.
    Handles the obsolete ``AUTH=LOGIN PLAIN`` form too.  Equal extension lists
    (up to a bound) share one parsed result: its tuples and strings.
    """
    lines = tuple(lines)
    caps = _EHLO_CACHE.get(lines)
    if caps is None:
        caps = _parse_ehlo_keywords(lines)
        if len(_EHLO_CACHE) < _EHLO_CACHE_MAX and sum(map(len, lines)) <= _EHLO_CACHE_CHARS:
            _EHLO_CACHE[lines] = caps
    caps = dict(caps)
    if first[:10].upper() == "PIPELINING" and first[10:11] in ("", " "):
        caps["pipelining"] = True
    return caps


_EHLO_CACHE: dict = {}         # extension lines -> parsed keyword arguments
_EHLO_CACHE_MAX = 1024         # entries
_EHLO_CACHE_CHARS = 1024       # longer extension lists are not kept


def _parse_ehlo_keywords(lines: tuple[str, ...]) -> dict:
    caps = dict(pipelining=False, chunking=False, starttls=False, size=None,
                eightbitmime=False, smtputf8=False, auth_mechanisms=(),
                keywords=tuple(lines))
    mechs: list[str] = []
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        key = parts[0].upper()
        args = parts[1:]
        if key.startswith("AUTH="):
            args = [key[5:]] + args
            key = "AUTH"
        if key == "PIPELINING":
            caps["pipelining"] = True
        elif key == "CHUNKING":
            caps["chunking"] = True
        elif key == "STARTTLS":
            caps["starttls"] = True
        elif key == "8BITMIME":
            caps["eightbitmime"] = True
        elif key == "SMTPUTF8":
            caps["smtputf8"] = True
        elif key == "SIZE":
            size = 0
            if args and args[0].isdigit() and len(args[0]) <= 20:
                size = int(args[0])
            caps["size"] = size
        elif key == "AUTH":
            for mech in args:
                mech = mech.upper()
                if mech and mech not in mechs:
                    mechs.append(mech)
    caps["auth_mechanisms"] = tuple(mechs)
    return caps

"""Server reply lines: syntax, enhanced status codes, EHLO extensions.

Pure functions on already-split lines; no state but a bounded cache of
parsed EHLO extension lists (most servers send one of a few, and one is kept
per open flow: bench/bench_memory.py).
"""

from __future__ import annotations

import re

__all__ = ["parse_reply_line", "parse_enhanced", "parse_ehlo_keywords"]

# RFC 5321 4.2: Reply-code [ SP / "-" text ].  We accept any code 200-599.
_REPLY_RE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?\Z", re.S)
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


def parse_ehlo_keywords(lines: tuple[str, ...]) -> dict:
    """Parse the extension lines of a positive EHLO reply (all lines but the first).

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
    return dict(caps)


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

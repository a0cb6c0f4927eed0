"""URLs in decoded text, found as Suricata finds them (``rust/src/mime/smtp.rs``):
each configured scheme followed by ``://``, case-insensitive, anywhere in the
text; the URL runs to the first space, tab, quote, apostrophe, ``<``, ``>`` or
``]`` and, here, also to a line end (Suricata's lines keep their CRLF in the
URL; ours never carry it).  Suricata's defaults: ``extract-urls-schemes:
[http]``, ``log-url-scheme: no`` (the logged URL lacks ``http://``).

Text is processed up to its last line end; the rest (at most 8192 octets, as
Suricata's decoded-line buffer) waits for the next piece, so a URL cut by a
chunk or a base64 quad is found whole.
"""

from __future__ import annotations

import re

__all__ = ["UrlFinder", "DEFAULT_SCHEMES"]

DEFAULT_SCHEMES = ("http",)
_CARRY = 8192


def _pattern(schemes) -> re.Pattern:
    alts = "|".join(re.escape(s.encode("ascii")).decode("ascii") for s in schemes)
    return re.compile(rb"(?i)(?:" + alts.encode("ascii") + rb")://[^ \t\"'<>\]\r\n]*")


class UrlFinder:
    __slots__ = ("_rx", "_tail", "found")

    def __init__(self, rx: re.Pattern) -> None:
        self._rx = rx
        self._tail = b""
        self.found: list[bytes] = []

    @staticmethod
    def compile(schemes) -> re.Pattern:
        return _pattern(schemes)

    def feed(self, text: bytes) -> None:
        if self._tail:
            text = self._tail + text
            self._tail = b""
        cut = text.rfind(b"\n") + 1
        if cut < len(text) and len(text) - cut <= _CARRY:
            self._tail = text[cut:]
            text = text[:cut]
        if text and b"://" in text:
            self.found.extend(self._rx.findall(text))

    def finish(self) -> None:
        tail, self._tail = self._tail, b""
        if tail and b"://" in tail:
            self.found.extend(self._rx.findall(tail))

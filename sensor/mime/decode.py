"""Incremental content-transfer decoders (RFC 2045 6.7, 6.8).

Each is fed spans of the encoded body that end at a line end (or, for a line
longer than ``MimeLimits.line_buffer``, anywhere) and returns decoded octets;
``bad`` says whether the input broke the encoding's syntax the way Suricata's
MIME_INVALID_BASE64 / MIME_INVALID_QP mean.  The work is done by ``binascii``
(C): no Python loop per octet or per line.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["Base64Decoder", "QuotedPrintableDecoder"]

_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_SPACE = b" \t\r\n"
# a run of padding followed by more data: base64 texts joined end to end
_PAD_THEN_DATA = re.compile(rb"(?<==)(?=[^=])")
# "=" not followed by two upper-case hex digits or the end of the line
_BAD_QP = re.compile(rb"=(?![0-9A-F]{2}|\r?\n|\Z)")


class Base64Decoder:
    __slots__ = ("_rem", "bad")

    def __init__(self) -> None:
        self._rem = b""      # encoded characters short of a quad
        self.bad = False

    def decode(self, data, eols: int | None = None) -> bytes:
        """``eols``: the number of CR and LF octets in ``data``, when the
        caller knows it (lines of one length): then the usual text (whole
        quads, padding only at the end, nothing outside the alphabet) costs
        one pass of binascii, which skips the line ends itself; whether
        anything was skipped shows in the decoded length."""
        if eols is not None and not self._rem:
            chars = len(data) - eols
            if chars % 4 == 0:
                try:
                    out = binascii.a2b_base64(data)
                except binascii.Error:
                    out = None
                if out is not None:
                    tail = bytes(data[-6:]).rstrip(b"\r\n")
                    pad = len(tail) - len(tail.rstrip(b"="))
                    if len(out) == chars // 4 * 3 - pad:
                        return out
        if not isinstance(data, bytes):
            data = bytes(data)
        clean = data.translate(None, _SPACE)
        if clean.translate(None, _B64):
            self.bad = True
            clean = bytes(c for c in clean if c in _B64)
        if self._rem:
            clean = self._rem + clean
            self._rem = b""
        eq = clean.find(b"=")
        if eq >= 0 and clean[eq:].strip(b"="):      # data after padding: texts joined
            out = []
            for piece in _PAD_THEN_DATA.split(clean):
                out.append(self._quads(piece, last=False))
            return b"".join(out)
        return self._quads(clean, last=False)

    def _quads(self, clean: bytes, last: bool) -> bytes:
        cut = len(clean) - len(clean) % 4
        if cut != len(clean):
            if clean.endswith(b"=") or last:
                self.bad = True
                clean = clean[:cut]
            else:
                self._rem = clean[cut:]
                clean = clean[:cut]
        if not clean:
            return b""
        try:
            return binascii.a2b_base64(clean)
        except binascii.Error:
            self.bad = True
            return b""

    def finish(self) -> bytes:
        """The end of the body: characters short of a quad are an error."""
        if self._rem:
            self._rem = b""
            self.bad = True
        return b""


class QuotedPrintableDecoder:
    __slots__ = ("bad",)

    def __init__(self) -> None:
        self.bad = False

    def decode(self, data: bytes) -> bytes:
        if not self.bad and b"=" in data and _BAD_QP.search(data):
            self.bad = True
        return binascii.a2b_qp(data)

    def finish(self) -> bytes:
        return b""

"""A streaming MIME parser: one message's content in, entities, URLs, hashes
and anomalies out (sans-IO, like the SMTP dissector).

    parser = MimeParser(limits, trans_depth=1, fuid_of=lambda index: ...)
    events = parser.feed(chunk, ts)        # any number of times, any sizes
    events = parser.finish(ts, complete)   # the message ended
    parser.summary                         # MimeSummary, after finish

It is fed the message content (headers first) as the SMTP dissector delivers
it (``MailContent``), and holds at most one partial line (bounded by
``MimeLimits.line_buffer``), the header values it reads an entity by (bounded
by ``header_value``), the first ``head`` octets of the entity being decoded,
and an archive being listed (bounded by ``archive``): never the message.

Why not the standard library's ``email.feedparser``: it is incremental in
what it accepts, but it builds the whole message tree with every part's
payload as a string and hands it over only at ``close()``: memory grows with
the message, nothing comes out before the end, decoding happens afterwards
(``get_payload(decode=True)``, a full copy again), and it has none of the
limits above (no header-value, line, depth or entity bound).  Its line
splitting also runs a regular expression per line in Python.  What it is good
at, parsing one header field's parameters (RFC 2231 continuations and
charsets), is used here on the few bounded values that matter
(``sensor.mime.params``).  The splitter itself is ours: the body is scanned in
spans with ``bytes.find`` for lines starting with ``--`` (the only lines that
can be boundaries), and decoded and hashed a span at a time in C
(``binascii``, ``hashlib``), so the cost per octet stays near a copy.

Reading, as RFC 2045/2046 say and Suricata and Zeek do it:

* a header line ``name: value``, continued by lines starting with a space or
  tab; a line without a colon is skipped; an empty line ends the section;
* a boundary line is ``--boundary`` at the start of a line (what follows on
  the line is ignored, as Suricata and Zeek do), ``--boundary--`` ends the
  multipart; the line end before it belongs to the boundary, not to the part;
  a boundary of an enclosing multipart ends the inner ones too;
* ``message/rfc822`` entities are parsed as messages (their own headers and
  parts); ``multipart/digest`` parts default to ``message/rfc822``;
* every other entity is a leaf, decoded by its Content-Transfer-Encoding
  (base64, quoted-printable; anything else as is) and hashed (md5, sha1,
  sha256 of the decoded octets, as Zeek's files framework hashes files);
* ``body_md5`` is Suricata's ``email.body_md5``: the md5 of every octet after
  the blank line that ends the message's header section, as sent (boundaries,
  part headers and encoded text included), absent when the body is empty;
  ``subject_md5`` is Suricata's ``email.subject_md5``: the md5 of the first
  Subject value as sent (not RFC 2047 decoded), each continuation line added
  without its first character and without line ends, as Suricata unfolds it.
"""

from __future__ import annotations

import functools
import hashlib
import re

from sensor.mime.archive import zip_members
from sensor.mime.decode import Base64Decoder, QuotedPrintableDecoder
from sensor.mime.events import Attachment, EntityData, EntityStart, MimeSummary, Url
from sensor.mime.params import parse_entity_headers
from sensor.mime.sniff import sniff
from sensor.mime.urls import UrlFinder
from sensor.smtp import anomalies as A
from sensor.smtp.events import CLIENT, SmtpAnomaly
from sensor.smtp.limits import MimeLimits

__all__ = ["MimeParser", "HASHES"]

#: the hashes of every entity's decoded octets, by default (Zeek's hash-all-files)
HASHES = ("md5", "sha1", "sha256")
_HASHERS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}

_HEADERS, _BODY = 0, 1
_LEAF, _MULTIPART, _MESSAGE = 0, 1, 2
_FIELDS = (b"content-type", b"content-disposition", b"content-transfer-encoding")
# a whole header section at once (_header_block): the fields read, with their
# continuation lines; every header, with its continuation lines
_WANTED = re.compile(rb"^(content-type|content-disposition|content-transfer-encoding|subject):"
                     rb"([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.M | re.I)
_HEADER = re.compile(rb"^[^ \t\r\n][^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", re.M)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")


@functools.lru_cache(maxsize=8)
def _long_name(limit: int) -> re.Pattern:
    """A header line whose name is longer than ``limit`` octets."""
    return re.compile(rb"^[^ \t\r\n:][^\r\n:]{%d,}:" % limit, re.M)


def _section_end(buf: bytes, pos: int) -> int:
    """Where the empty line ending the header section that starts at ``pos``
    begins; ``pos`` if it starts with one; -1 if it is not in ``buf``."""
    if buf.startswith(b"\n", pos) or buf.startswith(b"\r\n", pos):
        return pos
    i = buf.find(b"\n\r\n", pos)
    j = buf.find(b"\n\n", pos, i + 2 if i >= 0 else len(buf))
    if j >= 0:
        return j + 1
    return i + 1 if i >= 0 else -1


def _value_length(header: bytes) -> int:
    """The unfolded value length of one header with its continuation lines,
    as ``_header_line`` counts it."""
    first, *more = header.split(b"\n")
    first = first.rstrip(b"\r")
    colon = first.find(b":")
    if colon < 0:
        return 0
    return len(first[colon + 1:].lstrip(b" \t\r\n")) + sum(len(c.rstrip(b"\r")) for c in more)


def _longest_line(data: bytes) -> int:
    """Octets of the longest line of ``data``, its line end excluded."""
    return _lines(data)[0]


def _lines(data: bytes, a: int = 0, b: int | None = None) -> tuple[int, int | None]:
    """(octets of the longest line of ``data[a:b]``, its line end excluded;
    the number of CR and LF octets in it when its lines are all of one length
    and end alike, else None)."""
    if b is None:
        b = len(data)
    nl = data.find(b"\n", a, b)
    if nl < 0:
        return b - a, (0 if data.find(b"\r", a, b) < 0 else None)
    first = nl - a
    step = first + 1
    ends = data[nl:b:step]
    # lines of one length (base64, quoted-printable): every step-th octet is a
    # line end, and what follows the last one is a shorter line
    if ends.count(10) == len(ends):
        crlf = first > 0 and data[nl - 1] == 13
        if crlf and data[nl - 1:b:step].count(13) == len(ends):
            if data.find(b"\r", a + len(ends) * step, b) < 0:
                return first - 1, 2 * len(ends)
            return first - 1, None
        if not crlf:
            return first, (len(ends) if data.find(b"\r", a, b) < 0 else None)
    longest = max(map(len, data[a:b].split(b"\n")))
    if data.find(b"\r", a, b) >= 0:
        longest -= 1              # a CR before the LF is not part of the line (close enough)
    return longest, None


class _Part:
    """One entity being read: its header fields, then its body."""

    __slots__ = ("parent", "depth", "kind", "fields", "last", "vlen", "default_type",
                 "info", "boundary", "index", "fuid", "decoder", "encoded", "hashers", "open",
                 "size", "head", "archive", "urls", "qp", "b64")

    def __init__(self, parent, depth: int, default_type: str = "text/plain") -> None:
        self.parent = parent
        self.depth = depth
        self.kind = _LEAF
        self.fields: dict = {}
        self.last = None          # lower-case name of the field a continuation line extends
        self.vlen = 0             # unfolded length of the current header value
        self.default_type = default_type
        self.info = None
        self.boundary = None
        self.index = 0
        self.fuid = ""
        self.decoder = None
        self.encoded = False
        self.qp = False
        self.b64 = False
        self.urls = None
        self.archive = None
        self.hashers = ()
        self.open = False              # a leaf whose body is being read
        self.size = 0
        self.head = b""


class MimeParser:
    def __init__(self, limits: MimeLimits | None = None, *, trans_depth: int = 1,
                 fuid_of=None, url_rx=None, log_url_scheme: bool = False, body_md5: bool = True,
                 entity_data: bool = True, hashes=HASHES) -> None:
        self.limits = limits = limits or MimeLimits()
        self.trans_depth = trans_depth
        self._fuid_of = fuid_of or (lambda index: f"F{index}")
        self._url_rx = url_rx
        self._log_scheme = log_url_scheme
        self._buf = bytearray()
        self._mode = _HEADERS
        self._top = self._cur = _Part(None, 0)
        self._bounds: list = []          # (b"--" + boundary, multipart part), innermost last
        self._sol = True                 # the buffer starts at a line start
        self._pending = b""              # line end held until we know no boundary follows
        self._skip_eol = False           # a line longer than line_buffer: skip its rest
        self._failed = False
        self._parts = 1
        self._leaves = 0
        self._raised: set = set()
        self._out: list = []
        self._ts = 0.0
        self._md5 = None                 # body md5 (after the message's header section)
        self._want_md5 = False
        self._body_md5 = body_md5
        self._hashes = tuple((name, _HASHERS[name]) for name in hashes)
        #: emit EntityData (decoded content, for streamed attachment rules)
        self.entity_data = entity_data
        self._fresh = True               # no line of the current header section read yet
        self._long_name = _long_name(limits.header_name)
        self._body_bytes = 0
        self._subject = None             # Suricata-unfolded Subject of the message
        self._subject_cont = False
        self._fuids: list = []
        self._names: list = []
        self._urls: list = []
        self._urls_dropped = 0
        self._line_max = limits.line
        self.summary: MimeSummary | None = None

    # ------------------------------------------------------------ input
    def feed(self, data: bytes, ts: float) -> list:
        self._ts = ts
        if data:
            if self._md5 is not None:
                self._md5.update(data)
                self._body_bytes += len(data)
            self._feed(bytes(data))
        out, self._out = self._out, []
        return out

    def _feed(self, data: bytes) -> None:
        """Lines are read in place from ``data``; only a partial line at its
        end is kept (in ``_buf``), and completed by the next piece alone."""
        start = 0
        held = self._buf
        if held:
            i = data.find(b"\n")
            if i < 0 and len(held) + len(data) <= self.limits.line_buffer:
                held += data
                return
            cut = len(data) if i < 0 else i + 1
            held += data[:cut]
            line = bytes(held)
            held.clear()
            md5_before = self._md5
            pos = self._run(line, 0)
            if pos < len(line):
                held += line[pos:]
            if md5_before is None and self._md5 is not None and cut < len(data):
                rest = memoryview(data)[cut:]      # the headers ended in the line: hash what follows
                self._md5.update(rest)
                self._body_bytes += len(rest)
            if held:                               # still no line end (rare: a very long line)
                held += data[cut:]
                return
            start = cut
        pos = self._run(data, start)
        if pos < len(data):
            held += data[pos:]

    def finish(self, ts: float, complete: bool = True) -> list:
        """The message ended (``complete``: at its end marker, not at a
        connection's end); returns the last events; ``summary`` is set."""
        self._ts = ts
        buf = self._buf
        if buf and not self._failed and not self._skip_eol:
            rest = bytes(buf)
            if self._mode == _HEADERS:
                self._header_line(rest)
                if self._want_md5:
                    self._start_md5(b"")
            else:
                self._content(rest, boundary_follows=False)
        buf.clear()
        if self._pending:
            pend, self._pending = self._pending, b""
            cur = self._cur
            if cur.kind == _LEAF and cur.info is not None and not self._failed:
                self._write(cur, pend)
        self._close_to(None, complete=complete and not self._bounds)
        body_md5 = None
        if self._md5 is not None and self._body_bytes:
            body_md5 = self._md5.hexdigest()
        subject_md5 = hashlib.md5(self._subject).hexdigest() if self._subject is not None else None
        urls = self._urls[::-1]          # Suricata logs them last found first
        if not self._log_scheme:
            urls = [u[u.index("://") + 3:] for u in urls]
        self.summary = MimeSummary(ts, tuple(self._fuids), tuple(self._names), tuple(urls),
                                   body_md5, subject_md5, trans_depth=self.trans_depth)
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------ the loop
    def _run(self, buf: bytes, pos: int) -> int:
        """Read complete lines of ``buf`` from ``pos``; return where the unread part starts."""
        n = len(buf)
        limit = self.limits.line_buffer
        blocked = False
        while pos < n:
            if self._failed:
                self._check_lines(buf, pos, n, None)
                pos = n
                break
            if self._skip_eol:
                i = buf.find(b"\n", pos)
                if i < 0:
                    pos = n
                    break
                pos = i + 1
                self._skip_eol = False
                self._sol = True
                continue
            if self._mode == _HEADERS:
                if self._fresh and not blocked:
                    end = _section_end(buf, pos)
                    if end > pos:
                        self._header_block(buf[pos:end])
                        pos = end            # the empty line: below, next turn
                        continue
                    blocked = end < 0        # not in this piece: line by line
                i = buf.find(b"\n", pos)
                if i < 0:
                    if n - pos > limit:
                        self._header_line(buf[pos:])
                        self._skip_eol = True
                        pos = n
                    break
                self._header_line(buf[pos:i + 1])
                pos = i + 1
                if self._want_md5:
                    self._start_md5(memoryview(buf)[pos:])
            else:
                nxt = self._body(buf, pos, n)
                if nxt is None:
                    break
                pos = nxt
        return pos

    def _start_md5(self, rest) -> None:
        self._want_md5 = False
        if self._body_md5:
            self._md5 = hashlib.md5(rest)
            self._body_bytes = len(rest)

    def _header_block(self, block: bytes) -> None:
        """The lines of a whole header section (its empty line excluded), read
        as ``_header_line`` reads them one by one, with a few regular
        expressions instead of a Python step per line."""
        lim = self.limits
        raised = self._raised
        part = self._cur
        if len(block) > lim.line and A.MIME_LONG_LINE not in raised:
            longest = _longest_line(block)
            if longest > lim.line:
                self._anomaly(A.MIME_LONG_LINE, f"a line of {longest} octets (limit {lim.line})")
        if len(block) > lim.header_name and A.MIME_LONG_HEADER_NAME not in raised:
            m = self._long_name.search(block)
            if m is not None:
                self._anomaly(A.MIME_LONG_HEADER_NAME, f"a header name of {m.end() - m.start() - 1} octets "
                              f"(limit {lim.header_name})")
        if len(block) > lim.header_value and A.MIME_LONG_HEADER_VALUE not in raised:
            for m in _HEADER.finditer(block):
                if m.end() - m.start() > lim.header_value and _value_length(m.group(0)) > lim.header_value:
                    self._anomaly(A.MIME_LONG_HEADER_VALUE, f"a header value over {lim.header_value} octets")
                    break
        top = part is self._top
        for m in _WANTED.finditer(block):
            lname = m.group(1).lower()
            if lname == b"subject":
                if not top or self._subject is not None:
                    continue
            elif lname in part.fields:
                continue
            first, *more = m.group(2).split(b"\n")
            value = bytearray(first.rstrip(b"\r").lstrip(b" \t\r\n")[:lim.header_value])
            conts = [c.rstrip(b"\r") for c in more]
            if lname == b"subject":
                for c in conts:
                    room = lim.header_value - len(value)
                    if room > 0:
                        value += c[1:room + 1]
                self._subject = value
                continue
            for c in conts:
                room = lim.header_value - len(value)
                if room > 0:
                    value += c[:room]
            part.fields[lname] = value
        self._fresh = False

    # ------------------------------------------------------------ headers
    def _header_line(self, line: bytes) -> None:
        if line.endswith(b"\r\n"):
            content = line[:-2]
        elif line.endswith(b"\n"):
            content = line[:-1]
        else:
            content = line
        lim = self.limits
        if len(content) > lim.line:
            self._anomaly(A.MIME_LONG_LINE, f"a line of {len(content)} octets (limit {lim.line})")
        part = self._cur
        self._fresh = False
        if not content:
            self._end_headers(part)
            return
        first = content[0]
        if first == 0x20 or first == 0x09:
            part.vlen += len(content)
            if part.vlen > lim.header_value:
                self._anomaly(A.MIME_LONG_HEADER_VALUE, f"a header value over {lim.header_value} octets")
            name = part.last
            if name is not None:
                value = part.fields[name]
                room = lim.header_value - len(value)
                if room > 0:
                    value += content[:room]
            if self._subject_cont:
                room = lim.header_value - len(self._subject)
                if room > 0:
                    self._subject += content[1:room + 1]
            return
        self._subject_cont = False
        colon = content.find(b":")
        if colon < 0:
            part.last = None
            return
        name = content[:colon]
        value = content[colon + 1:].lstrip(b" \t\r\n")
        if len(name) > lim.header_name:
            self._anomaly(A.MIME_LONG_HEADER_NAME, f"a header name of {len(name)} octets (limit {lim.header_name})")
        part.vlen = len(value)
        if len(value) > lim.header_value:
            self._anomaly(A.MIME_LONG_HEADER_VALUE, f"a header value over {lim.header_value} octets")
            value = value[:lim.header_value]
        lname = name.lower()
        if lname in _FIELDS and lname not in part.fields:
            part.fields[lname] = bytearray(value)
            part.last = lname
        else:
            part.last = None
        if lname == b"subject" and part is self._top and self._subject is None:
            self._subject = bytearray(value)
            self._subject_cont = True

    def _end_headers(self, part: _Part) -> None:
        self._subject_cont = False
        self._fresh = True                 # the next header section (a part, a message) starts afresh
        if part is self._top:
            self._want_md5 = True
        fields = {k.decode("latin-1"): bytes(v) for k, v in part.fields.items()}
        info = part.info = parse_entity_headers(fields, part.default_type)
        part.fields = {}
        lim = self.limits
        ctype = info.content_type
        nested = ctype.startswith("multipart/") and info.boundary is not None
        message = ctype == "message/rfc822" and info.transfer_encoding in ("7bit", "8bit", "binary")
        if (nested or message) and part.depth >= lim.depth:
            self._anomaly(A.MIME_PARSE_FAILED, f"entities nested deeper than {lim.depth}: read as one")
            nested = message = False
        if nested:
            part.kind = _MULTIPART
            if len(info.boundary) > lim.boundary:
                self._anomaly(A.MIME_LONG_BOUNDARY,
                              f"a boundary of {len(info.boundary)} octets (limit {lim.boundary})")
            part.boundary = b"--" + info.boundary
            self._bounds.append((part.boundary, part))
            self._mode = _BODY          # the preamble
            self._sol = True
        elif message:
            part.kind = _MESSAGE
            child = self._new_part(part)
            if child is not None:
                self._cur = child
                self._mode = _HEADERS
        else:
            self._start_leaf(part)
            self._mode = _BODY
            self._sol = True

    def _new_part(self, parent: _Part, default_type: str = "text/plain"):
        self._parts += 1
        if self._parts > self.limits.entities:
            self._anomaly(A.MIME_PARSE_FAILED, f"more than {self.limits.entities} entities: "
                          "the rest of the message is not split")
            self._close_to(None, complete=False)
            self._failed = True
            return None
        return _Part(parent, parent.depth + 1, default_type)

    def _start_leaf(self, part: _Part) -> None:
        info = part.info
        lim = self.limits
        self._leaves += 1
        part.index = self._leaves
        part.fuid = self._fuid_of(part.index)
        self._fuids.append(part.fuid)
        name = info.filename
        if name is not None:
            if len(name) > lim.filename:
                self._anomaly(A.MIME_LONG_FILENAME, f"a file name of {len(name)} characters (limit {lim.filename})")
                name = info.filename = name[:lim.filename]
            self._names.append(name)
        enc = info.transfer_encoding
        if enc == "base64":
            part.decoder = Base64Decoder()
            part.encoded = part.b64 = True
        elif enc == "quoted-printable":
            part.decoder = QuotedPrintableDecoder()
            part.encoded = part.qp = True
        part.hashers = [(name, new()) for name, new in self._hashes]
        part.open = True
        part.size = 0
        part.head = b""
        if self._url_rx is not None and info.content_type.startswith("text/"):
            part.urls = UrlFinder(self._url_rx)
        self._out.append(EntityStart(self._ts, part.fuid, part.index, part.depth, info.content_type,
                                     name, info.disposition, enc, trans_depth=self.trans_depth))

    # ------------------------------------------------------------ bodies
    def _body(self, buf: bytearray, pos: int, n: int):
        """Read body lines from ``pos``; return where it stopped (a boundary
        switches to headers), or None to wait for a line end."""
        end = buf.rfind(b"\n", pos) + 1
        if end == 0:
            if n - pos > self.limits.line_buffer:
                self._anomaly(A.MIME_LONG_LINE, f"a line over {self.limits.line_buffer} octets")
                self._content(buf, False, pos, n)
                self._sol = False
                return n
            return None
        if self._bounds:
            if self._sol and buf.startswith(b"--", pos):
                c = pos
            else:
                c = buf.find(b"\n--", pos, end)
                if c >= 0:
                    c += 1
            while 0 <= c < end:
                le = buf.find(b"\n", c)
                line = buf[c:le]
                if line.endswith(b"\r"):
                    line = line[:-1]
                hit = self._match(line)
                if hit is not None:
                    self._content(buf, True, pos, c)
                    if len(line) > self.limits.line:
                        self._anomaly(A.MIME_LONG_LINE, f"a line of {len(line)} octets (limit {self.limits.line})")
                    self._sol = True
                    self._boundary(hit, line)
                    return le + 1
                c = buf.find(b"\n--", le, end)
                if c >= 0:
                    c += 1
        self._content(buf, False, pos, end)
        self._sol = True
        return end

    def _match(self, line):
        bounds = self._bounds
        for k in range(len(bounds) - 1, -1, -1):
            if line.startswith(bounds[k][0]):
                return k
        return None

    def _boundary(self, k: int, line: bytes) -> None:
        mark, owner = self._bounds[k]
        self._close_to(owner, complete=True)
        closing = line[len(mark):len(mark) + 2] == b"--"
        if closing:
            del self._bounds[k:]
            self._cur = owner
            self._mode = _BODY          # the epilogue
            return
        del self._bounds[k + 1:]
        default = "message/rfc822" if owner.info.content_type == "multipart/digest" else "text/plain"
        child = self._new_part(owner, default)
        if child is not None:
            self._cur = child
            self._mode = _HEADERS

    def _check_lines(self, data: bytes, a: int, b: int, part):
        """Line lengths of ``data[a:b]`` against the limits; its CR/LF count
        when ``_lines`` finds it."""
        lim = self.limits
        raised = self._raised
        long_line = A.MIME_LONG_LINE not in raised and b - a > lim.line
        long_enc = (part is not None and part.encoded and A.MIME_LONG_ENC_LINE not in raised
                    and b - a > lim.encoded_line)
        if not (long_line or long_enc):
            return None
        longest, eols = _lines(data, a, b)
        if long_line and longest > lim.line:
            self._anomaly(A.MIME_LONG_LINE, f"a line of {longest} octets (limit {lim.line})")
        if long_enc and longest > lim.encoded_line:
            self._anomaly(A.MIME_LONG_ENC_LINE,
                          f"an encoded line of {longest} octets (limit {lim.encoded_line})")
        return eols

    def _content(self, buf: bytes, boundary_follows: bool, a: int = 0, b: int | None = None) -> None:
        """Body octets ``buf[a:b]`` of the current entity, up to a line end (or
        a piece of a long line); the last line end is held back until the
        next line shows it is not the one before a boundary."""
        if b is None:
            b = len(buf)
        cur = self._cur
        leaf = cur.kind == _LEAF and cur.info is not None
        if leaf and cur.b64:
            # trailing empty lines (before a boundary) hold no base64 and are
            # left out, so the decoded lines share one length and decode at once
            while b - a >= 4 and buf[b - 2] == 13 and buf[b - 4] == 13 and buf[b - 1] == 10 == buf[b - 3]:
                b -= 2
        eols = self._check_lines(buf, a, b, cur if leaf else None) if b > a else None
        if not leaf:
            self._pending = b""
            return
        if b <= a:
            if boundary_follows:
                self._pending = b""
            return
        if cur.b64:
            # line ends are nothing to base64: none to hold back; the span is
            # decoded where it lies (a view, no copy)
            if eols is None and b - a <= self.limits.encoded_line:
                eols = buf.count(b"\r", a, b) + buf.count(b"\n", a, b)     # a line or two
            self._write(cur, memoryview(buf)[a:b] if a or b < len(buf) else buf, eols)
            return
        data = buf[a:b] if a or b < len(buf) else buf
        if data.endswith(b"\n"):
            cut = 2 if data.endswith(b"\r\n") else 1
            body, eol = data[:-cut], data[-cut:]
        else:
            body, eol = data, b""
        if boundary_follows:
            eol = b""
        elif cur.qp and body.endswith(b"="):
            eol = b""                    # a soft line break: the line end is not content
        if self._pending:
            self._write(cur, self._pending)
        self._pending = eol
        if body:
            self._write(cur, body)

    def _write(self, part: _Part, raw: bytes, eols: int | None = None) -> None:
        dec = part.decoder
        if dec is None:
            data = raw
        elif part.b64:
            data = dec.decode(raw, eols)
        else:
            data = dec.decode(raw)
        if dec is not None and dec.bad:
            self._bad_encoding(part)
        if not data:
            return
        if self.entity_data:
            self._out.append(EntityData(self._ts, part.fuid, data, part.size, trans_depth=self.trans_depth))
        for _name, h in part.hashers:
            h.update(data)
        part.size += len(data)
        lim = self.limits
        if len(part.head) < lim.head:
            fresh = not part.head
            part.head += data[:lim.head - len(part.head)]
            if fresh and part.head.startswith(_ZIP):
                part.archive = bytearray()
        arc = part.archive
        if arc is not None:
            if len(arc) + len(data) <= lim.archive:
                arc += data
            else:
                part.archive = False     # too large to list
        finder = part.urls
        if finder is not None:
            finder.feed(data)
            if finder.found:
                self._take_urls(part)

    def _bad_encoding(self, part: _Part) -> None:
        if part.qp:
            self._anomaly(A.MIME_INVALID_QP, "quoted-printable \"=\" not followed by two hex digits")
        else:
            self._anomaly(A.MIME_INVALID_BASE64, "a character outside the base64 alphabet, or a cut quad")

    def _take_urls(self, part: _Part) -> None:
        found = part.urls.found
        for raw in found:
            if len(self._urls) >= self.limits.urls:
                self._urls_dropped += 1
                continue
            url = raw.decode("utf-8", "backslashreplace")
            self._urls.append(url)
            self._out.append(Url(self._ts, url, part.fuid, trans_depth=self.trans_depth))
        found.clear()

    # ------------------------------------------------------------ closing
    def _close_to(self, owner, complete: bool) -> None:
        """Close the open entities from the current one up to (not including) ``owner``."""
        part = self._cur
        while part is not None and part is not owner:
            if part.kind == _LEAF and part.open:
                self._close_leaf(part, complete)
            elif part.kind == _LEAF and part.info is None and part is not self._top:
                pass                         # headers never ended: no body, no entity
            part = part.parent
        if owner is not None:
            self._cur = owner
        self._pending = b""

    def _close_leaf(self, part: _Part, complete: bool) -> None:
        dec = part.decoder
        if dec is not None:
            tail = dec.finish()
            if tail:
                self._write(part, tail)
            if dec.bad:
                self._bad_encoding(part)
        if part.urls is not None:
            part.urls.finish()
            if part.urls.found:
                self._take_urls(part)
        digests = {name: h.hexdigest() for name, h in part.hashers}
        members = None
        arc = part.archive
        if arc:
            members = zip_members(bytes(arc), self.limits.archive_members)
        part.archive = None
        info = part.info
        self._out.append(Attachment(
            self._ts, part.fuid, part.index, part.depth, info.content_type, info.filename,
            info.disposition, info.transfer_encoding, part.size, digests.get("md5"),
            digests.get("sha1"), digests.get("sha256"), sniff(part.head), part.head,
            members, complete, trans_depth=self.trans_depth))
        part.open = False                    # closed once

    def _anomaly(self, name: str, detail: str) -> None:
        if name in self._raised:
            return
        self._raised.add(name)
        self._out.append(SmtpAnomaly(self._ts, name, CLIENT, detail))

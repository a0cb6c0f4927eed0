"""Zeek's logs of the records: ``smtp.log``, ``files.log``, ``notice.log`` and
``weird.log``, one file per log in a directory, in Zeek's TSV format or its
JSON one (``LogAscii::use_json=T``), rotated as Zeek rotates them.

What goes where (docs/zeek-logs.md has the tables):

* ``smtp`` records -> ``smtp.log``, the columns of Zeek's
  ``base/protocols/smtp/main.zeek`` (``SMTP::Info``) and ``fuids``
  (``smtp/files.zeek``), in Zeek's order; the null sender ``<>`` leaves
  ``mailfrom`` unset, as Zeek does;
* ``files`` records -> ``files.log``, the columns of ``Files::Info`` (Zeek 5 and
  later: ``uid`` and ``id`` instead of ``tx_hosts``, ``rx_hosts``,
  ``conn_uids``), with the hash and extract columns of the ``base/files``
  scripts; ``analyzers`` names the hashes computed;
* ``notice`` records (the reject statistics) and ``alert`` records (a rule's
  ``alert()``, as a Zeek script raises ``NOTICE``) -> ``notice.log``, the
  columns of ``Notice::Info`` with ``add-geodata``'s ``remote_location``;
* ``anomaly`` records that Zeek would call weirds -> ``weird.log``
  (``Weird::Info``); ``WEIRD_NAMES`` gives Zeek's name where Zeek has a
  weird of the same meaning, every other one keeps its name; ``NOT_WEIRD``
  and the layer ``sensor`` (what the sensor itself lost) are not written;
* ``drop`` records, and any other type, have no Zeek log: counted in
  ``not_written``.

The TSV is Zeek's ASCII writer with its defaults (``threading/formatters/
Ascii.cc``, ``Desc.cc``): the ``#separator`` ... ``#types`` header and
``#close``; ``-`` for an unset field, ``(empty)`` for an empty string or
set; a value that is exactly ``-`` or ``(empty)`` has its first character
escaped; ``\\`` as ``\\\\``; the tab, control characters and octets that are
not UTF-8 (a ``surrogateescape`` character) as ``\\xNN``; valid UTF-8 as it
is (``LogAscii::enable_utf_8=T``, Zeek's default); set and vector elements
joined with ``,``, a ``,`` inside one as ``\\x2c``; times and intervals with
six decimals; bools ``T``/``F``; a line that would begin with ``#`` begins
with ``\\x23``.  The JSON is Zeek's JSON formatter: one object a line, the
fields in the same order, unset ones left out, ``ts`` in epoch seconds,
sets and vectors as arrays, control characters other than ``\\b \\f \\n \\r
\\t`` and octets that are not UTF-8 as the text ``\\xNN``.

Files are created when the first line of their log comes (Zeek creates a
writer on its first write), 0600 (``sensor.files``).  Rotation: every
``rotate_interval`` seconds on boundaries counted from local midnight (Zeek's
``calc_next_rotate`` with ``Log::rotate_base_time`` 0:00), checked on each
``write`` and ``flush`` (call ``flush`` now and then, so a quiet log rotates
on time), on ``reopen()`` (SIGUSR1) and, when an interval is set, on
``close()``: ``#close`` is written and ``smtp.log`` becomes
``smtp.%Y-%m-%d-%H-%M-%S.log`` (``Log::default_rotation_date_format``) from
the time its period opened, local time, as Zeek names them; ``-1``, ``-2``
... are added to a name already taken.  A log found at the path when it is
first opened (left by an earlier run that did not close it) is renamed the
same way, from its modification time, never overwritten.  A file that is no
longer at its path when rotated (logrotate moved it) is only closed.

``ZeekLogs`` is a sink (callable with one record); it owns no clock of its
own: ``clock`` (``time.time`` by default) stamps ``#open``, ``#close`` and
the rotation.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from sensor.errors import SensorError
from sensor.files import open_private
from sensor.prefixes import PrefixSet

__all__ = ["ZeekLogs", "ZeekLogsError", "LogSpec", "Site", "LOGS", "WEIRD_NAMES", "NOT_WEIRD", "FORMATS",
           "zeek_row", "tsv_line", "json_line", "tsv_header", "next_rotation", "rotated_name"]

FORMATS = ("tsv", "json")
#: Zeek's ``Log::default_rotation_date_format``; its ASCII writer stamps
#: ``#open`` and ``#close`` the same way
DATE_FORMAT = "%Y-%m-%d-%H-%M-%S"
UNSET, EMPTY, SET_SEPARATOR = "-", "(empty)", ","


class ZeekLogsError(SensorError):
    """The Zeek log directory cannot be used, or a log cannot be opened or rotated."""


def _container(ztype: str) -> str | None:
    """``set[string]`` -> ``string``; None for a scalar type."""
    if ztype.endswith("]") and ztype.startswith(("set[", "vector[")):
        return ztype[ztype.index("[") + 1:-1]
    return None


@dataclass(frozen=True)
class LogSpec:
    """One Zeek log: its path (``smtp`` for ``smtp.log``) and its columns,
    ``(name, Zeek type)`` in Zeek's order; ``columns`` adds the element type
    of a set or vector (None for a scalar)."""
    path: str
    fields: tuple[tuple[str, str], ...]
    names: tuple[str, ...] = field(init=False, repr=False)
    columns: tuple[tuple[str, str, str | None], ...] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(name for name, _ in self.fields))
        object.__setattr__(self, "columns", tuple((n, t, _container(t)) for n, t in self.fields))


_CONN = (("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
         ("id.resp_h", "addr"), ("id.resp_p", "port"))

SMTP = LogSpec("smtp", (
    ("ts", "time"), *_CONN, ("trans_depth", "count"), ("helo", "string"), ("mailfrom", "string"),
    ("rcptto", "set[string]"), ("date", "string"), ("from", "string"), ("to", "set[string]"),
    ("cc", "set[string]"), ("reply_to", "string"), ("msg_id", "string"), ("in_reply_to", "string"),
    ("subject", "string"), ("x_originating_ip", "addr"), ("first_received", "string"),
    ("second_received", "string"), ("last_reply", "string"), ("path", "vector[addr]"),
    ("user_agent", "string"), ("tls", "bool"), ("fuids", "vector[string]"),
))
FILES = LogSpec("files", (
    ("ts", "time"), ("fuid", "string"), *_CONN, ("source", "string"), ("depth", "count"),
    ("analyzers", "set[string]"), ("mime_type", "string"), ("filename", "string"),
    ("duration", "interval"), ("local_orig", "bool"), ("is_orig", "bool"), ("seen_bytes", "count"),
    ("total_bytes", "count"), ("missing_bytes", "count"), ("overflow_bytes", "count"),
    ("timedout", "bool"), ("parent_fuid", "string"), ("md5", "string"), ("sha1", "string"),
    ("sha256", "string"), ("extracted", "string"), ("extracted_cutoff", "bool"),
    ("extracted_size", "count"),
))
NOTICE = LogSpec("notice", (
    ("ts", "time"), *_CONN, ("fuid", "string"), ("file_mime_type", "string"), ("file_desc", "string"),
    ("proto", "enum"), ("note", "enum"), ("msg", "string"), ("sub", "string"), ("src", "addr"),
    ("dst", "addr"), ("p", "port"), ("n", "count"), ("peer_descr", "string"), ("actions", "set[enum]"),
    ("email_dest", "set[string]"), ("suppress_for", "interval"),
    ("remote_location.country_code", "string"), ("remote_location.region", "string"),
    ("remote_location.city", "string"), ("remote_location.latitude", "double"),
    ("remote_location.longitude", "double"),
))
WEIRD = LogSpec("weird", (
    ("ts", "time"), *_CONN, ("name", "string"), ("addl", "string"), ("notice", "bool"),
    ("peer", "string"), ("source", "string"),
))
#: the logs, by path
LOGS = {spec.path: spec for spec in (SMTP, FILES, NOTICE, WEIRD)}

#: anomaly name -> Zeek's weird of the same meaning (the anomaly's own name
#: goes first in ``addl``); an anomaly not here is a weird of its own name
WEIRD_NAMES = {
    # base/protocols/smtp/main.zeek, analyzer/protocol/smtp/SMTP.cc
    "RCPT_BEFORE_MAIL": "smtp_mail_transaction_invalid",
    "DATA_BEFORE_RCPT": "smtp_mail_transaction_invalid",
    "TOO_MANY_INVALID_TRANSACTIONS": "smtp_excessive_invalid_mail_transactions",
    "TOO_MANY_RECIPIENTS": "smtp_too_many_rcptto_addresses",
    "TOO_MANY_PENDING_COMMANDS": "smtp_excessive_pending_cmds",
    "INVALID_BDAT": "smtp_invalid_bdat_command",
    # analyzer/protocol/tcp/ContentLine.cc: the line reader under SMTP
    "BARE_LF_COMMAND_LINE": "line_terminated_with_single_LF",
    "BARE_LF_IN_DATA": "line_terminated_with_single_LF",
    "BARE_CR_IN_DATA": "line_terminated_with_single_CR",
    "TRUNCATED_LINE": "contentline_size_exceeded",
    # the MIME analyzer
    "MIME_INVALID_BASE64": "base64_illegal_encoding",
    # the TCP analyzer and IP reassembly (Frag.cc)
    "TCP_BAD_CHECKSUM": "bad_TCP_checksum",
    "TCP_SYN_DIFFERENT_ISN": "SYN_seq_jump",
    "IPV4_FRAG_OVERLAP": "fragment_overlap",
    "IPV6_FRAG_OVERLAP": "fragment_overlap",
    "IPV4_FRAG_PKT_TOO_LARGE": "excessively_large_fragment",
    "IPV6_FRAG_PKT_TOO_LARGE": "excessively_large_fragment",
}
#: anomalies that are not weirds: a server refusing a command is SMTP as it
#: is meant to work (smtp.log's ``last_reply`` shows it)
NOT_WEIRD = frozenset({"DATA_COMMAND_REJECTED", "TLS_REJECTED"})
#: anomaly layer -> weird ``source`` (the analyzer that saw it, in Zeek)
_WEIRD_SOURCE = {"smtp": "SMTP", "tcp": "TCP", "ip": "IP"}
#: ``actions`` of a notice record -> Zeek's notice actions besides ACTION_LOG
_NOTICE_ACTIONS = {"ban": "Notice::ACTION_DROP"}
_HASHES = ("md5", "sha1", "sha256")


# ----------------------------------------------------------------- records -> rows

class Site:
    """What the rows take from where the sensor runs: ``peer``, its name
    (``notice.log``'s ``peer_descr``, ``weird.log``'s ``peer``, Zeek's
    ``peer_description``), and the local networks (Zeek's
    ``Site::local_nets``: with none, ``files.log``'s ``local_orig`` is unset,
    as in Zeek)."""

    def __init__(self, peer: str = "smtp-sensor", local_networks=()):
        self.peer = peer
        self.local_networks = PrefixSet(local_networks)

    def is_local(self, addr) -> bool | None:
        if not self.local_networks or addr is None:
            return None
        return addr in self.local_networks


def _conn(rec: dict) -> dict:
    return {name: rec.get(name) for name, _ in _CONN}


def _smtp_row(rec: dict, site: Site) -> dict:
    row = {name: rec.get(name) for name in SMTP.names}
    if not row["mailfrom"]:
        row["mailfrom"] = None          # Zeek logs no mailfrom for the null sender <>
    row["tls"] = bool(rec.get("tls"))
    row["fuids"] = list(rec.get("fuids") or ())
    return row


def _files_row(rec: dict, site: Site) -> dict:
    row = {name: rec.get(name) for name in FILES.names}
    row.update(analyzers=[h.upper() for h in _HASHES if rec.get(h)], duration=0.0,
               missing_bytes=0, overflow_bytes=0, timedout=False,
               local_orig=site.is_local(rec.get("id.orig_h")))   # the sender: the SMTP client
    return row


def _notice_row(rec: dict, site: Site) -> dict:
    actions = ["Notice::ACTION_LOG"]
    actions += [_NOTICE_ACTIONS[a] for a in rec.get("actions", ()) if a in _NOTICE_ACTIONS]
    return {"ts": rec["ts"], "note": rec["note"], "msg": rec.get("msg"), "sub": rec.get("sub"),
            "src": rec.get("src"), "n": rec.get("n"), "peer_descr": site.peer, "actions": actions,
            "email_dest": [], "suppress_for": float(rec.get("suppress_for") or 0.0)}


def _alert_row(rec: dict, site: Site) -> dict:
    alert = rec.get("alert") or {}
    sub = [f"severity {alert.get('severity')}"]
    sub += [f"{key} {alert[key]}" for key in ("confidence", "method") if alert.get(key)]
    if alert.get("ref"):
        sub.append("ref " + " ".join(alert["ref"]))
    return {"ts": rec["ts"], "uid": rec.get("uid"), "id.orig_h": rec.get("src_ip"),
            "id.orig_p": rec.get("src_port"), "id.resp_h": rec.get("dest_ip"),
            "id.resp_p": rec.get("dest_port"), "proto": "tcp",
            "note": f"Rule::{alert.get('signature_id')}", "msg": alert.get("signature"),
            "sub": ", ".join(sub), "src": rec.get("src_ip"), "dst": rec.get("dest_ip"),
            "p": rec.get("dest_port"), "peer_descr": site.peer, "actions": ["Notice::ACTION_LOG"],
            "email_dest": [], "suppress_for": 0.0}


def _weird_row(rec: dict, site: Site) -> dict | None:
    name, layer = rec.get("name"), rec.get("layer")
    if name in NOT_WEIRD or layer not in _WEIRD_SOURCE:
        return None
    detail = rec.get("detail") or ""
    zeek_name = WEIRD_NAMES.get(name)
    if zeek_name is not None:
        addl = f"{name}: {detail}" if detail else name
    else:
        zeek_name, addl = name, detail or None
    return {"ts": rec["ts"], **_conn(rec), "name": zeek_name, "addl": addl, "notice": False,
            "peer": site.peer, "source": _WEIRD_SOURCE[layer]}


_DEFAULT_SITE = Site()
_ROUTES: dict[str, tuple[LogSpec, Callable[[dict, Site], dict | None]]] = {
    "smtp": (SMTP, _smtp_row), "files": (FILES, _files_row), "notice": (NOTICE, _notice_row),
    "alert": (NOTICE, _alert_row), "anomaly": (WEIRD, _weird_row),
}


def zeek_row(record: dict, site: Site | None = None) -> tuple[LogSpec, dict] | None:
    """The Zeek log of a record and its row (column name -> value, None for
    unset), or None when no Zeek log takes it."""
    route = _ROUTES.get(record.get("event_type"))
    if route is None:
        return None
    spec, build = route
    row = build(record, site or _DEFAULT_SITE)
    return None if row is None else (spec, row)


# ----------------------------------------------------------------- rows -> lines

_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_TSV_TEXT = str.maketrans({**_CONTROLS, ord("\\"): "\\\\"})
_TSV_ITEM = str.maketrans({**_CONTROLS, ord("\\"): "\\\\", ord(SET_SEPARATOR): "\\x2c"})
# Zeek's JSON formatter keeps \b \f \n \r \t (JSON escapes them) and writes other controls as \xNN
_JSON_TEXT = str.maketrans({c: v for c, v in _CONTROLS.items() if chr(c) not in "\b\f\n\r\t"})
# what needs any of it: most values need none, and a search is cheaper than a translate
_TSV_TEXT_NEEDS = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")
_TSV_ITEM_NEEDS = re.compile(r"[\x00-\x1f\x7f\\,\ud800-\udfff]")
_JSON_TEXT_NEEDS = re.compile(r"[\x00-\x07\x0b\x0e-\x1f\x7f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _octets(m: re.Match) -> str:
    code = ord(m.group())
    if 0xDC80 <= code <= 0xDCFF:        # an octet that was not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return "".join(f"\\x{b:02x}" for b in m.group().encode("utf-8", "surrogatepass"))


def _escaped(text: str, needs: re.Pattern, table) -> str:
    if needs.search(text) is None:
        return text
    out = text.translate(table)
    return _SURROGATE.sub(_octets, out) if _SURROGATE.search(out) else out


def _tsv_text(text: str, item: bool = False) -> str:
    if not text:
        return EMPTY
    if text in (UNSET, EMPTY):          # the reserved words: first character escaped
        return f"\\x{ord(text[0]):02x}{text[1:]}"
    if item:
        return _escaped(text, _TSV_ITEM_NEEDS, _TSV_ITEM)
    return _escaped(text, _TSV_TEXT_NEEDS, _TSV_TEXT)


def _tsv_double(value: float) -> str:
    out = f"{value:.6f}".rstrip("0")
    return out + "0" if out.endswith(".") else out


def _six_decimals(value) -> str:
    return f"{value:.6f}"


def _tsv_bool(value) -> str:
    return "T" if value else "F"


def _tsv_int(value) -> str:
    return str(int(value))


_TSV_SCALAR = {"time": _six_decimals, "interval": _six_decimals, "bool": _tsv_bool, "count": _tsv_int,
               "port": _tsv_int, "int": _tsv_int, "double": _tsv_double, "addr": str}


def _tsv_cell(value, ztype: str, item: bool = False) -> str:
    render = _TSV_SCALAR.get(ztype)
    return render(value) if render is not None else _tsv_text(str(value), item)


def tsv_line(spec: LogSpec, row: dict) -> str:
    """One TSV line of ``row`` (newline included)."""
    cells = []
    for name, ztype, inner in spec.columns:
        value = row.get(name)
        if value is None:
            cells.append(UNSET)
        elif inner is None:
            cells.append(_tsv_cell(value, ztype))
        elif not value:
            cells.append(EMPTY)
        else:
            cells.append(SET_SEPARATOR.join([_tsv_cell(v, inner, True) for v in value]))
    line = "\t".join(cells)
    if line.startswith("#"):
        line = "\\x23" + line[1:]
    return line + "\n"


def _json_text(value) -> str:
    return _escaped(str(value), _JSON_TEXT_NEEDS, _JSON_TEXT)


_JSON_SCALAR = {"time": float, "interval": float, "double": float, "count": int, "port": int, "int": int,
                "bool": bool}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_line(spec: LogSpec, row: dict) -> str:
    """One JSON line of ``row`` (newline included)."""
    obj = {}
    for name, ztype, inner in spec.columns:
        value = row.get(name)
        if value is None:
            continue
        if inner is None:
            obj[name] = _JSON_SCALAR.get(ztype, _json_text)(value)
        else:
            convert = _JSON_SCALAR.get(inner, _json_text)
            obj[name] = [convert(v) for v in value]
    return _dumps(obj) + "\n"


def _stamp(t: float) -> str:
    return time.strftime(DATE_FORMAT, time.localtime(t))


def tsv_header(spec: LogSpec, opened: float) -> str:
    """The header block Zeek's ASCII writer puts at the top of a TSV log."""
    return "".join((
        "#separator \\x09\n",
        f"#set_separator\t{SET_SEPARATOR}\n",
        f"#empty_field\t{EMPTY}\n",
        f"#unset_field\t{UNSET}\n",
        f"#path\t{spec.path}\n",
        f"#open\t{_stamp(opened)}\n",
        "#fields\t" + "\t".join(spec.names) + "\n",
        "#types\t" + "\t".join(ztype for _, ztype in spec.fields) + "\n",
    ))


# ----------------------------------------------------------------- rotation

def _start_of_day(t: float) -> float:
    lt = time.localtime(t)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))


def _period_start(t: float, interval: float) -> float:
    """The rotation boundary at or before ``t``."""
    day = _start_of_day(t)
    return day + math.floor((t - day) / interval) * interval


def next_rotation(t: float, interval: float) -> float:
    """The first rotation boundary after ``t``: a whole number of ``interval``
    seconds from local midnight (Zeek's ``calc_next_rotate``, base time 0:00)."""
    return _period_start(t, interval) + interval


def rotated_name(path: str, opened: float) -> str:
    """``.../smtp.log`` opened at ``opened`` -> ``.../smtp.%Y-%m-%d-%H-%M-%S.log`` (local time)."""
    base = path[:-len(".log")] if path.endswith(".log") else path
    return f"{base}.{_stamp(opened)}.log"


def _free_name(name: str) -> str:
    if not os.path.lexists(name):
        return name
    base = name[:-len(".log")]
    n = 1
    while os.path.lexists(f"{base}-{n}.log"):
        n += 1
    return f"{base}-{n}.log"


class _LogFile:
    """One log's file: the open handle, when its period opened, when it rotates."""

    def __init__(self, spec: LogSpec, directory: str):
        self.spec = spec
        self.path = os.path.join(directory, spec.path + ".log")
        self.handle = None
        self.inode: tuple[int, int] | None = None
        self.period_start = 0.0         # names the file when it is rotated
        self.next_rotation: float | None = None
        self.rotated_at: float | None = None
        self.written = 0


class ZeekLogs:
    """Write records as Zeek's logs in ``directory`` (which must exist).

    ``format``: ``tsv`` or ``json``; ``rotate_interval``: seconds between
    rotations (None: only on ``reopen`` and when renamed by hand);
    ``clock``: the time of ``#open``, ``#close`` and rotations; ``peer``
    and ``local_networks``: see ``Site``.  ``written`` counts
    the lines of each log, ``not_written`` the records no log takes, by
    ``event_type``; ``rotated`` lists the files rotated, oldest first."""

    def __init__(self, directory, *, format: str = "tsv", rotate_interval: float | None = None,
                 clock: Callable[[], float] = time.time, peer: str = "smtp-sensor", local_networks=()):
        directory = os.fspath(directory)
        if format not in FORMATS:
            raise ZeekLogsError(f"zeek logs: format {format!r} is not one of {', '.join(FORMATS)}")
        if rotate_interval is not None and not rotate_interval > 0:
            raise ZeekLogsError(f"zeek logs: rotate_interval must be a number of seconds above 0, "
                                f"not {rotate_interval!r}")
        if not os.path.isdir(directory):
            raise ZeekLogsError(f"zeek logs: {directory} is not a directory: create it "
                                f"(install -d -m 0700 {directory})")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ZeekLogsError(f"zeek logs: cannot write in {directory}: give the sensor's user write access")
        self.directory = directory
        self.format = format
        self.rotate_interval = rotate_interval
        self.clock = clock
        self.site = Site(peer, local_networks)
        self._line = tsv_line if format == "tsv" else json_line
        self._logs = {path: _LogFile(spec, directory) for path, spec in LOGS.items()}
        self.not_written: Counter[str] = Counter()
        self.rotated: list[str] = []

    @property
    def written(self) -> dict[str, int]:
        return {path: log.written for path, log in self._logs.items()}

    def write(self, record: dict) -> bool:
        """Write ``record`` to its log; False when no Zeek log takes it."""
        routed = zeek_row(record, self.site)
        if routed is None:
            self.not_written[str(record.get("event_type"))] += 1
            return False
        spec, row = routed
        now = self.clock()
        self._rotate_due(now)
        log = self._logs[spec.path]
        if log.handle is None:
            self._open(log, now)
        log.handle.write(self._line(spec, row))
        log.written += 1
        return True

    __call__ = write

    def flush(self) -> None:
        """Rotate what is due and push the lines written to the files."""
        self._rotate_due(self.clock())
        for log in self._logs.values():
            if log.handle is not None:
                log.handle.flush()

    def reopen(self) -> None:
        """Rotate every open log now (SIGUSR1); the next line of each opens a new file."""
        now = self.clock()
        self._each_open(lambda log: self._rotate(log, now, now))

    def close(self) -> None:
        """Close every log, with ``#close``; rotated too when an interval is set (as Zeek does at exit)."""
        now = self.clock()
        if self.rotate_interval:
            self._each_open(lambda log: self._rotate(log, now, now))
        else:
            self._each_open(lambda log: self._finish(log, now))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- files -----------------------------------------------------------------

    def _each_open(self, action) -> None:
        failures = []
        for log in self._logs.values():
            if log.handle is None:
                continue
            try:
                action(log)
            except OSError as exc:
                failures.append(f"{log.path}: {exc.strerror or exc}")
        if failures:
            raise ZeekLogsError("zeek logs: " + "; ".join(failures))

    def _open(self, log: _LogFile, now: float) -> None:
        interval = self.rotate_interval
        if log.rotated_at is None:
            log.period_start = now
        elif interval:
            log.period_start = max(log.rotated_at, _period_start(now, interval))
        else:
            log.period_start = log.rotated_at
        try:
            self._put_aside_leftover(log)
            log.handle = open_private(log.path, "w")
        except OSError as exc:
            raise ZeekLogsError(f"zeek logs: cannot open {log.path}: {exc.strerror or exc}") from exc
        st = os.fstat(log.handle.fileno())
        log.inode = (st.st_dev, st.st_ino)
        log.next_rotation = next_rotation(now, interval) if interval else None
        if self.format == "tsv":
            log.handle.write(tsv_header(log.spec, now))

    def _put_aside_leftover(self, log: _LogFile) -> None:
        try:
            st = os.stat(log.path)
        except FileNotFoundError:
            return
        if st.st_size:
            target = _free_name(rotated_name(log.path, st.st_mtime))
            os.rename(log.path, target)
            self.rotated.append(target)

    def _finish(self, log: _LogFile, now: float) -> None:
        handle, log.handle = log.handle, None
        try:
            if self.format == "tsv":
                handle.write(f"#close\t{_stamp(now)}\n")
        finally:
            handle.close()

    def _rotate(self, log: _LogFile, now: float, period_end: float) -> None:
        self._finish(log, now)
        log.rotated_at = period_end
        try:
            st = os.stat(log.path)
        except FileNotFoundError:
            return                      # moved away by someone else: theirs to name
        if (st.st_dev, st.st_ino) != log.inode:
            return
        target = _free_name(rotated_name(log.path, log.period_start))
        os.rename(log.path, target)
        self.rotated.append(target)

    def _rotate_due(self, now: float) -> None:
        if not self.rotate_interval:
            return
        boundary = None
        for log in self._logs.values():
            if log.handle is not None and now >= log.next_rotation:
                if boundary is None:
                    boundary = _period_start(now, self.rotate_interval)
                try:
                    self._rotate(log, now, boundary)
                except OSError as exc:
                    raise ZeekLogsError(f"zeek logs: cannot rotate {log.path}: {exc.strerror or exc}") from exc

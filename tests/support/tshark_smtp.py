"""tshark as a second opinion on SMTP captures: run it, read its JSON, our side too.

Used by ``tests/offline/test_tshark_crosscheck.py``.  One tshark run per capture:

    tshark -n -r CAPTURE -Y smtp -T json -J "frame ip ipv6 tcp smtp" -d tcp.port==587,smtp ...

tshark's JSON repeats keys (one ``smtp.command_line_tree`` per command of a
pipelined segment, one ``smtp.rsp.parameter`` per reply line), so it is read
with ``object_pairs_hook`` (lists of pairs, in order) rather than into dicts.

What tshark's SMTP dissector (packet-smtp.c, 4.0) does, which the reading and
the comparison rules of the test follow:

* a command line is cut at fixed offsets: ``smtp.req.command`` is its first 4
  octets, ``smtp.req.parameter`` the octets from the 6th on (``STARTTLS`` ->
  ``STAR`` + ``TLS``);
* a reply is one ``smtp.response_tree`` (code once, one ``smtp.rsp.parameter``
  per line, none for a line made of the code alone); the multi-line state is
  per segment, so a reply cut between two segments shows as two replies;
* SASL answers after a 334 show as ``smtp.auth.*`` (PLAIN, LOGIN, NTLM) or, for
  other mechanisms, as command lines;
* client octets before any server reply, and message content, show as text
  (``data-text-lines``, ``smtp.data.fragment``); nothing after the end-of-data
  dot in the same segment is dissected (``smtp.eom``);
* after 220 to STARTTLS the rest of the connection goes to the TLS dissector.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from sensor.assembly import Userland
from sensor.config import Config
from sensor.inputs.replay import replay
from sensor.smtp import events as sev

TSHARK = "tshark"

#: preferences set explicitly so that a user profile cannot change the reading.
TSHARK_PREFS = (
    "tcp.desegment_tcp_streams:TRUE",
    "tcp.reassemble_out_of_order:TRUE",
    "smtp.desegment_lines:TRUE",
    "smtp.desegment_data:TRUE",
    "smtp.decryption:FALSE",        # keep 334 challenges as sent (no base64 decoding)
)


def tshark_path() -> str | None:
    return shutil.which(TSHARK)


# --------------------------------------------------------------------- tshark


@dataclass
class TCommand:
    frame: int
    verb: str            #: smtp.req.command (the line's first 4 octets)
    parameter: str       #: smtp.req.parameter (octets from the 6th on), "" if none
    line: str            #: smtp.command_line


@dataclass
class TReply:
    frame: int
    code: int
    lines: list          #: every smtp.rsp.parameter
    first_line: str      #: smtp.response (the first line as sent, with its code)


@dataclass
class TFrame:
    number: int
    ts: float
    from_client: bool
    commands: int = 0
    replies: int = 0
    text: bool = False           #: client octets shown as message text / data fragment
    eom: bool = False            #: the end-of-data dot was seen in this frame
    auth: bool = False           #: a SASL answer shown as smtp.auth.*
    payload: bytes = b""


@dataclass
class TConn:
    stream: int
    client: tuple                #: (ip, port)
    server: tuple
    items: list = field(default_factory=list)    #: TCommand / TReply in frame order
    frames: dict = field(default_factory=dict)   #: frame number -> TFrame


def _all(pairs, key):
    return [v for k, v in pairs if k == key]


def _one(pairs, key, default=None):
    for k, v in pairs:
        if k == key:
            return v
    return default


def _walk(pairs, key):
    """Every value of ``key`` anywhere under ``pairs`` (depth first, in order)."""
    for k, v in pairs:
        if k == key:
            yield v
        if isinstance(v, list):
            yield from _walk(v, key)


def _norm_ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def run_tshark(path, smtp_ports) -> list[TConn]:
    """tshark's reading of ``path``: one TConn per TCP stream holding SMTP.

    ``smtp_ports``: the server ports of our pipeline; a stream with one of them
    has its client and server told by it, else by tshark's smtp.req / smtp.rsp.
    """
    cmd = [TSHARK, "-n", "-r", str(path), "-Y", "smtp", "-T", "json",
           "-J", "frame ip ipv6 tcp smtp"]
    for port in sorted(smtp_ports):
        cmd += ["-d", f"tcp.port=={port},smtp"]
    for pref in TSHARK_PREFS:
        cmd += ["-o", pref]
    with tempfile.TemporaryDirectory(prefix="tshark-conf-") as conf:
        # an empty configuration folder: no personal preferences, decode-as or profiles
        env = dict(os.environ, WIRESHARK_CONFIG_DIR=conf, LC_ALL="C.UTF-8")
        res = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): "
                           f"{res.stderr.decode(errors='replace')[-2000:]}")
    out = res.stdout.strip()
    packets = json.loads(out, object_pairs_hook=list) if out else []
    conns: dict[int, TConn] = {}
    for pkt in packets:
        layers = _one(_one(pkt, "_source"), "layers")
        frame = _one(layers, "frame")
        tcp = _one(layers, "tcp")
        ips = _all(layers, "ip") or _all(layers, "ipv6")
        ip = ips[-1]   # the innermost IP header
        v6 = _one(ip, "ipv6.src") is not None
        src = _norm_ip(_one(ip, "ipv6.src" if v6 else "ip.src"))
        dst = _norm_ip(_one(ip, "ipv6.dst" if v6 else "ip.dst"))
        sport, dport = int(_one(tcp, "tcp.srcport")), int(_one(tcp, "tcp.dstport"))
        stream = int(_one(tcp, "tcp.stream"))
        number = int(_one(frame, "frame.number"))
        ts = float(_one(frame, "frame.time_epoch"))
        payload_hex = _one(tcp, "tcp.payload") or ""
        payload = bytes.fromhex(payload_hex.replace(":", ""))
        smtps = _all(layers, "smtp")
        is_req = any(_one(s, "smtp.req") for s in smtps)
        is_rsp = any(_one(s, "smtp.rsp") for s in smtps)
        if dport in smtp_ports and sport not in smtp_ports:
            from_client = True
        elif sport in smtp_ports and dport not in smtp_ports:
            from_client = False
        else:
            from_client = is_req or not is_rsp
        if from_client:
            client, server = (src, sport), (dst, dport)
        else:
            client, server = (dst, dport), (src, sport)
        conn = conns.get(stream)
        if conn is None:
            conn = conns[stream] = TConn(stream, client, server)
        tf = conn.frames[number] = TFrame(number, ts, from_client, payload=payload)
        for smtp in smtps:
            for key, value in smtp:
                if key == "smtp.command_line_tree":
                    conn.items.append(TCommand(
                        number, _one(value, "smtp.req.command", ""),
                        _one(value, "smtp.req.parameter", ""),
                        _last_line_before(smtp, value)))
                    tf.commands += 1
                elif key == "smtp.response_tree":
                    conn.items.append(TReply(
                        number, int(_one(value, "smtp.response.code")),
                        _all(value, "smtp.rsp.parameter"), _last_line_before(smtp, value,
                                                                             "smtp.response")))
                    tf.replies += 1
                elif key in ("data-text-lines", "smtp.data.fragment", "smtp.data.fragments"):
                    tf.text = True
                elif key == "smtp.eom":
                    tf.eom = True
                elif key.startswith("smtp.auth.") or key in ("smtp.username", "smtp.password"):
                    tf.auth = True
    return [conns[k] for k in sorted(conns)]


def _last_line_before(pairs, tree, key="smtp.command_line"):
    """The ``key`` value just before ``tree`` in ``pairs`` (the line a tree belongs to)."""
    last = ""
    for k, v in pairs:
        if v is tree:
            return last
        if k == key:
            last = v
    return last


# ------------------------------------------------------------------- our side


@dataclass
class OurConn:
    client: tuple
    server: tuple
    events: list = field(default_factory=list)   #: Command, Reply, MessageEnd, StartTLS, SmtpAnomaly


_KEEP = (sev.Command, sev.Reply, sev.MessageEnd, sev.StartTLS)


def run_ours(path) -> tuple[list[OurConn], Userland]:
    """Our reading of ``path`` through the sensor's userland: events per connection."""
    conns: dict = {}   # keyed by the Session itself (kept alive: ids are not reused)

    def listener(session, event):
        if not isinstance(event, _KEEP):
            return
        conn = conns.get(session)
        if conn is None:
            fl = session.flow
            conn = conns[session] = OurConn((_norm_ip(fl.orig_h), fl.orig_p),
                                                (_norm_ip(fl.resp_h), fl.resp_p))
        conn.events.append(event)

    userland = Userland(Config(), lambda record: None)
    userland.pipeline.listeners.append(listener)
    replay(path, userland)
    assert userland.pipeline.counters.listener_errors == 0, "the cross-check listener raised"
    return list(conns.values()), userland


# -------------------------------------------------------------- normalisation

_HEX_ESCAPE = re.compile(r"\\x[0-9a-fA-F]{2}")


def norm_text(text: str, ours: bool = False) -> str:
    """Whitespace collapsed; every non-ASCII octet as '?' on both sides.

    tshark decodes lines as ASCII (one U+FFFD per octet >= 0x80); we decode
    UTF-8 with backslashreplace (one character per valid sequence, ``\\xNN``
    per invalid octet).
    """
    if ours:
        text = _HEX_ESCAPE.sub("?", text)
        text = "".join(c if ord(c) < 128 else "?" * len(c.encode("utf-8", "surrogatepass"))
                       for c in text)
    else:
        text = "".join(c if ord(c) < 128 else "?" for c in text)
    return " ".join(text.split())


def is_continuation(line: bytes) -> bool:
    return re.match(rb"[0-9]{3}-", line) is not None


def last_line(payload: bytes) -> bytes:
    """The last complete line of a segment's payload."""
    lines = payload.split(b"\n")
    if len(lines) < 2:
        return b""
    return lines[-2].rstrip(b"\r")

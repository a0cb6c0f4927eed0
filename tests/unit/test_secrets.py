"""Credentials never leave the sensor.

Every SASL mechanism a client uses over SMTP (PLAIN, LOGIN, CRAM-MD5,
XOAUTH2; with an initial response, RFC 4954's SASL-IR, and without) is fed
through the whole userland (``sensor.assembly.Userland``: reassembly, the
dissector, the records, the shipped rules and a probe rule on every hook),
cleanly and with what goes wrong on a real link: replies lost, client lines
lost or cut by a gap, lines over the command limit, garbage and one answer too
many, answers pipelined after an AUTH the server refused, a capture with the
client's side only.  Every output is then searched for the credentials: the
records as written (JSON lines), the sensor's log (JSON lines: the rule
engine logs the tracebacks of a probe that raises with what it was given),
the alerts the probe raises with what it saw, and the repr of every argument
the rules were called with.  What is looked for: the secrets themselves and
every 8-character piece of their base64 forms, in any case (a verb is shown
upper-cased).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
import structlog

from sensor.assembly import Userland
from sensor.config import Config, LimitsConfig, SensorConfig
from sensor.records.sinks import JsonLinesSink
from sensor.rules import hooks
from sensor.service import log as sensor_log
from sensor.smtp import SmtpLimits
from sensor.stream.flowid import pack_addr
from sensor.stream.packet import ACK, FIN, PSH, SYN, Segment

RULES = Path(__file__).resolve().parents[2] / "rules"

# --- the credentials ------------------------------------------------------------

USER = b"svc-relay-7@w9q.internal"
PASSWORD = b"Tr0ub4dor&3-correct-horse"
LONG_PASSWORD = b"pass-phrase-" + b"0123456789abcdef" * 40     # an answer over 512 octets
BEARER = b"ya29.a0AfH6SMBx" + b"Kq3vZ8wYtL2nRp5s" * 50          # an XOAUTH2 line over 512 octets
CHALLENGE = b"<1896.697170952@postoffice.example>"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


PLAIN = b64(b"\0" + USER + b"\0" + PASSWORD)
LOGIN_USER, LOGIN_PASS, LOGIN_LONG = b64(USER), b64(PASSWORD), b64(LONG_PASSWORD)
CRAM = b64(USER + b" " + hmac.new(PASSWORD, CHALLENGE, hashlib.md5).hexdigest().encode())
XOAUTH2 = b64(b"user=" + USER + b"\x01auth=Bearer " + BEARER + b"\x01\x01")

RAW = (USER, PASSWORD, LONG_PASSWORD, BEARER)
ENCODED = (PLAIN, LOGIN_USER, LOGIN_PASS, LOGIN_LONG, CRAM, XOAUTH2)


def needles() -> set[str]:
    out = {s.decode().lower() for s in RAW}
    for s in ENCODED:
        text = s.decode().lower()
        out |= {text[i:i + 8] for i in range(len(text) - 7)}
    return out


NEEDLES = needles()


def found(text: str) -> list[str]:
    text = text.lower()
    return sorted(n for n in NEEDLES if n in text)


# --- the exchanges: (from_client, octets) -----------------------------------------

OK = b"235 2.7.0 Authentication successful\r\n"
BAD = b"535 5.7.8 Error: authentication failed\r\n"
EXCHANGES = {
    "PLAIN-IR": [(True, b"AUTH PLAIN " + PLAIN + b"\r\n"), (False, OK)],
    "PLAIN": [(True, b"AUTH PLAIN\r\n"), (False, b"334 \r\n"), (True, PLAIN + b"\r\n"), (False, OK)],
    "LOGIN": [(True, b"AUTH LOGIN\r\n"), (False, b"334 VXNlcm5hbWU6\r\n"), (True, LOGIN_USER + b"\r\n"),
              (False, b"334 UGFzc3dvcmQ6\r\n"), (True, LOGIN_PASS + b"\r\n"), (False, BAD)],
    "LOGIN-IR": [(True, b"AUTH LOGIN " + LOGIN_USER + b"\r\n"), (False, b"334 UGFzc3dvcmQ6\r\n"),
                 (True, LOGIN_PASS + b"\r\n"), (False, OK)],
    "LOGIN-long-answer": [(True, b"auth login\r\n"), (False, b"334 VXNlcm5hbWU6\r\n"),
                          (True, LOGIN_USER + b"\r\n"), (False, b"334 UGFzc3dvcmQ6\r\n"),
                          (True, LOGIN_LONG + b"\r\n"), (False, OK)],
    "CRAM-MD5": [(True, b"AUTH CRAM-MD5\r\n"), (False, b"334 " + b64(CHALLENGE) + b"\r\n"),
                 (True, CRAM + b"\r\n"), (False, OK)],
    "XOAUTH2-IR": [(True, b"AUTH XOAUTH2 " + XOAUTH2 + b"\r\n"), (False, OK)],
    "XOAUTH2": [(True, b"AUTH XOAUTH2\r\n"), (False, b"334 \r\n"), (True, XOAUTH2 + b"\r\n"), (False, OK)],
    "XOAUTH2-IR-refused": [(True, b"AUTH XOAUTH2 " + XOAUTH2 + b"\r\n"),
                           (False, b"334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=\r\n"),
                           (True, b"\r\n"), (False, BAD)],
}
assert all(len(line) > 512 for line in (b"AUTH XOAUTH2 " + XOAUTH2, LOGIN_LONG, XOAUTH2))

HELLO = [(False, b"220 mx.example ESMTP\r\n"), (True, b"EHLO client.example\r\n"),
         (False, (b"250-mx.example\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN CRAM-MD5 XOAUTH2\r\n"
                  b"250 8BITMIME\r\n"))]
AFTER = [(True, b"MAIL FROM:<alice@example.org>\r\n"), (False, b"250 2.1.0 Ok\r\n"),
         (True, b"RCPT TO:<bob@example.net>\r\n"), (False, b"250 2.1.5 Ok\r\n"),
         (True, b"DATA\r\n"), (False, b"354 go ahead\r\n"),
         (True, b"Subject: hello\r\n\r\nbody\r\n.\r\n"), (False, b"250 2.0.0 queued as X1\r\n"),
         (True, b"QUIT\r\n"), (False, b"221 bye\r\n")]
GARBAGE = b"\x00\xff\xfe\x16 not a command \x80\x81\r\n"

# --- what goes wrong: a dialogue of (from_client, octets, how), how in
# None (delivered), "lost" (a gap of its length), "cut" (a gap inside it) ------------


def faults(name: str):
    exchange = EXCHANGES[name]
    plain = [(c, d, None) for c, d in HELLO + exchange + AFTER]
    start = len(HELLO)
    yield "clean", plain, {}
    for i, (from_client, data) in enumerate(exchange):
        side = "client" if from_client else "server"
        for how in ("lost", "cut"):
            d = list(plain)
            d[start + i] = (from_client, data, how)
            yield f"{side} turn {i} {how}", d, {}
    replies = [i for i, (c, _) in enumerate(exchange) if not c]
    yield "every reply of the exchange lost", [
        (c, d, "lost" if start <= k < start + len(exchange) and k - start in replies else how)
        for k, (c, d, how) in enumerate(plain)], {}
    client = b"".join(d for c, d in exchange + AFTER if c)
    server = b"".join(d for c, d in exchange + AFTER if not c)
    yield "pipelined", [*plain[:start], (True, client, None), (False, server, None)], {}
    yield "pipelined, the replies lost", [*plain[:start], (True, client, None),
                                          (False, server, "lost")], {}
    # garbage and one answer too many, before and after the final reply
    last = max(i for i, (c, _) in enumerate(exchange) if c)
    extra = [(True, GARBAGE + exchange[last][1], None)]
    d = plain[:start + last + 1] + extra + plain[start + last + 1:]
    yield "garbage and an answer too many before the final reply", d, {}
    d = plain[:start + len(exchange)] + extra + [(False, b"502 5.5.2 Error: command not recognized\r\n"
                                                  * 2, None)] + plain[start + len(exchange):]
    yield "garbage and an answer too many after the final reply", d, {}
    # the server refuses AUTH; the client had pipelined all its answers
    answers = b"".join(data for c, data in exchange[1:] if c)
    refused = [(True, exchange[0][1] + answers, None),
               (False, b"530 5.7.0 Must issue a STARTTLS command first\r\n"
                + b"502 5.5.2 Error: command not recognized\r\n" * answers.count(b"\n"), None)]
    yield "refused, answers pipelined", [*plain[:start], *refused, *plain[start + len(exchange):]], {}
    one_sided = [(c, d, how) for c, d, how in plain if c]
    yield "the client's side only", one_sided, {}
    yield "the client's side only, a small hold", one_sided, {"unreplied_client_bytes": 64}
    yield "a short command limit", plain, {"command_line": 40}


CASES = [(name, fault, dialogue, limits) for name in EXCHANGES for fault, dialogue, limits in faults(name)]

# --- the probe: a rule on every hook ----------------------------------------------------

PROBE = '''
from sensor.rules import alert, hooks, rule

SEEN = []


def _saw(hook, *args):
    SEEN.append((hook, repr(args)))
    alert(description=f"{hook}: {args!r}"[:8000], severity="low")


@rule(hooks.connection, id="probe.connection")
def connection(flow):
    _saw("connection", flow)


@rule(hooks.command, id="probe.command")
def command(flow, command):
    _saw("command", command)


@rule(hooks.command, id="probe.command_raises")
def command_raises(flow, command):
    raise ValueError(f"probe saw {command!r}")


@rule(hooks.response, id="probe.response")
def response(flow, reply):
    _saw("response", reply)
    raise ValueError(f"probe saw {reply!r}")


@rule(hooks.auth, id="probe.auth")
def auth(flow, auth):
    _saw("auth", auth, auth.outcome, flow.auth)
    raise ValueError(f"probe saw {auth!r} {flow.auth!r}")


@rule(hooks.mail_content, id="probe.content")
def content(flow, data):
    _saw("mail_content", data)


@rule(hooks.lenient_terminator, id="probe.lenient_terminator")
def lenient_terminator(flow, found):
    _saw("lenient_terminator", found)


@rule(hooks.attachment, id="probe.attachment")
def attachment(flow, att):
    _saw("attachment", att)


@rule(hooks.attachment, id="probe.attachment_stream", streamed=True)
async def attachment_stream(flow, content):
    async for chunk in content:
        _saw("attachment", content.entity, chunk)


@rule(hooks.url, id="probe.url")
def url(flow, found):
    _saw("url", found)


@rule(hooks.message_end, id="probe.message_end")
def message_end(flow, end):
    _saw("message_end", end)


@rule(hooks.transaction, id="probe.transaction")
def transaction(flow, record):
    _saw("transaction", record)


@rule(hooks.anomaly, id="probe.anomaly")
def anomaly(flow, record):
    _saw("anomaly", record)
    raise ValueError(f"probe saw {record!r}")


@rule(hooks.connection_end, id="probe.connection_end")
def connection_end(flow):
    _saw("connection_end", flow, flow.transaction)
'''


@pytest.fixture
def logs():
    """The sensor's log as it would be written (JSON lines), into a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    buf = io.StringIO()
    sensor_log.configure("debug", json=True, stream=buf)
    yield buf
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
    logging.captureWarnings(False)


@pytest.fixture
def rules_dir(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)          # the shipped rules, and the probe
    (folder / "probe.py").write_text(PROBE)
    return folder


CLI, SRV = pack_addr("192.0.2.10"), pack_addr("198.51.100.25")


def segments(dialogue, cut=700):
    """The TCP segments of ``dialogue``, each payload in pieces of at most ``cut``
    octets; a lost piece is a segment whose payload the capture did not keep (a gap)."""
    segs = [Segment(4, CLI, SRV, 40000, 25, 1000, 0, SYN, b"", 0, 0),
            Segment(4, SRV, CLI, 25, 40000, 7000, 1001, SYN | ACK, b"", 0, 0)]
    seq = {True: 1001, False: 7001}

    def send(from_client, piece, lost=False):
        src, dst, sp, dp = (CLI, SRV, 40000, 25) if from_client else (SRV, CLI, 25, 40000)
        payload = b"" if lost else piece
        segs.append(Segment(4, src, dst, sp, dp, seq[from_client], seq[not from_client],
                            PSH | ACK, payload, len(piece), 0))
        seq[from_client] += len(piece)

    for from_client, data, how in dialogue:
        if how == "cut":
            k = len(data) // 2
            parts = [(data[:k], False), (data[k:k + 3], True), (data[k + 3:], False)]
        else:
            parts = [(data, how == "lost")]
        for part, lost in parts:
            for i in range(0, len(part), cut):
                send(from_client, part[i:i + cut], lost)
    segs.append(Segment(4, CLI, SRV, 40000, 25, seq[True], seq[False], FIN | ACK, b"", 0, 0))
    segs.append(Segment(4, SRV, CLI, 25, 40000, seq[False], seq[True] + 1, FIN | ACK, b"", 0, 0))
    return segs


def run(rules_dir, dialogue, limits):
    out = io.StringIO()
    config = Config(sensor=SensorConfig(rules=rules_dir),
                    limits=LimitsConfig(smtp=SmtpLimits(**limits)))
    userland = Userland(config, JsonLinesSink(out), uid_seed=0)
    for i, seg in enumerate(segments(dialogue)):
        userland.pipeline.feed_segment(seg, 1000.0 + i * 0.01)
    userland.finish(1000.0 + 1000 * 0.01)
    probe = next(r for r in userland.engine.ruleset.rules if r.id == "probe.connection")
    return out.getvalue(), probe.fn.__globals__["SEEN"], userland


@pytest.mark.parametrize("name, fault, dialogue, limits", CASES,
                         ids=[f"{n}: {f}" for n, f, _, _ in CASES])
def test_no_output_holds_a_credential(rules_dir, logs, name, fault, dialogue, limits):
    records, seen, userland = run(rules_dir, dialogue, limits)
    log = logs.getvalue()
    probed = {r.hook for r in userland.engine.ruleset.rules if r.id.startswith("probe.")}
    assert probed == set(hooks.ALL), "the probe is on every hook"
    # the outputs are there, and the search would see a credential in them
    assert records and seen and "rule raised" in log
    assert userland.engine.counters.errors > 0
    assert found(repr(dialogue)), "the dialogue carries the credentials"
    for what, text in (("records", records), ("log", log), ("rule arguments", repr(seen))):
        assert found(text) == [], f"{what} of {name} ({fault}) hold a credential"
    for line in records.splitlines():
        json.loads(line)
    if fault == "clean":
        # not found because nothing was dissected? no: the mail after the AUTH is there
        smtp = [json.loads(line) for line in records.splitlines() if '"event_type":"smtp"' in line]
        assert [(r.get("mailfrom"), r.get("rcptto"), r["delivered"]) for r in smtp] == \
            [("alice@example.org", ["bob@example.net"], True)]
        assert any("verb='AUTH'" in args for hook, args in seen if hook == "command")


def test_the_search_finds_what_it_looks_for_and_nothing_else():
    assert found("x" + LOGIN_PASS.decode()[3:12].upper() + "y")
    assert found(PASSWORD.decode())
    # what the server says and the mail after the AUTH share no piece with the credentials
    public = [d for c, d in HELLO + AFTER] + [d for e in EXCHANGES.values() for c, d in e if not c]
    assert not found(repr(public) + repr(GARBAGE))

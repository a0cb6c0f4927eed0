"""Our smtp records of the Arkime captures against Arkime's own expected sessions.

Each ``expected/arkime/<name>.test`` holds the Arkime session documents
(``sessions3``) of ``arkime__<name>.pcap``, possibly several.  For every
session we compare what both sides know about the mail:

============  ===============================  ==========================================
field         Arkime                           ours (the smtp records of the same flow)
============  ===============================  ==========================================
community_id  network.community_id             community_id
helo          email.smtpHello                  helo
src           email.src                        mailfrom + the addresses of the From header
dst           email.dst                        rcptto + the addresses of the To and Cc headers
subject       email.subject                    subject
id            email.id                         msg_id without its <>
============  ===============================  ==========================================

Arkime puts the From header's addresses in email.src beside MAIL FROM (and
To/Cc beside RCPT TO in email.dst): arkime__smtp-moloch-bof shows it, its
email.src holds both ``ibmuser@`` (MAIL FROM) and ``matt@`` (From:).  So
``src``/``dst`` compare against the union on our side.

Arkime lower-cases addresses and HELO names; ``src``, ``dst`` and ``helo``
are compared case-insensitively (casefolded on both sides).  Subjects and
message ids are compared exactly.

Where Arkime and we legitimately differ, the difference is pinned in
``DIFFERENCES`` with both values and the reason: the test fails if either
side changes, so a pin can neither hide a regression nor outlive its reason.
"""

from __future__ import annotations

import json
from email.utils import getaddresses
from pathlib import Path

import pytest

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig
from sensor.inputs.replay import replay
from sensor.records.sinks import ListSink
from sensor.stream.flowid import community_id
from sensor.stream.reassembly import DEFAULT_PORTS
from support.captures import PCAPS_DIR

ARKIME_DIR = PCAPS_DIR / "expected" / "arkime"
NAMES = sorted(p.stem for p in ARKIME_DIR.glob("*.test")) if ARKIME_DIR.is_dir() else []
FIELDS = ("community_id", "helo", "src", "dst", "subject", "id")

#: Ports beyond 25 and 587 a capture needs to be compared at all.
#: smtp-decrypted holds two relay sessions to port 2525 besides two on port 25.
EXTRA_PORTS = {"smtp-decrypted": (2525,)}

_AFTER_STARTTLS = (
    "the session did STARTTLS and the capture stores the rest decrypted; Arkime parses "
    "that as SMTP, we stop at the 220 to STARTTLS by design (live, the rest of the flow "
    "is encrypted and the kernel bypasses it), so the envelope and message are not ours")

#: (test name, client port, field) -> (Arkime's value, ours, why they differ)
DIFFERENCES: dict[tuple[str, int, str], tuple[list, list, str]] = {
    ("smtp-moloch-bof", 50328, "subject"): (
        [" MIME test"], ["MIME test"],
        "the header is 'Subject:  MIME test' (two spaces); like Python's email package and "
        "Zeek we strip the white space around a field body, Arkime strips one space only"),
    ("smtp-subject-multi-nospace", 58802, "subject"): (
        ["xxxxxxxxxxxxx: xxxxêxx xxéxxxxxxx  xx xxx xxx xxxxxxxxxx  x xx xxxxxxxxxxxxxxx - xxxx"],
        ["xxxxxxxxxxxxx: xxxxêxx xxéxxxxxxxxx xxx xxx xxxxxxxxxxx xx xxxxxxxxxxxxxxx - xxxx"],
        "encoded words separated by folding white space ('?=\\r\\n  =?'): RFC 2047 6.2 says "
        "that white space is ignored, we drop it; Arkime keeps the two spaces"),
    ("smtp-subject-windows", 40531, "subject"): (
        ["Awesome windows: See What’s Next in charset decoding!"],
        ["Awesome windows: See What\\x92s Next in charset decoding!"],
        "a raw 0x92 octet (windows-1252 right quote) in an unencoded Subject: Arkime guesses "
        "windows-1252; we decode header octets as UTF-8 with backslashreplace "
        "(sensor/smtp/events.py), no charset guessing, so the octet stays visible as \\x92"),
    **{("smtp-decrypted", port, field): (arkime, [], _AFTER_STARTTLS)
       for port, values in {
           49475: {"src": ["papanoel@intradef.gouv.fr"],
                   "dst": ["aponcelet@shewa.intradef.gouv.fr"],
                   "subject": ["Ho ho ho"],
                   "id": ["964329.815327318-sendEmail@intra-mx2"]},
           41347: {"src": ["papanoel@intradef.gouv.fr"],
                   "dst": ["aponcelet@shewa.intradef.gouv.fr"],
                   "subject": ["Ho ho ho"],
                   "id": ["216179.502054246-sendEmail@intra-mx2"]},
           28120: {"src": ["bg1bulma@bg1.shewa.intradef.gouv.fr"],
                   "dst": ["naruto@shewa.intradef.gouv.fr"],
                   "subject": ["test sans pi7ce joint"],
                   "id": ["aef51e3ea08644119c921e966163a822@bg1.shewa.intradef.gouv.fr"]},
           28134: {"src": ["bg1bulma@bg1.shewa.intradef.gouv.fr"],
                   "dst": ["naruto@shewa.intradef.gouv.fr"],
                   "subject": ["test avec pj"],
                   "id": ["c960c96baa8943f18d71112fcfbfafbd@bg1.shewa.intradef.gouv.fr"]},
       }.items() for field, arkime in values.items()},
}

#: Captures whose SMTP Arkime sees and we do not dissect at all with the default ports.
NOT_OURS = {
    "socks5-smtp-503": (
        "SMTP inside a SOCKS5 tunnel to port 1080: Arkime unwraps SOCKS and finds EHLO "
        "(helo 'user'); port 1080 is not an SMTP port and we do not speak SOCKS, so no "
        "record (it is dissectable only if configured, and the SOCKS framing then garbles "
        "the first lines)"),
}


def arkime_sessions(name: str) -> list[dict]:
    doc = json.loads((ARKIME_DIR / f"{name}.test").read_text(encoding="utf-8"))
    return [s["body"] for s in doc["sessions3"]]


def fold(values) -> list[str]:
    return sorted({v.casefold() for v in values})


def addresses(*values: str) -> list[str]:
    return [addr for _, addr in getaddresses(list(values)) if addr]


def arkime_view(body: dict) -> dict:
    email = body.get("email", {})
    return {
        "community_id": [body["network"]["community_id"]],
        "helo": fold(email.get("smtpHello", [])),
        "src": fold(email.get("src", [])),
        "dst": fold(email.get("dst", [])),
        "subject": list(email.get("subject", [])),
        "id": sorted(email.get("id", [])),
    }


def our_view(records: list[dict]) -> dict:
    src, dst, subjects, ids, helos = set(), set(), [], set(), set()
    for r in records:
        if "helo" in r:
            helos.add(r["helo"])
        if r.get("mailfrom"):
            src.add(r["mailfrom"])
        src.update(addresses(r["from"]) if "from" in r else ())
        dst.update(r.get("rcptto", ()))
        dst.update(addresses(*r.get("to", ()), *r.get("cc", ())))
        if "subject" in r and r["subject"] not in subjects:
            subjects.append(r["subject"])
        if "msg_id" in r:
            ids.add(r["msg_id"].strip().removeprefix("<").removesuffix(">"))
    return {
        "community_id": sorted({r["community_id"] for r in records}),
        "helo": fold(helos),
        "src": fold(src),
        "dst": fold(dst),
        "subject": subjects,
        "id": sorted(ids),
    }


def smtp_records(pcaps_dir: Path, name: str, ports=DEFAULT_PORTS) -> list[dict]:
    sink = ListSink()
    replay(pcaps_dir / f"arkime__{name}.pcap", Userland(Config(sensor=SensorConfig(ports=tuple(ports))), sink))
    return sink.of("smtp")


def flow_of(body: dict) -> tuple:
    return (body["source"]["ip"], body["source"]["port"],
            body["destination"]["ip"], body["destination"]["port"])


@pytest.mark.parametrize("name", NAMES)
def test_arkime_session_community_id_equals_ours_for_the_same_tuple(pcaps_dir, name):
    """Community ID v1 of every Arkime session, SMTP or not, from its 5-tuple."""
    for body in arkime_sessions(name):
        assert body["ipProtocol"] == 6
        src, sport, dst, dport = flow_of(body)
        assert community_id(src, dst, 6, sport, dport) == body["network"]["community_id"]


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NOT_OURS])
def test_smtp_fields_equal_arkime_or_differ_as_pinned(pcaps_dir, name):
    ports = tuple(DEFAULT_PORTS) + EXTRA_PORTS.get(name, ())
    records = smtp_records(pcaps_dir, name, ports)
    sessions = arkime_sessions(name)
    problems = []
    seen_flows = set()
    for body in sessions:
        flow = flow_of(body)
        mine = [r for r in records
                if (r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"]) == flow]
        if "smtp" not in body["protocol"]:
            # Not SMTP for Arkime either (smtp-html: one MIME fragment on port 8000).
            assert "email" not in body and mine == [], (name, flow)
            continue
        assert mine, f"{name}: no smtp record for Arkime's session {flow}"
        seen_flows.add(flow)
        theirs, ours = arkime_view(body), our_view(mine)
        for field in FIELDS:
            pin = DIFFERENCES.get((name, flow[1], field))
            if pin is None:
                if theirs[field] != ours[field]:
                    problems.append(f"{flow} {field}: Arkime {theirs[field]!r} != ours {ours[field]!r}")
            elif (theirs[field], ours[field]) != pin[:2]:
                problems.append(f"{flow} {field}: pinned difference changed: Arkime "
                                f"{theirs[field]!r} (pinned {pin[0]!r}), ours {ours[field]!r} "
                                f"(pinned {pin[1]!r}); reason was: {pin[2]}")
    extra = {(r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"])
             for r in records} - seen_flows
    assert not extra, f"{name}: smtp records of flows Arkime does not know: {extra}"
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_every_pinned_difference_names_an_existing_session(pcaps_dir):
    known = {(name, flow_of(b)[1]) for name in NAMES for b in arkime_sessions(name)}
    assert NAMES, f"no Arkime expectations in {ARKIME_DIR}"
    for name, port, field in DIFFERENCES:
        assert (name, port) in known and field in FIELDS, (name, port, field)
    assert set(NOT_OURS) <= set(NAMES)


def test_relay_sessions_on_port_2525_need_the_port_configured(pcaps_dir):
    """smtp-decrypted: with the default ports only the two port-25 sessions are ours."""
    default = {r["id.resp_p"] for r in smtp_records(pcaps_dir, "smtp-decrypted")}
    arkime_ports = sorted(b["destination"]["port"] for b in arkime_sessions("smtp-decrypted"))
    assert arkime_ports == [25, 25, 2525, 2525]
    assert default == {25}


@pytest.mark.parametrize("name", sorted(NOT_OURS))
def test_smtp_that_arkime_finds_off_our_ports_gives_no_record(pcaps_dir, name):
    sessions = arkime_sessions(name)
    assert any("smtp" in b["protocol"] for b in sessions)
    assert all(b["destination"]["port"] not in DEFAULT_PORTS for b in sessions)
    # pinned: what Arkime found there, and that we find nothing (reason in NOT_OURS)
    assert [arkime_view(b)["helo"] for b in sessions] == [["user"]]
    assert smtp_records(pcaps_dir, name) == []

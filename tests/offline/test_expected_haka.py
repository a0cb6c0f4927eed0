"""The Haka seed's capture against what Haka's own tests expect of it.

``expected/haka/smtp_command_response-ref.txt`` is the output of Haka's
sample rule printing every ``smtp.events.command`` and
``smtp.events.response``; ``smtp_mail_content-ref.txt`` the output of the
streamed ``smtp.events.mail_content`` rule (``print`` of the concatenated
chunks).  We replay ``haka__smtp.pcap`` through the pipeline with a listener
collecting the dissector's Command, Reply and MailContent events.
"""

from __future__ import annotations

import re

import pytest

from sensor.assembly import Userland
from sensor.config import Config
from sensor.inputs.replay import replay
from sensor.records.sinks import ListSink
from sensor.smtp.events import Command, MailContent, MessageEnd, Reply

CAPTURE = "haka__smtp.pcap"
_FIELD = re.compile(r'\s*(\w+) : "(.*)"\Z')
_CONN = re.compile(r"debug conn: opening connection ([\d.]+):(\d+) -> ([\d.]+):(\d+)\Z")


def parse_command_response_ref(text: str) -> list[tuple]:
    """The "SMTP COMMAND" / "SMTP RESPONSE" blocks, in order, as
    ``("C", command, parameter)`` and ``("R", ((code, parameter), ...))``.
    A command printed without a parameter (DATA, QUIT) has parameter ""."""
    out: list[tuple] = []
    kind = None
    fields: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line in ("SMTP COMMAND", "SMTP RESPONSE"):
            kind, fields = line, []
        elif kind and line == "}":            # end of the block's outer Result
            if kind == "SMTP COMMAND":
                got = dict(fields)
                out.append(("C", got["command"], got.get("parameter", "")))
            else:
                # one (code, parameter, sep) per line of the reply
                codes = [v for k, v in fields if k == "code"]
                params = [v for k, v in fields if k == "parameter"]
                assert len(codes) == len(params), fields
                out.append(("R", tuple(zip(codes, params))))
            kind = None
        elif kind:
            m = _FIELD.match(line)
            if m:
                fields.append((m.group(1), m.group(2)))
    return out


def haka_connections(text: str) -> list[tuple[str, int, str, int]]:
    return [(m[1], int(m[2]), m[3], int(m[4]))
            for m in map(_CONN.match, text.splitlines()) if m]


@pytest.fixture(scope="module")
def dissected(pcaps_dir):
    events: list = []
    sink = ListSink()
    userland = Userland(Config(), sink)
    userland.pipeline.listeners.append(lambda s, e: events.append(e))
    replay(pcaps_dir / CAPTURE, userland)
    return events, sink


@pytest.fixture(scope="module")
def ref_dir(pcaps_dir):
    return pcaps_dir / "expected" / "haka"


def test_reference_file_parses_into_the_whole_dialogue(ref_dir):
    ref = parse_command_response_ref((ref_dir / "smtp_command_response-ref.txt").read_text())
    assert [r[1] if r[0] == "C" else r[1][0][0] for r in ref] == [
        "220", "HELO", "250", "MAIL", "250", "RCPT", "250", "DATA", "354", "250", "QUIT", "221"]


def test_every_command_and_reply_equals_the_haka_reference_in_order(dissected, ref_dir):
    events, _ = dissected
    want = parse_command_response_ref((ref_dir / "smtp_command_response-ref.txt").read_text())
    # Haka's "command" is the verb as sent, its "parameter" what follows the
    # blanks after it; a reply is one (code, text) per line.  Replies include
    # the greeting (our pseudo-command ">") and the reply after the message (".").
    got = []
    for ev in events:
        if type(ev) is Command:
            got.append(("C", ev.raw_verb, ev.parameter))
        elif type(ev) is Reply:
            got.append(("R", tuple((str(ev.code), line) for line in ev.lines)))
    assert got == want


def test_smtp_flow_is_the_haka_port_25_connection_and_http_is_ignored(dissected, ref_dir):
    _, sink = dissected
    conns = haka_connections((ref_dir / "smtp_command_response-ref.txt").read_text())
    assert len(conns) == 2      # one HTTP, one SMTP flow
    smtp_conns = [c for c in conns if c[3] == 25]
    ours = {(r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"]) for r in sink}
    assert ours == set(smtp_conns)


def test_mail_content_equals_the_haka_reference_plus_the_last_line_crlf(dissected, ref_dir):
    """Line endings, and why ours has two more octets than Haka printed.

    The reference file is read as bytes, so its CRLF and LF are kept as they
    were.  Between the markers it holds ``BLA BLA BLA ...<CR><LF>MORE BLA BLA
    BLA ...<LF>``: the final LF is the one Lua's ``print`` adds, not content.
    What Haka streamed ends right before ``<CR><LF>.<CR><LF>``, because its
    grammar (sample/smtp_dissector/smtp.lua, ``untiltoken("%r?%n%.%r?%n")``)
    counts the CRLF that ends the last line as part of the end marker.  RFC
    5321 4.1.1.4 counts it as the end of the last line of the message
    (the message is "...<CRLF>" followed by ".<CRLF>"), and so do we: our
    content is Haka's plus that CRLF, every other octet (the CRLF inside the
    body included) equal.
    """
    events, _ = dissected
    raw = (ref_dir / "smtp_mail_content-ref.txt").read_bytes()
    start = raw.index(b"== Mail Content ==\n") + len(b"== Mail Content ==\n")
    end = raw.index(b"== End Mail Content ==\n")
    printed = raw[start:end]
    assert printed.endswith(b"\n")
    haka_content = printed[:-1]                 # drop print's newline
    assert b"\r\n" in haka_content              # the body's own CRLF survived in the file

    ours = b"".join(ev.data for ev in events if type(ev) is MailContent)
    assert ours == haka_content + b"\r\n"
    (end_ev,) = [ev for ev in events if type(ev) is MessageEnd]
    assert end_ev.complete and end_ev.size == len(ours) == 39
    assert (end_ev.bare_lf, end_ev.bare_cr, end_ev.smuggled_terminators) == (0, 0, ())

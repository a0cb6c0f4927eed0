"""Cross-check of our SMTP dissector against tshark on the public captures.

For every ``tests/data/pcaps/*.pcap`` (the public captures, kept in the repository),
every command and every reply tshark sees must be seen by us, in the same
order per connection, and we must see nothing more:

* a command: verb compared on its first 4 letters, upper-cased; parameter after
  whitespace normalisation (tshark's own cut: octets from the 6th on);
* a reply: code, and the text of every line after whitespace normalisation.

Commands and replies are two sequences per connection (their interleaving is
not compared: we emit a reply when it is matched, tshark in frame order); but
none of our replies may answer a command that tshark saw sent after it.

tshark has blind spots (see ``tests/data/pcaps/README.md``).  Each is a
named rule below, applied only where its condition holds; everything else in
the same capture and connection is still compared.  Every time a rule applies
it is recorded, and a rule may only apply to the captures listed for it in
``RULE_CAPTURES`` (a new capture or a new tshark needing a rule elsewhere
fails the test, so that someone looks).

Prerequisites: tshark (installed by ``./run setup``) and the captures; when
either is missing the test fails under CI=true, else skips.  One tshark run
per capture, all in parallel: the whole module takes a few seconds.
"""

from __future__ import annotations

import difflib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from sensor.smtp import SMTPConnection
from sensor.smtp import events as sev
from sensor.stream import reassembly
from support import tshark_smtp as ts

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
from support.captures import PCAPS_DIR as PCAPS

PORTS = frozenset(reassembly.DEFAULT_PORTS)

# ----------------------------------------------------------------------- rules
#
# Names of the exceptions to a plain comparison.  Each one is applied in
# ``compare`` where marked ``# RULE <name>``.

#: The connection is SMTP on ports we are not configured for (SOCKS5 tunnel:
#: tshark follows the SOCKS CONNECT to port 25 inside a flow to port 1080).
#: We do not track it at all (asserted); nothing of it is compared.
OUT_OF_PORTS = "OUT_OF_PORTS"

#: AUTH with an initial response: tshark shows the credentials as part of the
#: parameter; we deliberately report the mechanism only (credentials never
#: appear in any event).  Only the first word of tshark's parameter is compared.
AUTH_INITIAL_RESPONSE = "AUTH_INITIAL_RESPONSE"

#: A client line right after a 334 is a SASL answer.  tshark shows it as
#: smtp.auth.* (never a command, nothing to drop) or, for mechanisms it does not
#: follow, takes it for a command line; we never emit a Command for it (it is
#: credentials).  Such tshark "commands" (the first client line after a 334
#: reply, in tshark's own sequence) are dropped; the reply to them is compared.
SASL_ANSWER = "SASL_ANSWER"

#: After 220 to STARTTLS we stop (the live sensor bypasses the flow: the rest is
#: TLS).  tshark goes on when the rest was stored decrypted (arkime-decrypted).
#: tshark's commands after the STARTTLS command and replies after its 220 are
#: not compared, only when we did emit StartTLS for this connection.
AFTER_STARTTLS = "AFTER_STARTTLS"

#: tshark takes client octets sent before any server reply for message text
#: (packet-smtp.c: SMTP_STATE_START -> SMTP_PDU_MESSAGE), so it never sees the
#: commands of a client that speaks first (arkime moloch-bof, subject-windows,
#: the client-only subject-multi-nospace).  Our commands read from a client
#: frame that tshark shows as text and not as a command, sent before tshark's
#: first reply in the connection, are not compared.  The replies are.
CLIENT_FIRST = "CLIENT_FIRST"

#: tshark dissects nothing after the end-of-data dot in the same segment
#: (packet-smtp.c: "XXX - what about stuff after the first line?"), so a
#: command pipelined right after ``.`` (QUIT, in several Arkime captures) is
#: unseen.  Our commands read from the frame where tshark saw smtp.eom, after
#: our MessageEnd at that frame, are not compared.  The reply to it is.
AFTER_EOM = "AFTER_EOM"

#: tshark's multi-line state lives for one segment: a reply whose lines are cut
#: between two segments shows as two replies of the same code.  A tshark reply
#: from a segment whose last line is a continuation (``220-...``) is joined to
#: the next reply when it has the same code and comes from the next server frame.
SPLIT_REPLY = "SPLIT_REPLY"

#: which captures each rule may apply to (see the module docstring).
RULE_CAPTURES = {
    OUT_OF_PORTS: {"arkime__socks5-smtp-503.pcap"},
    AUTH_INITIAL_RESPONSE: {"arkime__smtp-data-250.pcap"},
    # the only capture with a SASL answer line: tshark 4.0 shows it as
    # smtp.auth.username_password (the rule does not apply), older ones may not.
    SASL_ANSWER: {"arkime__smtp-data-521.pcap"},
    AFTER_STARTTLS: {"arkime__smtp-decrypted.pcap"},
    CLIENT_FIRST: {"arkime__smtp-moloch-bof.pcap", "arkime__smtp-subject-windows.pcap",
                   "arkime__smtp-subject-multi-nospace.pcap"},
    AFTER_EOM: {"arkime__smtp-moloch-bof.pcap", "arkime__smtp-subject-utf8-q.pcap"},
    SPLIT_REPLY: {"arkime__smtp-subject-windows.pcap"},
}


# ------------------------------------------------------------------ comparison


def _our_line(cmd: sev.Command) -> str:
    """The command line as sent (for AUTH: verb and mechanism only)."""
    return f"{cmd.raw_verb} {cmd.parameter}" if cmd.parameter else cmd.raw_verb


def _fmt_cmd(verb: str, param: str) -> str:
    return f"C {verb.upper()} {param}".rstrip()


def _fmt_reply(code: int, lines) -> str:
    return f"S {code} " + " | ".join(lines)


def _reply_lines(lines, ours: bool):
    # tshark gives no parameter for a line made of the code alone: empty lines
    # are left out on both sides.
    out = [ts.norm_text(line, ours) for line in lines]
    return [line for line in out if line]


def _frames_at(tconn: ts.TConn, when: float, client: bool):
    return [f for f in tconn.frames.values()
            if f.from_client == client and abs(f.ts - when) < 5e-7]


def _tshark_side(tconn: ts.TConn, ours: list, fired: list):
    """tshark's commands and replies of one connection, after the rules."""
    items = list(tconn.items)
    # RULE AFTER_STARTTLS
    if any(isinstance(e, sev.StartTLS) for e in ours):
        start = next((i for i, it in enumerate(items) if isinstance(it, ts.TCommand)
                      and it.line.upper().startswith("STARTTLS")), None)
        if start is not None:
            ok = next((i for i in range(start + 1, len(items))
                       if isinstance(items[i], ts.TReply) and items[i].code == 220), None)
            if ok is not None:
                # client lines after STARTTLS are never read as commands by us (TLS,
                # or STARTTLS_PLAINTEXT_INJECTION when plaintext was pipelined)
                rest = [it for it in items[start + 1:] if isinstance(it, ts.TCommand)]
                rest += [it for it in items[ok + 1:] if isinstance(it, ts.TReply)]
                if rest:
                    fired.append((AFTER_STARTTLS, f"{len(rest)} items after frame "
                                                  f"{items[ok].frame}"))
                keep = set(map(id, rest))
                items = [it for it in items if id(it) not in keep]
    # RULE SASL_ANSWER
    kept = []
    for it in items:
        prev = kept[-1] if kept else None
        if (isinstance(it, ts.TCommand) and isinstance(prev, ts.TReply) and prev.code == 334):
            fired.append((SASL_ANSWER, f"frame {it.frame}"))
            continue
        kept.append(it)
    items = kept
    commands = [it for it in items if isinstance(it, ts.TCommand)]
    replies: list = []
    for it in items:
        if not isinstance(it, ts.TReply):
            continue
        prev = replies[-1] if replies else None
        # RULE SPLIT_REPLY
        if prev is not None and prev.code == it.code and prev.frame != it.frame:
            pf = tconn.frames[prev.frame]
            server_frames = sorted(n for n, f in tconn.frames.items() if not f.from_client)
            nxt = next((n for n in server_frames if n > prev.frame), None)
            first_of_frame = next(r for r in tconn.items
                                  if isinstance(r, ts.TReply) and r.frame == it.frame) is it
            if (ts.is_continuation(ts.last_line(pf.payload)) and nxt == it.frame
                    and first_of_frame):
                fired.append((SPLIT_REPLY, f"frames {prev.frame}+{it.frame}"))
                replies[-1] = ts.TReply(prev.frame, prev.code, prev.lines + it.lines,
                                        prev.first_line)
                continue
        replies.append(it)
    return commands, replies


def _our_side(ours: list, tconn: ts.TConn | None, fired: list):
    """Our commands and replies of one connection, after the rules."""
    commands, replies = [], []
    first_reply = None
    if tconn is not None:
        first_reply = min((it.frame for it in tconn.items if isinstance(it, ts.TReply)),
                          default=None)
    last_end = None   # ts of our last MessageEnd, if no command came since
    for ev in ours:
        if isinstance(ev, sev.MessageEnd):
            last_end = ev.ts
        elif isinstance(ev, sev.Reply):
            replies.append(ev)
        elif isinstance(ev, sev.Command):
            frames = _frames_at(tconn, ev.ts, True) if tconn is not None else []
            only = frames[0] if len(frames) == 1 else None
            seen_as_text = only is not None and only.text and not only.commands
            # RULE CLIENT_FIRST
            if seen_as_text and (first_reply is None or only.number < first_reply):
                fired.append((CLIENT_FIRST, f"{ev.raw_verb} in frame {only.number}"))
                continue
            # RULE AFTER_EOM
            if (only is not None and only.eom and not only.commands
                    and last_end is not None and last_end == ev.ts):
                fired.append((AFTER_EOM, f"{ev.raw_verb} in frame {only.number}"))
                continue
            last_end = None
            commands.append(ev)
    return commands, replies


def compare(tconns, oconns, ports=PORTS):
    """Return (differences as text, rules applied as (name, detail))."""
    fired: list = []
    problems: list[str] = []
    ours_by_key: dict = {}
    for oc in oconns:
        ours_by_key.setdefault((oc.client, oc.server), []).append(oc)
    theirs_by_key: dict = {}
    for tc in tconns:
        theirs_by_key.setdefault((tc.client, tc.server), []).append(tc)
    for key in list(dict.fromkeys([*theirs_by_key, *ours_by_key])):
        tlist, olist = theirs_by_key.get(key, []), ours_by_key.get(key, [])
        client, server = key
        # RULE OUT_OF_PORTS
        if client[1] not in ports and server[1] not in ports:
            fired.append((OUT_OF_PORTS, f"{client} -> {server}"))
            if olist:
                problems.append(f"{client} -> {server}: dissected although not on {sorted(ports)}")
            continue
        for n in range(max(len(tlist), len(olist))):
            tconn = tlist[n] if n < len(tlist) else None
            ours = olist[n].events if n < len(olist) else []
            t_cmds, t_reps = _tshark_side(tconn, ours, fired) if tconn else ([], [])
            o_cmds, o_reps = _our_side(ours, tconn, fired)
            want, got = [], []
            for c in t_cmds:
                want.append(_fmt_cmd(c.verb, ts.norm_text(c.parameter)))
            for c in o_cmds:
                line = _our_line(c)
                param = ts.norm_text(line[5:], ours=True)
                if c.verb == "AUTH":
                    # RULE AUTH_INITIAL_RESPONSE (the tshark side is cut to match)
                    i = len(got)
                    if i < len(t_cmds) and t_cmds[i].verb.upper() == "AUTH":
                        words = ts.norm_text(t_cmds[i].parameter).split(" ")
                        if len(words) > 1:
                            fired.append((AUTH_INITIAL_RESPONSE, f"frame {t_cmds[i].frame}"))
                            want[i] = _fmt_cmd("AUTH", words[0])
                got.append(_fmt_cmd(line[:4], param))
            for r in t_reps:
                want.append(_fmt_reply(r.code, _reply_lines(r.lines, False)))
            for r in o_reps:
                got.append(_fmt_reply(r.code, _reply_lines(r.lines, True)))
            where = f"{client} -> {server} (tshark stream {tconn.stream if tconn else '-'})"
            if want != got:
                diff = "\n".join(difflib.unified_diff(want, got, "tshark", "ours", lineterm=""))
                problems.append(f"{where}:\n{diff}")
                continue
            # Same sequences: our reply-to-command matching must agree with
            # tshark's timeline (no reply answers a command sent after it).
            frame_of = {id(o): t.frame for o, t in zip(o_cmds, t_cmds)}
            for o, t in zip(o_reps, t_reps):
                sent = frame_of.get(id(o.request))
                if sent is not None and sent > t.frame:
                    problems.append(f"{where}: our {o.code} (frame {t.frame}) answers "
                                    f"{o.command} sent later, in frame {sent}")
    return problems, fired


# ----------------------------------------------------------------------- tests


def _missing(what: str):
    message = f"prerequisite missing: {what}"
    if IN_CI:
        pytest.fail(message + " (CI=true: the tshark cross-check must run, not skip)",
                    pytrace=False)
    pytest.skip(message)


CAPTURES = sorted(PCAPS.glob("*.pcap"))


@pytest.fixture(scope="module")
def readings():
    """Both readings of every capture: tshark runs in parallel, once per capture."""
    if not ts.tshark_path():
        _missing("tshark (installed by ./run setup)")

    def both(path):
        return ts.run_tshark(path, PORTS), ts.run_ours(path)[0]

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) + 2)) as pool:
        return dict(zip(CAPTURES, pool.map(both, CAPTURES)))


def test_captures_present():
    assert len(CAPTURES) == 24, f"the public captures and the lab's in {PCAPS}"


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_tshark_agrees(path, readings):
    tconns, oconns = readings[path]
    problems, fired = compare(tconns, oconns)
    misplaced = [(rule, detail) for rule, detail in fired
                 if path.name not in RULE_CAPTURES[rule]]
    assert not misplaced, (f"{path.name}: rules applied where not expected "
                           f"(see RULE_CAPTURES): {misplaced}")
    assert not problems, f"{path.name}: tshark and we disagree:\n" + "\n\n".join(problems)


# ------------------------------------------- the rules stay narrow (no tshark)
#
# A small imitation of tshark's reading (each step one frame; client lines cut
# at 4/5 octets, server lines grouped into replies) against our dissector, to
# pin that the rules apply only where their condition holds.

GREETING = ("S", b"220 mx ESMTP\r\n")


def _imitate(script, text_frames=(), eom_frames=()):
    """(tshark-like TConn, our OurConn) for a dialogue: a list of ("C"|"S", octets)."""
    client, server = ("192.0.2.1", 40000), ("192.0.2.2", 25)
    tconn = ts.TConn(0, client, server)
    ours = ts.OurConn(client, server)
    conn = SMTPConnection()
    for n, (who, data) in enumerate(script, start=1):
        when = float(n)
        tconn.frames[n] = frame = ts.TFrame(n, when, who == "C", payload=data)
        events = (conn.receive_client if who == "C" else conn.receive_server)(data, when)
        ours.events += [e for e in events if isinstance(e, ts._KEEP)]
        lines = data.decode().split("\r\n")[:-1]
        if who == "C" and n in text_frames:
            frame.text = True
            frame.eom = n in eom_frames
        elif who == "C":
            for line in lines:
                tconn.items.append(ts.TCommand(n, line[:4], line[5:], line))
                frame.commands += 1
        else:
            group = None
            for line in lines:
                if group is None:
                    group = ts.TReply(n, int(line[:3]), [], line)
                group.lines.append(line[4:])
                if line[3:4] != "-":
                    tconn.items.append(group)
                    frame.replies += 1
                    group = None
            if group is not None:   # cut at the end of the segment, as tshark does
                tconn.items.append(group)
                frame.replies += 1
    ours.events += [e for e in conn.close(float(len(script) + 1)) if isinstance(e, ts._KEEP)]
    return tconn, ours


def test_rules_plain_session_needs_none():
    tconn, ours = _imitate([GREETING, ("C", b"EHLO c\r\n"), ("S", b"250-mx\r\n250 8BITMIME\r\n"),
                            ("C", b"MAIL FROM:<a@b>\r\n"), ("S", b"250 ok\r\n"),
                            ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n")])
    assert compare([tconn], [ours]) == ([], [])


def test_rules_a_different_parameter_is_reported():
    tconn, ours = _imitate([GREETING, ("C", b"MAIL FROM:<a@b>\r\n"), ("S", b"250 ok\r\n")])
    tconn.items[1].parameter = "FROM:<x@b>"
    problems, fired = compare([tconn], [ours])
    assert fired == [] and "-C MAIL FROM:<x@b>" in problems[0]


def test_rule_sasl_answer_drops_only_the_line_after_334():
    secret = b"YWxpY2UgMDEyMzQ1Njc4OWFiY2RlZg=="
    tconn, ours = _imitate([GREETING, ("C", b"AUTH CRAM-MD5\r\n"), ("S", b"334 PDEyMz4=\r\n"),
                            ("C", secret + b"\r\n"), ("S", b"235 ok\r\n"),
                            ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n")])
    problems, fired = compare([tconn], [ours])
    assert problems == [] and [r for r, _ in fired] == [SASL_ANSWER]
    assert secret.decode() not in repr(ours.events)


def test_rule_auth_initial_response_compares_the_mechanism():
    tconn, ours = _imitate([GREETING, ("C", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
                            ("S", b"235 ok\r\n")])
    problems, fired = compare([tconn], [ours])
    assert problems == [] and [r for r, _ in fired] == [AUTH_INITIAL_RESPONSE]
    tconn.items[1].parameter = "LOGIN AGFsaWNlAHNlY3JldA=="
    problems, _ = compare([tconn], [ours])
    assert problems, "another mechanism must be reported"


def test_rule_client_first_stops_at_the_first_reply():
    script = [("C", b"EHLO c\r\n"), GREETING, ("S", b"250 mx\r\n"),
              ("C", b"MAIL FROM:<a@b>\r\n"), ("S", b"250 ok\r\n")]
    tconn, ours = _imitate(script, text_frames={1})
    problems, fired = compare([tconn], [ours])
    assert problems == [] and [r for r, _ in fired] == [CLIENT_FIRST]
    # a command after the first reply that tshark shows as text is a difference
    tconn, ours = _imitate(script, text_frames={1, 4})
    problems, _ = compare([tconn], [ours])
    assert problems and "+C MAIL FROM:<a@b>" in problems[0]


def test_rule_after_starttls_needs_our_starttls():
    script = [GREETING, ("C", b"STARTTLS\r\n"), ("S", b"220 go\r\n"),
              ("C", b"EHLO c\r\n"), ("S", b"250 mx\r\n")]
    tconn, ours = _imitate(script)
    problems, fired = compare([tconn], [ours])
    assert problems == [] and [r for r, _ in fired] == [AFTER_STARTTLS]
    ours.events = [e for e in ours.events if not isinstance(e, sev.StartTLS)]
    problems, fired = compare([tconn], [ours])
    assert problems and fired == []


def test_rule_split_reply_joins_only_a_cut_reply():
    tconn, ours = _imitate([("S", b"220-mx\r\n"), ("S", b"220-more\r\n220 ready\r\n"),
                            ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n")])
    problems, fired = compare([tconn], [ours])
    assert problems == [] and [r for r, _ in fired] == [SPLIT_REPLY]
    # two complete replies of the same code in two segments stay two
    tconn, ours = _imitate([GREETING, ("C", b"NOOP\r\n"), ("S", b"250 a\r\n"),
                            ("C", b"NOOP\r\n"), ("S", b"250 b\r\n")])
    assert compare([tconn], [ours]) == ([], [])


def test_rule_after_eom_only_in_the_frame_of_our_message_end():
    script = [GREETING, ("C", b"DATA\r\n"), ("S", b"354 go\r\n"),
              ("C", b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
              ("S", b"250 queued\r\n221 bye\r\n")]
    tconn, ours = _imitate(script, text_frames={4}, eom_frames={4})
    problems, fired = compare([tconn], [ours])
    assert problems == [] and [r for r, _ in fired] == [AFTER_EOM]
    # QUIT in a later segment of its own: tshark must show it, else it is a difference
    script[3:4] = [("C", b"body\r\n.\r\n"), ("C", b"QUIT\r\n")]
    tconn, ours = _imitate(script, text_frames={4, 5}, eom_frames={4, 5})
    problems, fired = compare([tconn], [ours])
    assert fired == [] and problems and "+C QUIT" in problems[0]

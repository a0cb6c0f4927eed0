"""Helpers for the rule engine's unit tests (tests/unit/test_rules_*.py): a
synthetic SMTP session through a bare Pipeline with a RuleEngine as its only
listener, rules declared in the test itself or written to a tmp rules
directory, a logger that keeps what it is told, and an enforcer that keeps
the verdicts in order.  The pipeline has no gate on purpose: the engine's
own handling of a dropped flow's later events (late_events) is what these
tests pin.  The sensor's userland, gate and statistics included, is
sensor.assembly.Userland (tests/unit/test_assembly.py, tests/offline)."""

from __future__ import annotations

import itertools
import os
import textwrap
from pathlib import Path

from sensor import smtp
from sensor.pipeline import Pipeline
from sensor.records.sinks import ListSink
from sensor.rules import hooks
from sensor.rules.enforce import ReplayEnforcer
from sensor.rules.engine import RuleEngine
from support.sessions import session_segments  # noqa: F401  (re-exported)

CLIENT_IP, SERVER_IP = "192.0.2.10", "198.51.100.25"

#: greeting, EHLO, one transaction (2 RCPT, one rejected), the message, QUIT.
DIALOGUE = [
    (False, b"220 mx.example ESMTP\r\n"),
    (True, b"EHLO client.example\r\n"),
    (False, b"250-mx.example\r\n250 PIPELINING\r\n"),
    (True, b"MAIL FROM:<alice@example.org>\r\n"),
    (False, b"250 2.1.0 Ok\r\n"),
    (True, b"RCPT TO:<bob@example.net>\r\n"),
    (False, b"250 2.1.5 Ok\r\n"),
    (True, b"RCPT TO:<nobody@example.net>\r\n"),
    (False, b"550 5.1.1 No such user\r\n"),
    (True, b"DATA\r\n"),
    (False, b"354 go ahead\r\n"),
    (True, b"Subject: hello\r\n\r\n" + (b"0123456789abcdef" * 4 + b"\r\n") * 16 + b".\r\n"),
    (False, b"250 2.0.0 queued as X1\r\n"),
    (True, b"QUIT\r\n"),
    (False, b"221 bye\r\n"),
]
#: the content the dialogue's message delivers (after the dot-unstuffing: none here)
CONTENT = DIALOGUE[11][1][: -len(b".\r\n")]


def message_dialogue(content: bytes, *, mailfrom=b"alice@example.org", messages=1) -> list:
    """A dialogue sending ``content`` (already dot-stuffed, ends with CRLF) ``messages`` times."""
    d = [(False, b"220 mx\r\n"), (True, b"EHLO c.example\r\n"), (False, b"250 mx\r\n")]
    for _ in range(messages):
        d += [(True, b"MAIL FROM:<" + mailfrom + b">\r\n"), (False, b"250 ok\r\n"),
              (True, b"RCPT TO:<bob@example.net>\r\n"), (False, b"250 ok\r\n"),
              (True, b"DATA\r\n"), (False, b"354 go\r\n"),
              (True, content + b".\r\n"), (False, b"250 queued\r\n")]
    return d + [(True, b"QUIT\r\n"), (False, b"221 bye\r\n")]


class StaticRules:
    """A RuleSet stand-in holding rules declared in the test (``@rule`` sets ``fn.__rule__``)."""

    def __init__(self, *fns):
        self.by_hook = {h.name: [] for h in hooks.ALL}
        for fn in fns:
            self.by_hook[fn.__rule__.hook.name].append(fn.__rule__)


class RecordingLogger:
    """structlog-like: ``logger.error("msg", key=value)`` kept as (level, msg, kw)."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        if level.startswith("_"):
            raise AttributeError(level)
        return lambda message, **kw: self.calls.append((level, message, kw))

    def of(self, level: str) -> list[tuple[str, dict]]:
        return [(m, kw) for lv, m, kw in self.calls if lv == level]


class RecordingEnforcer(ReplayEnforcer):
    """A replay enforcer that also keeps every verdict call, in order."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def drop_flow(self, flow, ttl, now, reset=True):
        self.calls.append(("drop_flow", flow.uid, ttl, reset))
        super().drop_flow(flow, ttl, now, reset)

    def ban(self, network, ttl, now, **kw):
        self.calls.append(("ban", network, ttl))
        super().ban(network, ttl, now, **kw)

    def bypass(self, flow, ttl, now):
        self.calls.append(("bypass", flow.uid, ttl))
        super().bypass(flow, ttl, now)


class Run:
    """One engine behind one pipeline; ``feed(segments)`` then ``finish()``."""

    def __init__(self, ruleset, *, content_chunk=None, enforcer=None, logger=None, mime=False, **engine_kw):
        self.sink = ListSink()
        self.enforcer = enforcer if enforcer is not None else RecordingEnforcer()
        self.logger = logger if logger is not None else RecordingLogger()
        self.engine = RuleEngine(ruleset, self.sink, self.enforcer, self.logger, **engine_kw)
        limits = smtp.SmtpLimits(content_chunk=content_chunk) if content_chunk else None
        stage = None
        if mime:                      # the MIME parser, as the sensor's default config has it
            from sensor.config import MimeConfig
            from sensor.mime.stage import MimeStage
            from sensor.smtp.limits import MimeLimits
            stage = MimeStage(MimeConfig(), MimeLimits())
            stage.wants_entity_data = self.engine.wants_entity_data
        self.pipe = Pipeline(self.sink, listeners=[self.engine], smtp_limits=limits, mime=stage)
        self._ts = itertools.count()

    def feed(self, segments) -> "Run":
        for seg in segments:
            self.pipe.feed_segment(seg, 100.0 + next(self._ts) * 0.001)
        return self

    def finish(self) -> "Run":
        self.pipe.finish()
        # the engine's own bugs would be hidden by the pipeline's listener guard
        assert self.pipe.counters.listener_errors == 0
        return self

    def alerts(self) -> list[dict]:
        return [r["alert"] for r in self.sink.of("alert")]


def run(ruleset, dialogue=DIALOGUE, *, cut=None, **kw) -> Run:
    return Run(ruleset, **kw).feed(session_segments(dialogue, cut=cut)).finish()


_mtime = itertools.count(1)


def write(path: Path, text: str) -> Path:
    """Write ``text`` (dedented) and give the file an mtime no earlier write
    had: fast successive writes can keep the same mtime, and stat polling
    would not see the change."""
    path.write_text(textwrap.dedent(text))
    ns = 1_600_000_000_000_000_000 + next(_mtime) * 1_000_000_000
    os.utime(path, ns=(ns, ns))
    return path

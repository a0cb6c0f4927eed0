"""What a rule file sees: ``rule``, ``hooks``, ``alert``, ``config``, ``search``.

A rule is a hook plus an evaluation function (Haka's ``haka.rule{hook=, eval=}``)::

    from sensor.rules import rule, hooks, alert

    @rule(hooks.command, id="example.vrfy", rev=1)
    def no_vrfy(flow, command):
        if command.verb == "VRFY":
            alert(description="VRFY probe", severity="low")
            flow.drop()

Everything a rule may use is documented in docs/rules.md.
"""

from __future__ import annotations

import contextvars
import re
import sys
from dataclasses import dataclass, field

from sensor.rules.counters import RuleCounters

__all__ = ["rule", "hooks", "Hook", "alert", "config", "search", "Rule", "RuleError",
           "SEVERITIES", "MATCH_LIMIT"]

#: attacker-controlled text is cut to this many characters before a regular
#: expression sees it (``search``), so a crafted line cannot make a rule spin.
MATCH_LIMIT = 1024

SEVERITIES = ("low", "medium", "high")
CONFIDENCES = ("low", "medium", "high")


class RuleError(ValueError):
    """A rule declared wrongly (bad hook, bad severity, duplicate id)."""


@dataclass(frozen=True)
class Hook:
    """Where a rule is called, and with what (besides the flow)."""
    name: str
    argument: str          # what the second argument is
    streamable: bool = False

    def __repr__(self):
        return f"hooks.{self.name}"


class hooks:
    """The hooks, in the order they fire in a connection."""
    #: a new SMTP connection; ``fn(flow)``.
    connection = Hook("connection", "nothing (the flow only)")
    #: a client command; ``fn(flow, command)``: ``sensor.smtp.Command`` (verb, parameter, ...).
    command = Hook("command", "sensor.smtp.Command")
    #: a server reply; ``fn(flow, reply)``: ``sensor.smtp.Reply`` (code, enhanced, lines, command).
    response = Hook("response", "sensor.smtp.Reply")
    #: the end of an AUTH exchange, after its final reply; ``fn(flow, auth)``:
    #: ``sensor.smtp.AuthEvent`` (mechanism, code, outcome, success, rounds, cancelled; never a
    #: credential); ``flow.auth`` tallies the connection's exchanges (attempts, failures, success).
    auth = Hook("auth", "sensor.smtp.AuthEvent")
    #: message content; streamed: ``async def fn(flow, content)`` with ``async for chunk in content``;
    #: not streamed: ``fn(flow, content)`` with the content bytes (up to ``content_cap``).
    mail_content = Hook("mail_content", "bytes / async iterator of bytes", streamable=True)
    #: a dot line in the content that a lenient MTA reads as the message's end, when it is met
    #: (an MTA that honours it commits there, ahead of the strict end); ``fn(flow, seen)``:
    #: ``sensor.smtp.LenientTerminator`` (its ``label``, such as "<LF>.<LF>").
    lenient_terminator = Hook("lenient_terminator", "sensor.smtp.LenientTerminator")
    #: a MIME entity with a body (an attachment, or an inline text part) once it ended; not
    #: streamed: ``fn(flow, attachment)``: ``sensor.mime.Attachment`` (filename, content_type,
    #: mime_type, size, md5/sha1/sha256, head, members); streamed: ``async def fn(flow, content)``
    #: with ``content.entity`` (``sensor.mime.EntityStart``) and ``async for chunk in content``
    #: (decoded octets), then ``content.attachment`` once the loop ended.
    attachment = Hook("attachment", "sensor.mime.Attachment / async iterator of decoded bytes",
                      streamable=True)
    #: a URL in a text entity, when found; ``fn(flow, url)``: ``sensor.mime.Url`` (``url`` with its scheme).
    url = Hook("url", "sensor.mime.Url")
    #: the end of a message; ``fn(flow, end)``: ``sensor.smtp.MessageEnd`` (size, smuggling evidence).
    message_end = Hook("message_end", "sensor.smtp.MessageEnd")
    #: a finished transaction; ``fn(flow, record)``: the ``smtp`` record (a dict, Zeek's fields),
    #: the very one written to the records (read it, do not change it).
    transaction = Hook("transaction", "the smtp record (dict)")
    #: an SMTP anomaly; ``fn(flow, record)``: the ``anomaly`` record written (dict with ``name``).
    anomaly = Hook("anomaly", "the anomaly record (dict)")
    #: the end of the connection; ``fn(flow)``.
    connection_end = Hook("connection_end", "nothing (the flow only)")

    ALL = ()


hooks.ALL = tuple(v for v in vars(hooks).values() if isinstance(v, Hook))


@dataclass
class Rule:
    """One declared rule: what ``@rule`` records."""
    hook: Hook
    fn: object
    id: str
    rev: int = 1
    #: the integer signature id of its alerts in EVE (None: one derived from ``id``, sensor.outputs.eve)
    sid: int | None = None
    streamed: bool = False
    content_cap: int = 1 << 20
    #: milliseconds a call may take (None: ``[limits.rules] budget_ms``)
    budget_ms: float | None = None
    module: str = ""
    file: str = ""
    line: int = 0
    #: measured by the engine
    counters: RuleCounters = field(default_factory=RuleCounters, compare=False, repr=False)
    #: why the engine stopped calling it (None: it is called); a new load of its file starts afresh
    disabled: str | None = field(default=None, compare=False)
    #: when its recent offences were (the engine's clock), for the strikes
    strikes: list = field(default_factory=list, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.id


# Rules declared while a rule file is being imported land here (see loader).
_collecting: contextvars.ContextVar[list | None] = contextvars.ContextVar("collecting", default=None)
# The rule and flow being evaluated, for alert().
_current: contextvars.ContextVar = contextvars.ContextVar("current_rule", default=None)
# The loader's view of rules.toml, section -> dict: the last loaded set's,
# for code outside a rule file (rule files read their own set's, below).
_config: dict = {}

# Globals the loader gives every rule module before running it: the RuleSet
# it belongs to (config() reads that set's rules.toml, not the last loaded
# set's: two sets may live in one process) and the file's stem (the config()
# section and the default rule id prefix, even for a stem with dots).
RULESET_GLOBAL = "__smtp_sensor_ruleset__"
STEM_GLOBAL = "__smtp_sensor_rule_stem__"


def _stem(module_globals: dict) -> str:
    stem = module_globals.get(STEM_GLOBAL)
    if stem is None:
        stem = (module_globals.get("__name__") or "").rsplit(".", 1)[-1]
    return stem


def rule(hook: Hook, *, id: str | None = None, rev: int = 1, sid: int | None = None, streamed: bool = False,
         content_cap: int = 1 << 20, budget_ms: float | None = None):
    """Declare a rule: ``@rule(hooks.command, id="file.name", rev=1)``.

    ``id`` defaults to ``<file stem>.<function name>``; ``rev`` is the revision
    alerts carry.  ``sid``: the integer signature id of its alerts in Suricata's
    EVE (1..2**31-1; Suricata's rule sets leave 1000000..1999999 to local
    rules); without it EVE derives one from ``id`` in that range.  ``streamed`` (mail_content and attachment): the function is
    ``async def fn(flow, content)`` and reads ``async for chunk in content``.
    ``content_cap``: bytes a non-streamed mail_content rule gets at most.
    ``budget_ms``: milliseconds a call may take, past which it is interrupted
    (default: the sensor's ``[limits.rules] budget_ms``, 50; at most its
    ``max_budget_ms``).
    """
    if not isinstance(hook, Hook):
        raise RuleError(f"rule hook must be one of sensor.rules.hooks ({', '.join(h.name for h in hooks.ALL)}), "
                        f"got {hook!r}")
    if streamed and not hook.streamable:
        raise RuleError(f"only hooks.mail_content and hooks.attachment can be streamed, not {hook!r}")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, int) or not 0 < sid < 2 ** 31):
        raise RuleError(f"sid must be an integer 1..{2 ** 31 - 1}, got {sid!r}")
    if budget_ms is not None:
        if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not budget_ms > 0:
            raise RuleError(f"budget_ms must be a number of milliseconds above 0, got {budget_ms!r}")
        budget_ms = float(budget_ms)

    def declare(fn):
        import inspect
        if streamed and not inspect.iscoroutinefunction(fn):
            raise RuleError(f"streamed rule {fn.__name__} must be 'async def {fn.__name__}(flow, content)'")
        if not streamed and inspect.iscoroutinefunction(fn):
            # every call would make a coroutine that never runs: the rule
            # would silently do nothing
            raise RuleError(f"rule {fn.__name__} is 'async def': only a streamed mail_content or "
                            "attachment rule (streamed=True) may be")
        module = fn.__module__ or ""
        stem = _stem(getattr(fn, "__globals__", {}))
        code = getattr(fn, "__code__", None)
        declared = Rule(hook=hook, fn=fn, id=id or f"{stem}.{fn.__name__}", rev=int(rev), sid=sid,
                        streamed=streamed,
                        content_cap=int(content_cap), budget_ms=budget_ms, module=module,
                        file=code.co_filename if code else "", line=code.co_firstlineno if code else 0)
        collected = _collecting.get()
        if collected is not None:
            collected.append(declared)
        fn.__rule__ = declared
        return fn

    return declare


def alert(description: str, severity: str = "medium", *, confidence: str | None = None,
          method: str | None = None, sources=(), targets=(), ref=(), **extra):
    """Raise an alert from the rule being evaluated (Haka's ``haka.alert{...}``).

    ``severity`` and ``confidence``: low, medium or high.  ``method``: how the
    rule decided (free text).  ``sources``/``targets``: addresses or names
    (default: the client and the server).  ``ref``: references (CVE, URL).
    Returns the alert record.
    """
    cur = _current.get()
    if cur is None:
        raise RuleError("alert() called outside a rule evaluation")
    if severity not in SEVERITIES:
        raise RuleError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    if confidence is not None and confidence not in CONFIDENCES:
        raise RuleError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {confidence!r}")
    engine, declared, flow = cur
    return engine.raise_alert(declared, flow, description=description, severity=severity,
                              confidence=confidence, method=method, sources=_list(sources),
                              targets=_list(targets), ref=_list(ref), extra=extra)


def _list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    return list(value)


def config(section: str | None = None) -> dict:
    """This rule file's settings from ``rules.toml`` in the rules directory
    (section = the file's stem unless named), re-read on every reload."""
    caller = sys._getframe(1).f_globals
    if section is None:
        section = _stem(caller)
    owner = caller.get(RULESET_GLOBAL)
    settings = owner.config if owner is not None else _config
    return settings.get(section, {})


# Compiled patterns, bounded: a rule may build patterns from what it sees,
# and attacker-chosen text must not grow this cache without end.
_compiled: dict = {}
_COMPILED_MAX = 256


def search(pattern, text, flags=0, limit: int = MATCH_LIMIT):
    """``re.search`` on at most ``limit`` characters of ``text`` (bytes or str).

    Python's ``re`` has no time limit; bounding the input bounds the time of
    any pattern a rule writer is likely to use on one SMTP line.
    """
    if hasattr(pattern, "search"):
        return pattern.search(text[:limit])
    key = (type(pattern), pattern, flags)
    rx = _compiled.get(key)
    if rx is None:
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.clear()
        rx = _compiled[key] = re.compile(pattern, flags)
    return rx.search(text[:limit])

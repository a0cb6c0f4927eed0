"""Run the rules on the dissector's events and act on their verdicts.

``RuleEngine`` is a pipeline listener (``Pipeline(listeners=[engine])``): for
each SMTP event of a session it calls the rules of the matching hook with a
``RuleFlow`` (the flow as rules see it) and the event; what each event type
does is one method each (``RuleEngine._on``).  A rule that raises is logged
(rule id, flow uid, traceback) and counted, and the other rules go on,
whatever it raised (KeyboardInterrupt, SystemExit, CancelledError too; only
the operator's stop, ``sensor.errors.Shutdown``, goes through).

Every call runs under the rule's budget (``sensor.rules.budget``): past its
time it is interrupted (``RuleTimeout`` raised inside it), past its memory
growth stopped (``RuleMemoryError``); a call that returns late (C code a
signal cannot interrupt) is over budget all the same.  Each such offence is
counted and logged, and a rule with ``strikes`` offences within
``strike_window`` seconds is disabled: not called again until its file is
loaded again (a change, SIGHUP).  Writing a verdict or an alert is a
critical section: a budget that runs out meanwhile waits until it is whole.

``flow.transaction`` is the transaction of the event being handled: the
dissector numbers it (``trans_depth`` on commands, replies, addresses,
content and transactions) and the engine keeps, per transaction not yet
reported, the sender and recipients its MailFrom and RcptTo events gave.

Streamed mail_content rules are ``async def`` functions reading
``async for chunk in content``; streamed attachment rules likewise read one
MIME entity's decoded octets (``AttachmentContent``).  The engine drives each such coroutine by
hand (no event loop, no thread): it runs until it waits for the next chunk,
and is resumed when one arrives; the end of the message ends its loop.  A
rule may return early; memory stays one chunk per running rule.  A coroutine
keeps the code it started with, so a reload never changes a running stream.

Once a flow is dropped, its later events are counted (``late_events``) and not
shown to any rule; once bypassed, they are not shown either.  A stream cut
short (drop, end of connection) is closed as its rule: its ``finally`` may
alert, and what it raises is that rule's error.
"""

from __future__ import annotations

import time
import traceback

from sensor import records
from sensor.errors import Shutdown
from sensor.records.drop import BAN_SOURCE, DROP_FLOW, RULE, flow_target
from sensor.rules import api, budget
from sensor.rules.budget import GUARD, RuleLimits, RuleMemoryError, RuleTimeout
from sensor.rules.counters import RuleEngineCounters
from sensor.mime import events as mev
from sensor.smtp import events as sev
from sensor.stream import reassembly

__all__ = ["RuleEngine", "RuleFlow", "RuleTransaction", "ContentStream", "AttachmentContent"]


class _Waiting:
    """What a streamed rule's coroutine yields while it waits for content."""

    def __await__(self):
        yield self


_WAIT = _Waiting()

# What a rule raises is the rule's failure, whatever it is (KeyboardInterrupt,
# SystemExit from sys.exit(), asyncio.CancelledError included): only the
# operator's stop (sensor.errors.Shutdown) goes through.  Out of memory, from
# its budget or from the allocator, is an offence like a timeout.
_MEMORY = (RuleMemoryError, MemoryError)


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame an exception went through, the
    budget's handler left out (where the rule was when it was interrupted)."""
    where, tb = "?", exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") != budget.__name__:
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


class ContentStream:
    """The async iterator a streamed mail_content rule reads."""

    __slots__ = ("_chunk", "_ended", "offset")

    def __init__(self):
        self._chunk = None
        self._ended = False
        self.offset = 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        while self._chunk is None:
            if self._ended:
                raise StopAsyncIteration
            await _WAIT
        chunk, self._chunk = self._chunk, None
        self.offset += len(chunk)
        return chunk


class AttachmentContent(ContentStream):
    """What a streamed attachment rule reads: the entity's decoded octets;
    ``entity`` (``sensor.mime.EntityStart``) from the start, ``attachment``
    (``sensor.mime.Attachment``: size, hashes) once the loop has ended."""

    __slots__ = ("entity", "attachment")

    def __init__(self, entity):
        super().__init__()
        self.entity = entity
        self.attachment = None


class _StreamedRule:
    """A streamed rule running on one message: its coroutine and what it reads."""

    __slots__ = ("rule", "coro", "content")

    def __init__(self, rule, coro, content):
        self.rule, self.coro, self.content = rule, coro, content


#: the events that carry the trans_depth of the transaction they belong to
_NUMBERED = frozenset((sev.Command, sev.Reply, sev.MailFrom, sev.RcptTo, sev.MessageHeaders,
                       sev.MailContent, sev.LenientTerminator, sev.MessageEnd, sev.Transaction,
                       mev.EntityStart, mev.EntityData, mev.Attachment, mev.Url))


class RuleTransaction:
    """A transaction as rules see it (``flow.transaction``): built from the
    events that carry its ``trans_depth`` (the dissector's numbering)."""

    __slots__ = ("depth", "mailfrom", "rcptto")

    def __init__(self, depth: int):
        self.depth = depth
        self.mailfrom: str | None = None     # address of its MAIL
        self.rcptto: list[str] = []          # address of each of its RCPT, as sent

    def __repr__(self):
        return f"<RuleTransaction {self.depth} from={self.mailfrom!r} to={self.rcptto!r}>"


class RuleFlow:
    """A connection as rules see it: who, what so far, and what to do with it."""

    __slots__ = ("_engine", "_session", "uid", "community_id", "orig_h", "orig_p", "resp_h",
                 "resp_p", "transaction", "_transactions", "scratch", "dropped", "bypassed",
                 "_streams", "_att_streams", "_content", "_content_cap", "_in_message", "late_events",
                 "_held_command")

    def __init__(self, engine, session):
        f = session.flow
        self._engine = engine
        self._session = session
        self.uid = f.uid
        self.community_id = f.community_id
        self.orig_h, self.orig_p, self.resp_h, self.resp_p = f.orig_h, f.orig_p, f.resp_h, f.resp_p
        #: the transaction of the event being handled (see docs/rules.md)
        self.transaction = RuleTransaction(1)
        # by depth, the transactions not reported yet (a Transaction event)
        # and the last one reported: with pipelining, events of several come
        # interleaved, and the reply to a NOOP sent inside one may follow it
        self._transactions = {1: self.transaction}
        #: free storage for rules, per flow (e.g. counters across commands).
        self.scratch: dict = {}
        self.dropped = False
        self.bypassed = False
        self.late_events = 0
        self._held_command = None       # a MAIL or RCPT waiting for its parsed address
        self._streams: list = []
        self._att_streams: list = []       # streamed attachment rules on the entity being read
        self._content = None
        self._content_cap = 0
        # a message is under way (MessageHeaders or its first chunk seen, not
        # yet its MessageEnd): its streams were started, even if all of them
        # have returned since, and must not be started again mid-message
        self._in_message = False

    def _show(self, depth: int) -> RuleTransaction:
        """Make transaction ``depth`` the one rules see, and return it."""
        t = self._transactions.get(depth)
        if t is None:
            t = self._transactions[depth] = RuleTransaction(depth)
        self.transaction = t
        return t

    def _reported(self, depth: int) -> None:
        """Transaction ``depth`` had its Transaction event: rules see the next one."""
        self._transactions = {d: t for d, t in self._transactions.items() if d >= depth}
        if self.transaction.depth <= depth:
            self._show(depth + 1)

    # the client and server under Haka's names too
    src = property(lambda self: self.orig_h)
    dst = property(lambda self: self.resp_h)
    sport = property(lambda self: self.orig_p)
    dport = property(lambda self: self.resp_p)

    @property
    def helo(self) -> str | None:
        return self._session.conn.helo

    @property
    def tls(self) -> bool:
        return self._session.tls

    @property
    def auth(self):
        """The connection's AUTH exchanges so far (``sensor.smtp.auth.AuthTally``:
        attempts, failures, success, mechanism, result); None before the first ends."""
        return self._session.auth

    def drop(self, ttl: float | None = None, reset: bool = True) -> None:
        """Drop the rest of this connection, both directions, in the kernel
        (in place when this returns), and tear it down: the kernel makes the
        next packet each way into the RST that end accepts, so the MTA's
        smtpd is freed at once.  ``reset=False``: silent from now on (Haka's
        drop; the MTA waits out its own timeout).  ``ttl``: seconds, default
        for as long as the connection lives."""
        self._engine.drop(self, ttl, reset)

    def reset(self, ttl: float | None = None) -> None:
        """Tear this connection down now (Haka's ``flow:reset()``): ``drop()``
        with the reset said out loud."""
        self._engine.drop(self, ttl, True)

    def ban_source(self, ttl: float | None = 3600.0, prefix: int | None = None) -> None:
        """Ban the client's address (``prefix``: e.g. 24 for its /24; default the
        address alone) for ``ttl`` seconds: its packets to or from the SMTP ports are dropped
        in XDP (and the replies to it in TC)."""
        self._engine.ban(self, ttl, prefix)

    def bypass(self) -> None:
        """Stop inspecting this connection (the kernel stops pushing its packets)."""
        self._engine.bypass(self)

    def __repr__(self):
        return f"<RuleFlow {self.uid} {self.orig_h}:{self.orig_p} -> {self.resp_h}:{self.resp_p}>"


class RuleEngine:
    def __init__(self, ruleset, sink, enforcer, logger=None, clock=time.perf_counter,
                 limits: RuleLimits | None = None, guard=GUARD):
        self.ruleset = ruleset
        self.sink = sink
        self.enforcer = enforcer
        self.logger = logger
        self.clock = clock
        self.guard = guard
        self.set_limits(limits or RuleLimits())
        self.counters = RuleEngineCounters()
        unenforced = guard.enforced()
        if unenforced is not None:
            self._log("warning", "rule budgets are measured, not enforced", reason=unenforced)
        self._now = 0.0           # ts of the event being handled
        # what each event does: type -> method(flow, event)
        self._on = {
            sev.Command: self._on_command,
            sev.Reply: self._on_reply,
            sev.MailFrom: self._on_mail_from,
            sev.RcptTo: self._on_rcpt_to,
            sev.MessageHeaders: self._on_message_headers,
            sev.MailContent: self._on_mail_content,
            sev.LenientTerminator: self._on_lenient_terminator,
            mev.EntityStart: self._on_entity_start,
            mev.EntityData: self._on_entity_data,
            mev.Attachment: self._on_attachment,
            mev.Url: self._on_url,
            sev.MessageEnd: self._on_message_end,
            sev.Transaction: self._on_transaction,
            sev.SmtpAnomaly: self._on_anomaly,
            sev.AuthEvent: self._on_auth,
            reassembly.FlowEnd: self._on_flow_end,
        }

    def set_limits(self, limits: RuleLimits) -> None:
        """The rules' budgets (``[limits.rules]``): from the next call on (a
        reload), and the next import of a rule file."""
        self.limits = limits
        self._default_s, self._max_s = limits.budget_s(None), limits.max_budget_ms / 1000.0
        self._memory_pages = limits.memory_pages
        if hasattr(self.ruleset, "limits"):
            self.ruleset.limits = limits

    # ------------------------------------------------------------ listener
    def __call__(self, session, ev) -> None:
        kind = type(ev)
        flow = session.scratch.get("rules")
        if flow is None:
            if kind is reassembly.FlowEnd:
                return
            flow = session.scratch["rules"] = RuleFlow(self, session)
            self._now = getattr(ev, "ts", 0.0)
            self._run(api.hooks.connection, flow)
            if kind is reassembly.FlowStart:
                return
        self._now = getattr(ev, "ts", self._now)
        if flow.dropped or flow.bypassed:
            # a bypassed flow is no longer inspected: its rules see nothing
            # more of it (live, the kernel stops pushing it; in a replay the
            # capture still holds it); only a dropped flow's events are late
            if flow.dropped:
                flow.late_events += 1
                self.counters.late_events += 1
            if kind is reassembly.FlowEnd:
                self._end_streams(flow, abort=True)
            return
        handler = self._on.get(kind)
        if handler is not None:
            if kind in _NUMBERED and flow.transaction.depth != ev.trans_depth:
                flow._show(ev.trans_depth)
            handler(flow, ev)

    # --- what each event does (self._on); flow.transaction is the event's -----
    def _on_command(self, flow, ev) -> None:
        if ev.verb == "MAIL" or ev.verb == "RCPT":
            # the dissector follows MAIL/RCPT with the parsed address
            # (MailFrom/RcptTo): rules see the command once it is known
            flow._held_command = ev
        else:
            self._run_list(self.ruleset.by_hook["command"], flow, ev)

    def _on_reply(self, flow, ev) -> None:
        self._run_list(self.ruleset.by_hook["response"], flow, ev)

    def _on_mail_from(self, flow, ev) -> None:
        flow.transaction.mailfrom = ev.address
        self._held(flow)

    def _on_rcpt_to(self, flow, ev) -> None:
        if ev.address is not None:
            flow.transaction.rcptto.append(ev.address)
        self._held(flow)

    def _held(self, flow) -> None:
        cmd, flow._held_command = flow._held_command, None
        if cmd is not None:
            self._run_list(self.ruleset.by_hook["command"], flow, cmd)

    def _on_message_headers(self, flow, ev) -> None:
        self._start_content(flow)

    def _on_mail_content(self, flow, ev) -> None:
        if not flow._in_message:
            self._start_content(flow)
        self._content(flow, ev.data)

    def _on_lenient_terminator(self, flow, ev) -> None:
        self._run_list(self.ruleset.by_hook["lenient_terminator"], flow, ev)

    def wants_entity_data(self) -> bool:
        """Whether a rule reads attachments' decoded content (a streamed
        attachment rule): the MIME parser makes EntityData events only then."""
        return any(r.streamed for r in self.ruleset.by_hook["attachment"])

    def _on_entity_start(self, flow, ev) -> None:
        self._end_streams(flow, abort=True, content=False)
        for r in self.ruleset.by_hook["attachment"]:
            if not r.streamed:
                continue
            content = AttachmentContent(ev)
            if not self._start_stream(flow, r, content, flow._att_streams):
                return

    def _on_entity_data(self, flow, ev) -> None:
        for st in list(flow._att_streams):
            if flow.dropped:
                return
            st.content._chunk = ev.data
            self._resume(flow, st)

    def _on_attachment(self, flow, ev) -> None:
        for st in list(flow._att_streams):
            if flow.dropped:
                break
            st.content._ended = True
            st.content.attachment = ev
            self._resume(flow, st)
        self._end_streams(flow, abort=True, content=False)
        for r in self.ruleset.by_hook["attachment"]:
            if not r.streamed and not flow.dropped:
                self._call(r, flow, r.fn, flow, ev)

    def _on_url(self, flow, ev) -> None:
        self._run_list(self.ruleset.by_hook["url"], flow, ev)

    def _on_message_end(self, flow, ev) -> None:
        if not flow._in_message:
            self._start_content(flow)
        self._end_content(flow)
        self._run_list(self.ruleset.by_hook["message_end"], flow, ev)

    def _on_transaction(self, flow, ev) -> None:
        rules = self.ruleset.by_hook["transaction"]
        if rules:
            self._run_list(rules, flow, flow._session.record)
        flow._reported(ev.trans_depth)

    def _on_anomaly(self, flow, ev) -> None:
        rules = self.ruleset.by_hook["anomaly"]
        if rules:
            self._run_list(rules, flow, flow._session.record)

    def _on_auth(self, flow, ev) -> None:
        self._run_list(self.ruleset.by_hook["auth"], flow, ev)

    def _on_flow_end(self, flow, ev) -> None:
        self._end_streams(flow, abort=True)
        self._run(api.hooks.connection_end, flow)

    # ------------------------------------------------------------ calling rules
    def _run(self, hook, flow, *args) -> None:
        self._run_list(self.ruleset.by_hook[hook.name], flow, *args)

    def _run_list(self, rules, flow, *args) -> None:
        for r in rules:
            if flow.dropped:
                return
            self._call(r, flow, r.fn, flow, *args)

    def _call(self, r, flow, fn, *args):
        token = api._current.set((self, r, flow))
        guard, call, failed = self.guard, 0, None
        t0, paused = self.clock(), guard.paused
        try:
            call = guard.arm(self._budget_s(r), self._memory_pages)
            return fn(*args)
        except Shutdown:
            raise
        except BaseException as exc:         # whatever the rule raised, or its budget
            guard.disarm(call)
            failed = exc
            return None
        finally:
            guard.disarm(call)
            api._current.reset(token)
            self._account(r, flow, self.clock() - t0 - (guard.paused - paused), failed)
            # the exception's traceback holds this frame, and the rule's with
            # what it allocated: no cycle left for the collector to find later
            failed = None

    def _budget_s(self, r) -> float:
        ms = r.budget_ms
        return self._default_s if ms is None else min(ms / 1000.0, self._max_s)

    def _account(self, r, flow, dt, failed, call: bool = True) -> None:
        """Count a call (``call``; a stream's close is not one) and judge it:
        an exception is a rule error; over its time or memory budget, an
        offence (``_offence``)."""
        c = r.counters
        if call:
            c.calls += 1
            c.seconds += dt
        if failed is None:
            if dt > self._budget_s(r):       # not interrupted: C code, or another thread
                self._offence(r, flow, "time", dt, None)
        elif isinstance(failed, _MEMORY):
            self._offence(r, flow, "memory", dt, failed)
        elif isinstance(failed, RuleTimeout):
            self._offence(r, flow, "time", dt, failed)
        else:
            self._error(r, flow, failed)

    def _offence(self, r, flow, kind, dt, exc) -> None:
        """A call over its budget: counted, logged, and the rule disabled at
        its ``strikes``-th offence within ``strike_window`` seconds."""
        c, limits = r.counters, self.limits
        if kind == "time":
            c.over_budget += 1
            self.counters.slow_calls += 1
        else:
            c.over_memory += 1
            self.counters.memory_stops += 1
        now = self.clock()
        strikes = r.strikes
        strikes[:] = [t for t in strikes if now - t < limits.strike_window]
        strikes.append(now)
        what = ("rule over its time budget" if kind == "time" else "rule over its memory budget")
        self._log("warning", what, rule=r.id, uid=flow.uid, file=r.file, ms=round(dt * 1000, 3),
                  budget_ms=round(self._budget_s(r) * 1000, 3), interrupted=exc is not None,
                  strikes=len(strikes), **({"at": _where(exc), "error": f"{type(exc).__name__}: {exc}"}
                                           if exc is not None else {}))
        if len(strikes) >= limits.strikes and r.disabled is None:
            self._disable(r, f"{len(strikes)} calls over budget within {limits.strike_window:g} s")

    def _disable(self, r, reason: str) -> None:
        """Stop calling ``r`` until its file is loaded again (a change, SIGHUP)."""
        r.disabled = reason
        self.counters.disabled += 1
        by_hook = self.ruleset.by_hook
        # a new list: a loop over the old one (this very event) goes on unharmed
        by_hook[r.hook.name] = [x for x in by_hook[r.hook.name] if x is not r]
        self._log("error", "rule disabled until its file changes", rule=r.id, file=r.file, reason=reason)

    def _error(self, r, flow, exc) -> None:
        r.counters.errors += 1
        self.counters.errors += 1
        self._log("error", "rule raised", rule=r.id, uid=flow.uid, file=r.file,
                  traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8)))

    def close(self) -> None:
        """Give the budgets' signal back (the engine can still be called: it takes it again)."""
        self.guard.release()

    # ------------------------------------------------------------ content
    def _start_content(self, flow) -> None:
        self._end_streams(flow, abort=True)
        flow._in_message = True
        rules = self.ruleset.by_hook["mail_content"]
        plain = [r for r in rules if not r.streamed]
        flow._content = bytearray() if plain else None
        flow._content_cap = max((r.content_cap for r in plain), default=0)
        for r in rules:
            if not r.streamed:
                continue
            if not self._start_stream(flow, r, ContentStream(), flow._streams):
                return

    def _start_stream(self, flow, r, content, streams: list) -> bool:
        """Start streamed rule ``r`` reading ``content``; False once the flow is dropped."""
        # an async def's call runs none of its code: no budget to keep
        token = api._current.set((self, r, flow))
        try:
            coro = r.fn(flow, content)
        except Shutdown:
            raise
        except BaseException as exc:
            self._error(r, flow, exc)
            return True
        finally:
            api._current.reset(token)
        st = _StreamedRule(r, coro, content)
        streams.append(st)
        self._resume(flow, st)
        return not flow.dropped      # dropped by this rule: the others are not started

    def _content(self, flow, data: bytes) -> None:
        buf = flow._content
        if buf is not None and len(buf) < flow._content_cap:
            buf += data[: flow._content_cap - len(buf)]
        for st in list(flow._streams):
            if flow.dropped:        # dropped by a stream: the others see no more
                return
            st.content._chunk = data
            self._resume(flow, st)

    def _end_content(self, flow) -> None:
        flow._in_message = False
        for st in list(flow._streams):
            if flow.dropped:
                break
            st.content._ended = True
            self._resume(flow, st)
        buf = flow._content
        # what still runs (a stream that caught StopAsyncIteration and awaited
        # again, or one left by a drop) gets no more content: closed
        self._end_streams(flow, abort=True)
        if buf is None:
            return
        data = bytes(buf)
        for r in self.ruleset.by_hook["mail_content"]:
            if not r.streamed and not flow.dropped:
                self._call(r, flow, r.fn, flow, data[: r.content_cap])

    def _resume(self, flow, st) -> None:
        """Run a streamed rule until it waits for content or finishes."""
        r = st.rule
        if r.disabled is not None:       # disabled while this stream waited
            self._forget_stream(flow, st)
            self._close(flow, st)
            return
        token = api._current.set((self, r, flow))
        guard, call, failed = self.guard, 0, None
        t0, paused = self.clock(), guard.paused
        try:
            call = guard.arm(self._budget_s(r), self._memory_pages)
            yielded = st.coro.send(None)
            if yielded is not _WAIT:
                raise api.RuleError("a streamed rule may only await its content "
                                    f"(it awaited {yielded!r})")
        except StopIteration:
            self._forget_stream(flow, st)
        except Shutdown:
            raise
        except BaseException as exc:
            guard.disarm(call)
            failed = exc
        finally:
            guard.disarm(call)
            api._current.reset(token)
            self._account(r, flow, self.clock() - t0 - (guard.paused - paused), failed)
            stopped, failed = failed is not None, None     # no cycle through the traceback
        if stopped:                      # stopped for the rest of the message
            self._forget_stream(flow, st)
            self._close(flow, st)

    @staticmethod
    def _forget_stream(flow, st) -> None:
        if st in flow._streams:
            flow._streams.remove(st)
        elif st in flow._att_streams:
            flow._att_streams.remove(st)

    def _end_streams(self, flow, abort: bool, content: bool = True) -> None:
        """Close the attachment streams, and (``content``) the message content's."""
        streams, flow._att_streams = flow._att_streams, []
        if content:
            streams += flow._streams
            flow._streams = []
            flow._content = None
        for st in streams:
            self._close(flow, st)

    def _close(self, flow, st) -> None:
        """Close a stream's coroutine as its rule, under its budget: its
        ``finally`` may alert, and what it raises (or an await in it) is that
        rule's error, not the engine's (the rest of the event still runs)."""
        r = st.rule
        token = api._current.set((self, r, flow))
        guard, call, failed = self.guard, 0, None
        t0, paused = self.clock(), guard.paused
        try:
            call = guard.arm(self._budget_s(r), self._memory_pages)
            st.coro.close()
        except Shutdown:
            raise
        except BaseException as exc:
            guard.disarm(call)
            failed = exc
        finally:
            guard.disarm(call)
            api._current.reset(token)
            self._account(r, flow, self.clock() - t0 - (guard.paused - paused), failed, call=False)
            failed = None                # no cycle through the traceback

    # ------------------------------------------------------------ verdicts
    # Called by rules: each writes its verdict and its record whole, in a
    # critical section of the budget (a timeout waits until it is written).
    def raise_alert(self, r, flow, *, description, severity, confidence, method, sources,
                    targets, ref, extra) -> dict:
        guard = self.guard
        guard.critical += 1
        try:
            self.counters.alerts += 1
            r.counters.alerts += 1
            txn = flow.transaction
            rec = records.alert_record(
                self._now, flow, signature_id=r.id, rev=r.rev, signature=description, severity=severity,
                confidence=confidence, method=method, sources=sources, targets=targets, ref=ref,
                metadata=extra, helo=flow.helo, mail_from=txn.mailfrom, rcpt_to=txn.rcptto)
            self.sink(rec)
            return rec
        finally:
            guard.critical -= 1

    def _verdict_record(self, flow, action: str, target: str, ttl, reset: bool | None = None) -> None:
        cur = api._current.get()
        self.sink(records.drop_record(self._now, action, target, RULE, self.enforcer.mode,
                                      flow=flow, rule_id=cur[1].id if cur is not None else None,
                                      ttl=ttl, reset=reset))

    def drop(self, flow, ttl, reset: bool = True) -> None:
        if flow.dropped:
            return
        guard = self.guard
        guard.critical += 1
        try:
            self.enforcer.drop_flow(flow, ttl, self._now, reset=reset)
            flow.dropped = True
            self.counters.drops += 1
            self._verdict_record(flow, DROP_FLOW, flow_target(flow), ttl, reset=bool(reset))
        finally:
            guard.critical -= 1

    def ban(self, flow, ttl, prefix) -> None:
        import ipaddress
        addr = ipaddress.ip_address(flow.orig_h)
        bits = addr.max_prefixlen if prefix is None else int(prefix)
        network = str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))
        guard = self.guard
        guard.critical += 1
        try:
            self.enforcer.ban(network, ttl, self._now)
            self.counters.bans += 1
            flow.dropped = True
            self._verdict_record(flow, BAN_SOURCE, network, ttl)
        finally:
            guard.critical -= 1

    def bypass(self, flow) -> None:
        if flow.bypassed:
            return
        guard = self.guard
        guard.critical += 1
        try:
            self.enforcer.bypass(flow, 3600.0, self._now)
            flow.bypassed = True
        finally:
            guard.critical -= 1

    def _log(self, level, message, **kw) -> None:
        if self.logger is not None:
            getattr(self.logger, level)(message, **kw)

"""The userland pipeline: frames -> segments -> TCP streams -> SMTP events -> records.

One code path for live traffic and for captures::

    frame (datapath event or pcap packet)
      -> sensor.stream.packet.decode         a Segment, or a counted reason it is not one
         (IP fragments through sensor.stream.defrag.Defragmenter, the datagram decoded again)
      -> sensor.stream.reassembly.Reassembler  FlowStart / Data / Gap / FlowEnd / TcpAnomaly
      -> sensor.smtp.SMTPConnection   typed SMTP events, one connection per flow
      -> sensor.mime.MimeParser       per message (when ``mime`` is given): entities,
                                      hashes, URLs, MIME anomalies
      -> sensor.records               smtp, files and anomaly records, handed to ``sink``

SMTP found by content (``by_content=True``, what a replay does): the flows on
none of ``ports`` go through a reassembler of their own (its own uids, so the
uids of the flows on ``ports`` do not depend on it), and each one's first
bytes through a ``sensor.smtp.probe.SmtpProbe``: a server greeting with 220
and a client saying EHLO/HELO (Zeek's DPD signature), also inside an HTTP
CONNECT tunnel, make it SMTP; its held bytes then go to the dissector as if
it had been on a port.  The rest is dropped once decided.  Live, the kernel
pushes only the configured ports' packets: there is nothing else to probe.

``Pipeline`` owns no clock and no I/O: the caller passes each frame's
timestamp, calls ``expire(now)`` now and then, and ``finish()`` at the end.
Per flow a ``Session`` (in ``flow.ctx``) holds the SMTP connection and a
``scratch`` dict for whoever listens.  Listeners (``listeners``) are called
with ``(session, event)`` for every SMTP event and can act on the flow (the
rules engine is one); ``on_starttls(session)`` is how the live sensor asks the
kernel to bypass an encrypted flow.

What the sensor itself lost or left out is said in the flow's records, with
anomalies of layer ``sensor`` written when the flow ends:

- ``EVENT_LOSS``: events of the flow the kernel's event ring refused (ring
  full); the count comes with the flow's next event (``feed_frame(lost=)``)
  or, for its last ones, from ``loss_lookup(flow)`` (the live feed's reading
  of the kernel's map). ``smtp`` records carry ``lost_events`` and
  ``gap_bytes`` (the flow's bytes lost so far), so a record built from
  incomplete data says so.
- ``FLOW_EVICTED``: the flow table was full; the least recently active flow
  was ended (sensor.stream.reassembly).
- ``ANOMALIES_SUPPRESSED``: past ``SmtpLimits.anomalies_per_name`` records of
  one anomaly name in a connection, the rest are counted (listeners still
  see every one), and this record gives the count, one per name.
"""

from __future__ import annotations

import gc
import math

from sensor import records, smtp
from sensor.counters import Counters, counter
from sensor.mime import events as mev
from sensor.smtp import events as sev
from sensor.smtp.auth import AuthTally
from sensor.smtp.probe import NOT_SMTP, SMTP, SmtpProbe
from sensor.stream import defrag, packet, reassembly
from sensor.stream.direction import CLIENT, SERVER
from sensor.stream.flowid import community_id

__all__ = ["Pipeline", "Session", "PipelineCounters", "EVENT_LOSS", "FLOW_EVICTED", "ANOMALIES_SUPPRESSED"]

#: anomaly names of layer ``sensor``: what the sensor lost or left out
EVENT_LOSS = "EVENT_LOSS"
FLOW_EVICTED = "FLOW_EVICTED"
ANOMALIES_SUPPRESSED = "ANOMALIES_SUPPRESSED"

_Data = reassembly.Data
_FlowEnd = reassembly.FlowEnd
_decode = packet.decode


class Session:
    """One SMTP connection being dissected."""

    __slots__ = ("flow", "conn", "tls", "_scratch", "transactions", "record", "anomalies",
                 "mime", "mime_done", "auth")

    def __init__(self, flow, conn):
        self.flow = flow
        self.conn = conn
        self.tls = False
        #: the connection's AUTH exchanges so far (an AuthTally; None before the first ends)
        self.auth = None
        self._scratch: dict | None = None
        self.transactions = 0
        #: while listeners see a Transaction or an Anomaly: the record written
        #: for it (built once, for the sink and the listeners); None otherwise
        self.record = None
        #: anomaly records written per name (a dict from the first)
        self.anomalies: dict | None = None
        #: the MIME parser of the message being read, and the summaries of
        #: ended messages waiting for their transaction (trans_depth -> MimeSummary)
        self.mime = None
        self.mime_done: dict | None = None

    @property
    def scratch(self) -> dict:
        """Free per-flow state for listeners (a dict made on first use: one
        session per open flow, most without listeners' state)."""
        scratch = self._scratch
        if scratch is None:
            scratch = self._scratch = {}
        return scratch

    @scratch.setter
    def scratch(self, value: dict) -> None:
        self._scratch = value

    def __repr__(self):
        return f"<Session {self.flow!r}>"


def _importance(sess) -> int:
    """0: in a mail transaction, 1: an SMTP dialogue, 2: nothing of SMTP yet."""
    if sess is None:
        return 3
    conn = sess.conn
    if conn.in_transaction:
        return 0
    return 1 if sess.transactions or conn.helo else 2


class PipelineCounters(Counters):
    """What the pipeline saw, for the summary line, status and metrics."""

    frames = counter("frames dissected")
    segments = counter("TCP segments of SMTP flows")
    not_segments = counter("frames not dissected, by reason", by="reason")
    flows = counter("SMTP flows seen")
    transactions = counter("SMTP transactions")
    anomalies = counter("protocol anomalies")
    payload_bytes = counter("TCP payload bytes of SMTP flows")
    gap_bytes = counter("bytes missing from SMTP flows (gaps)")
    starttls = counter("STARTTLS flows")
    auth = counter("AUTH exchanges ended, by outcome", by="outcome")
    listener_errors = counter("exceptions raised by listeners (rules, statistics)")
    files = counter("MIME entities with a body (files records)")
    gated = counter("segments of dropped flows kept from the dissector")
    ip_anomalies = counter("IP fragmentation anomalies written on their flow's record")
    unfinished = counter("flows left undissected at shutdown: the stop deadline came first")
    lost_events = counter("events of SMTP flows the kernel's event ring refused (ring full), "
                          "counted in their flows' records")
    lost_unattributed = counter("events the event ring refused whose flow was not followed")
    flows_with_loss = counter("flows whose records say events were lost (EVENT_LOSS)")
    flows_never_seen = counter("connections the kernel saw open (SYN) of which no event reached the "
                               "pipeline: an EVENT_LOSS record each")
    anomalies_suppressed = counter("anomaly records not written: past the per-connection bound of "
                                   "their name (ANOMALIES_SUPPRESSED gives each flow's count)")
    by_content = counter("flows on none of the ports found SMTP by content, by server port", by="port")
    tunnels = counter("of those, SMTP inside an HTTP CONNECT tunnel")
    implicit_tls = counter("flows beginning with a TLS handshake on port 465 (implicit TLS "
                           "submission, RFC 8314): not readable")


#: flow.ctx of a flow probed and found not SMTP (its events are dropped)
_NOT_SMTP = object()
#: TCP anomalies kept per flow while it is probed (written if it is SMTP)
_PROBE_ANOMALIES = 8


class Pipeline:
    """Dissect SMTP flows from frames or segments; records go to ``sink``."""

    def __init__(self, sink, *, ports=reassembly.DEFAULT_PORTS,
                 reassembly_limits: reassembly.ReassemblyLimits | None = None,
                 smtp_limits: smtp.SmtpLimits | None = None, uid_seed=0,
                 listeners=(), on_starttls=None, expire_every: float = 1.0,
                 defrag_limits: defrag.DefragLimits | None = None, defrag_policy: str = "linux",
                 receiver: reassembly.ReceiverPolicy | None = None, mime=None,
                 by_content: bool = False):
        self.sink = sink
        self.ports = frozenset(ports)
        self.counters = PipelineCounters()
        self.reassembler = reassembly.Reassembler(self.ports, reassembly_limits, uid_seed=uid_seed,
                                                  policy=receiver)
        self.defragmenter = defrag.Defragmenter(defrag_limits, defrag_policy)
        self._defragmented = self.defragmenter.counters
        self._defrag_pending = self.defragmenter.pending
        #: the flows on none of ``ports``, probed for SMTP (None: not looked at)
        self.content_reassembler = None
        if by_content:
            self.content_reassembler = reassembly.Reassembler(
                self.ports, reassembly_limits, uid_seed=f"{uid_seed}/by-content", only_ports=False,
                policy=receiver)
        self.smtp_limits = smtp_limits or smtp.SmtpLimits()
        self.listeners = list(listeners)
        self.on_starttls = on_starttls
        #: a ``sensor.mime.stage.MimeStage``, or None: messages are not parsed
        self.mime = mime
        #: ``gate(segment, ts) -> bool``: False keeps a segment from being
        #: dissected (a replay's verdicts acting like the kernel's drops).
        self.gate = None
        #: ``datagram_filter(segment) -> bool``: False drops a datagram
        #: reassembled from fragments before it is dissected (a sharded
        #: replay's worker keeps the datagrams of its own flows); None: all kept
        self.datagram_filter = None
        #: ``loss_lookup(flow) -> int``: events of the flow the kernel lost
        #: that no event carried (the live feed's; None in a replay)
        self.loss_lookup = None
        self._anomaly_bound = self.smtp_limits.anomalies_per_name
        self._expire_every = expire_every
        self._next_expire = None
        self._last_ts = 0.0

    # ------------------------------------------------------------ input
    def feed_frame(self, linktype: int, frame, wirelen: int, ts: float, verify: bool = True, lost: int = 0):
        """One captured frame (link type as in pcap: 1 Ethernet, 113 SLL, ...);
        returns its Segment, or None when it is not TCP over IP.  ``verify``:
        False for a frame whose TCP checksum is not final (leaving through TC);
        ``lost``: events of the frame's direction lost before it (the kernel's count)."""
        st = self.counters
        st.frames += 1
        defragmented = self._defragmented.reassembled
        seg = _decode(linktype, frame, wirelen, st.not_segments, self.defragmenter, ts)
        if seg is not None and self.datagram_filter is not None and \
                self._defragmented.reassembled != defragmented and not self.datagram_filter(seg):
            seg = None          # a datagram of another worker's flow (sensor.inputs.split)
        if seg is not None:
            gate = self.gate
            if gate is not None and (not gate(seg, ts) or (
                    self._defragmented.reassembled != defragmented
                    and (seg.sport in self.ports or seg.dport in self.ports))):
                # a dropped flow, a banned host, or (enforcing) a datagram made
                # of fragments: the kernel drops an SMTP datagram's first
                # fragment, so the host never has it (bpf/parsing.h)
                st.gated += 1
            else:
                # feed_segment, inlined: this runs for every packet
                st.segments += 1
                content = self.content_reassembler
                if content is not None and seg.sport not in self.ports and seg.dport not in self.ports:
                    events = content.feed(seg, ts, verify)
                    if events:
                        self._handle_content(events)
                else:
                    events = self.reassembler.feed(seg, ts, verify)
                    if lost:
                        self._lost(seg, events, lost)
                    if events:
                        self._handle(events)
                nxt = self._next_expire
                if nxt is None:
                    self._next_expire = ts + self._expire_every
                elif ts >= nxt:
                    self.expire(ts)
                if ts > self._last_ts:
                    self._last_ts = ts
        if self._defrag_pending:
            self._defrag_anomalies()
        return seg

    def feed_segment(self, seg: packet.Segment, ts: float) -> None:
        self.counters.segments += 1
        content = self.content_reassembler
        if content is not None and seg.sport not in self.ports and seg.dport not in self.ports:
            self._handle_content(content.feed(seg, ts))
        else:
            self._handle(self.reassembler.feed(seg, ts))
        if self._next_expire is None:
            self._next_expire = ts + self._expire_every
        elif ts >= self._next_expire:
            self.expire(ts)
        if ts > self._last_ts:
            self._last_ts = ts

    def expire_by_caller(self) -> None:
        """From now on idle flows are ended only when the caller says
        (``expire(now)``): a replay does, on its clock of every frame, so
        that every worker of a sharded replay ends them at the same times."""
        self._expire_every = self._next_expire = math.inf

    def expire(self, now: float) -> None:
        """End idle flows (the caller's clock: capture time or wall time)."""
        self._next_expire = now + self._expire_every
        self.defragmenter.expire(now)
        if self._defrag_pending:
            self._defrag_anomalies()
        self._handle(self.reassembler.expire(now))
        if self.content_reassembler is not None:
            self._handle_content(self.content_reassembler.expire(now))

    def finish(self, ts: float | None = None, give_up=None) -> None:
        """End every flow (end of capture, shutdown).

        ``give_up``: a callable that says when time is out (the live sensor's
        stop deadline).  The flows are then ended by importance, asking it
        between two flows: first those in a mail transaction, then those with
        an SMTP dialogue, then the rest (a flood's); what is left when it says
        so is dropped undissected, counted in ``unfinished``."""
        self.defragmenter.flush()
        if give_up is None:
            self._handle(self.reassembler.flush_all(ts))
            if self.content_reassembler is not None:
                self._handle_content(self.content_reassembler.flush_all(ts))
            return
        if give_up():       # no time left at all: not even for ending the flows in the reassembly
            for flow in self.reassembler.flows:
                flow.ctx = None
                self.counters.unfinished += 1
            return
        collecting = gc.isenabled()
        gc.disable()        # the heap is at its largest: collections would walk it again and again
        try:
            self._finish_until(self.reassembler.flush_all(ts), give_up)
        finally:
            if collecting:
                gc.enable()

    def _finish_until(self, events, give_up) -> None:
        # flush_all gives each flow's events together, its FlowEnd last
        flows, current = [], []
        for ev in events:
            current.append(ev)
            if type(ev) is _FlowEnd:
                flows.append(current)
                current = []
        flows.sort(key=lambda evs: _importance(evs[-1].flow.ctx))
        for done, flow_events in enumerate(flows):
            if give_up():
                for rest in flows[done:]:
                    rest[-1].flow.ctx = None
                self.counters.unfinished += len(flows) - done
                return
            self._handle(flow_events)

    def _lost(self, seg, events, lost: int) -> None:
        """``lost`` events came before ``seg``: counted in its flow (before the
        flow's events are handled, so a flow ending with ``seg`` counts them)."""
        self.counters.lost_events += lost
        flow = self.reassembler.flow_of(seg.src, seg.sport, seg.dst, seg.dport)
        if flow is None and events:
            flow = events[0].flow          # the flow ended with this segment
        if flow is None:
            self.counters.lost_unattributed += lost
        else:
            flow.lost += lost

    def unseen_loss(self, family: int, src: bytes, sport: int, dst: bytes, dport: int, events: int,
                    syn: bool, ts: float) -> None:
        """``events`` of the direction src:sport -> dst:dport were lost and no
        flow of it is followed.  ``syn``: the connection's opening SYN was
        among them and nothing of the direction came since: the connection
        began, unseen, and this EVENT_LOSS record is all it leaves."""
        self.counters.lost_events += events
        if not syn:
            self.counters.lost_unattributed += events
            return
        self.counters.flows_never_seen += 1
        self.counters.flows_with_loss += 1
        orig, resp = (src, sport), (dst, dport)       # the SYN's sender opened it
        self.sink({"ts": ts, "event_type": "anomaly",
                   "id.orig_h": packet.addr_str(orig[0]), "id.orig_p": orig[1],
                   "id.resp_h": packet.addr_str(resp[0]), "id.resp_p": resp[1],
                   "community_id": community_id(orig[0], resp[0], 6, orig[1], resp[1],
                                                self.reassembler.cid_seed),
                   "layer": "sensor", "name": EVENT_LOSS,
                   "detail": f"a connection whose opening SYN and {events - 1} later event(s) were lost in "
                             "the kernel's event ring (ring full): nothing else of it was seen"})

    @property
    def flows(self):
        """Every flow being tracked (those probed by content included)."""
        if self.content_reassembler is None:
            return self.reassembler.flows
        return list(self.reassembler.flows) + list(self.content_reassembler.flows)

    @property
    def sessions(self):
        return [f.ctx for f in self.flows if type(f.ctx) is Session]

    # ------------------------------------------------------------ plumbing
    def _defrag_anomalies(self) -> None:
        """The defragmenter's anomalies: a record on the TCP flow they belong
        to when it is open, else a count (no flow, or the ports were never seen)."""
        pending = self._defrag_pending
        flow_of = self.reassembler.flow_of
        for an in pending:
            flow = None
            if an.sport is not None:
                flow = flow_of(an.src, an.sport, an.dst, an.dport)
                if flow is None and self.content_reassembler is not None:
                    flow = self.content_reassembler.flow_of(an.src, an.sport, an.dst, an.dport)
                    if flow is not None and type(flow.ctx) is not Session:
                        flow = None          # not (yet) found SMTP: not ours to report
            if flow is None:
                self.defragmenter.counters.unattributed += 1
                continue
            self.counters.anomalies += 1
            self.counters.ip_anomalies += 1
            direction = CLIENT if an.src == flow.orig_addr and an.sport == flow.orig_p else SERVER
            self.sink(records.anomaly_record(flow, an.ts, "ip", an.name, direction, an.detail))
        pending.clear()

    def _handle(self, events) -> None:
        for ev in events:
            kind = type(ev)
            if kind is _Data:
                flow, direction, data, ts = ev
                sess = flow.ctx
                self.counters.payload_bytes += len(data)
                if sess is None:
                    continue
                if direction == CLIENT:
                    out = sess.conn.receive_client(data, ts)
                else:
                    out = sess.conn.receive_server(data, ts)
                if out:
                    self._smtp(sess, out)
            elif kind is reassembly.FlowStart:
                self.counters.flows += 1
                sess = ev.flow.ctx = Session(ev.flow, smtp.SMTPConnection(self.smtp_limits))
                if self.listeners:
                    self._notify(sess, ev)
            elif kind is reassembly.Gap:
                self.counters.gap_bytes += ev.length
                sess = ev.flow.ctx
                if sess is not None:
                    self._smtp(sess, sess.conn.gap(ev.direction, ev.length, ev.ts))
            elif kind is reassembly.FlowEnd:
                flow = ev.flow
                lookup = self.loss_lookup
                if lookup is not None:
                    more = lookup(flow)
                    if more:
                        self.counters.lost_events += more
                        flow.lost += more
                sess = flow.ctx
                if sess is not None:
                    self._smtp(sess, sess.conn.close(ev.ts))
                self._flow_end(flow, sess, ev)
                if sess is not None:
                    self._notify(sess, ev)
                    flow.ctx = None
            elif kind is reassembly.TcpAnomaly:
                self.counters.anomalies += 1
                sess = ev.flow.ctx
                if sess is None or self._bounded(sess, ev.name):
                    self.sink(records.anomaly_record(ev.flow, ev.ts, "tcp", ev.name, None, ev.detail))

    def _handle_content(self, events) -> None:
        """Events of the flows on none of the ports: probed until decided."""
        for ev in events:
            kind = type(ev)
            flow = ev[0]                   # every event's first field
            ctx = flow.ctx
            if kind is reassembly.FlowStart:
                flow.ctx = SmtpProbe()
            elif type(ctx) is Session:
                self._handle((ev,))
            elif ctx is None or ctx is _NOT_SMTP:
                if kind is reassembly.FlowEnd:
                    flow.ctx = None
            elif kind is _Data:
                verdict = ctx.feed(ev[1], ev[2], ev[3])
                if verdict is SMTP:
                    self._found(flow, ctx)
                elif verdict is NOT_SMTP:
                    if ctx.tls and flow.resp_p == 465:
                        self.counters.implicit_tls += 1
                    flow.ctx = _NOT_SMTP
            elif kind is reassembly.TcpAnomaly:
                anomalies = ctx.held
                if sum(1 for h in anomalies if type(h) is reassembly.TcpAnomaly) < _PROBE_ANOMALIES:
                    anomalies.append(ev)
            else:                # a gap or the end before it was decided: not dissected
                flow.ctx = None if kind is reassembly.FlowEnd else _NOT_SMTP

    def _found(self, flow, probe: SmtpProbe) -> None:
        """``flow`` is SMTP: dissect what its probe held, as from its start."""
        c = self.counters
        by = c.by_content
        port = str(flow.resp_p)
        by[port] = by.get(port, 0) + 1
        if probe.tunnel is not None:
            c.tunnels += 1
        flow.ctx = None
        held, skip = probe.held, dict(probe.skip)
        first = held[0]
        start_ts = first.ts if type(first) is reassembly.TcpAnomaly else first[2]
        self._handle((reassembly.FlowStart(flow, start_ts),))
        for item in held:
            if type(item) is reassembly.TcpAnomaly:
                self._handle((item,))
                continue
            direction, data, ts = item
            left = skip[direction]
            if left:                       # the proxy's exchange: not SMTP
                skip[direction] = max(0, left - len(data))
                data = data[left:]
                if not data:
                    continue
            self._handle((_Data(flow, direction, data, ts),))

    def _smtp(self, sess: Session, events) -> None:
        for ev in events:
            kind = type(ev)
            if kind is sev.Transaction:
                self.counters.transactions += 1
                sess.transactions += 1
                done = sess.mime_done
                summary = done.pop(ev.trans_depth, None) if done else None
                self._write(sess, ev, records.smtp_record(sess.flow, ev, summary, sess.auth))
                continue
            if kind is sev.MailContent and self.mime is not None:
                if self.listeners:
                    self._notify(sess, ev)
                parser = sess.mime
                if parser is None or parser.trans_depth != ev.trans_depth:
                    if parser is not None:        # its MessageEnd never came
                        self._mime_end(sess, ev.ts)
                    parser = sess.mime = self.mime.parser(sess.flow.uid, ev.trans_depth)
                more = parser.feed(ev.data, ev.ts)
                if more:
                    self._smtp(sess, more)
                continue
            if kind is sev.MessageEnd and sess.mime is not None:
                self._mime_end(sess, ev.ts, ev.complete)
            elif kind is mev.Attachment:
                self.counters.files += 1
                self._write(sess, ev, records.files_record(sess.flow, ev))
                continue
            if kind is sev.SmtpAnomaly:
                self.counters.anomalies += 1
                written = self._bounded(sess, ev.name)
                if written or self.listeners:
                    record = records.anomaly_record(sess.flow, ev.ts, "smtp", ev.name, ev.direction, ev.detail)
                    if written:
                        self._write(sess, ev, record)
                    else:                      # not written; the listeners still see it
                        sess.record = record
                        self._notify(sess, ev)
                        sess.record = None
                continue
            if kind is sev.AuthEvent:
                if sess.auth is None:
                    sess.auth = AuthTally()
                sess.auth.add(ev)
                by = self.counters.auth
                by[ev.outcome] = by.get(ev.outcome, 0) + 1
            elif kind is sev.StartTLS:
                sess.tls = True
                self.counters.starttls += 1
                if self.on_starttls is not None:
                    self.on_starttls(sess)
            if self.listeners:
                self._notify(sess, ev)

    def _bounded(self, sess: Session, name: str) -> bool:
        """One more anomaly ``name`` in ``sess``: may its record be written?"""
        counts = sess.anomalies
        if counts is None:
            counts = sess.anomalies = {}
        n = counts[name] = counts.get(name, 0) + 1
        if n <= self._anomaly_bound:
            return True
        self.counters.anomalies_suppressed += 1
        return False

    def _flow_end(self, flow, sess: Session | None, ev) -> None:
        """What the sensor lost or left out of the flow, said in its last records."""
        ts = ev.ts
        if flow.lost:
            self.counters.flows_with_loss += 1
            gaps = flow.orig.gaps + flow.resp.gaps
            self.sink(records.anomaly_record(
                flow, ts, "sensor", EVENT_LOSS, None,
                f"{flow.lost} event(s) of this flow lost in the kernel's event ring (ring full); "
                f"{gaps} octet(s) of the flow were gaps; what its records say may be incomplete"))
        if ev.reason == "evicted":
            self.sink(records.anomaly_record(
                flow, ts, "sensor", FLOW_EVICTED, None,
                f"the flow table was full ({self.reassembler.limits.max_flows} flows): this flow, the "
                "least recently active, was ended; a later segment starts it anew, partial"))
        counts = sess.anomalies if sess is not None else None
        if counts:
            bound = self._anomaly_bound
            for name, n in counts.items():
                if n > bound:
                    rec = records.anomaly_record(flow, ts, "sensor", ANOMALIES_SUPPRESSED, None,
                                                 f"{name}: {n} in this connection, the first {bound} "
                                                 f"written, {n - bound} not")
                    rec["suppressed_name"] = name
                    rec["suppressed_count"] = n - bound
                    self.sink(rec)

    def _mime_end(self, sess: Session, ts: float, complete: bool = False) -> None:
        """The message of ``sess.mime`` ended: its last entities, its summary kept for the transaction."""
        parser, sess.mime = sess.mime, None
        more = parser.finish(ts, complete)
        if sess.mime_done is None:
            sess.mime_done = {}
        sess.mime_done[parser.trans_depth] = parser.summary
        if more:
            self._smtp(sess, more)

    def _write(self, sess: Session, ev, record: dict) -> None:
        """Write the record of ``ev``, then show ``ev`` to the listeners with
        the same record in ``sess.record``."""
        self.sink(record)
        if self.listeners:
            sess.record = record
            self._notify(sess, ev)
            sess.record = None

    def _notify(self, sess: Session, ev) -> None:
        for listener in self.listeners:
            try:
                listener(sess, ev)
            except Exception:      # a listener's bug must not stop dissection
                self.counters.listener_errors += 1

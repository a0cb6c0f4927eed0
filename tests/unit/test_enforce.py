"""The replay's verdict table decides like the kernel: flow drops both ways,
bans on the SMTP ports only, expiry on the caller's clock."""

from sensor.rules.enforce import Verdicts
from sensor.stream.flowid import pack_addr
from sensor.stream.packet import ACK, RST, SYN, Segment


def seg(src, sport, dst, dport, flags=ACK):
    return Segment(4, pack_addr(src), pack_addr(dst), sport, dport, 0, 0, flags, b"", 0, 0)


def test_a_ban_drops_the_hosts_smtp_packets_both_ways_and_nothing_else():
    v = Verdicts(ports=(25, 587))
    v.add_ban("192.0.2.66/32", expires=None)
    assert not v.passes(seg("192.0.2.66", 40000, "192.0.2.25", 25), 1.0)
    assert not v.passes(seg("192.0.2.25", 587, "192.0.2.66", 40001), 1.0)
    assert v.passes(seg("192.0.2.66", 40002, "192.0.2.25", 22), 1.0)      # SSH: untouched, like XDP
    assert v.passes(seg("192.0.2.10", 40000, "192.0.2.25", 25), 1.0)


def test_a_prefix_ban_covers_the_network_until_it_expires():
    v = Verdicts()
    v.add_ban("2001:db8:66::/48", expires=100.0)
    assert not v.passes(Segment(6, pack_addr("2001:db8:66::1"), pack_addr("2001:db8:25::25"), 40000, 25,
                                0, 0, ACK, b"", 0, 0), 99.0)
    assert v.passes(Segment(6, pack_addr("2001:db8:66::1"), pack_addr("2001:db8:25::25"), 40000, 25,
                            0, 0, ACK, b"", 0, 0), 100.0)


def test_a_dropped_flow_is_dropped_in_both_directions_only():
    v = Verdicts()
    v.add_flow(("192.0.2.10", 40000, "192.0.2.25", 25))
    assert not v.passes(seg("192.0.2.10", 40000, "192.0.2.25", 25), 1.0)
    assert not v.passes(seg("192.0.2.25", 25, "192.0.2.10", 40000), 1.0)
    assert v.passes(seg("192.0.2.10", 40001, "192.0.2.25", 25), 1.0)


def test_expired_entries_are_pruned_from_the_table():
    v = Verdicts()
    v.add_flow(("192.0.2.10", 40000, "192.0.2.25", 25), expires=10.0)
    v.add_ban("192.0.2.66/32", expires=20.0)
    assert v.passes(seg("192.0.2.10", 40000, "192.0.2.25", 25), 15.0)
    assert v.flows == {} and len(v.bans) == 1
    v.passes(seg("192.0.2.10", 40000, "192.0.2.25", 25), 25.0)
    assert len(v.bans) == 0


def test_the_live_gate_keeps_a_flow_drop_only_while_stragglers_can_arrive():
    v = Verdicts(keep=10.0)
    v.add_flow(("192.0.2.10", 40000, "192.0.2.25", 25), expires=None, now=100.0)   # dropped for good
    assert not v.passes(seg("192.0.2.10", 40000, "192.0.2.25", 25), 105.0)
    assert v.passes(seg("192.0.2.10", 40000, "192.0.2.25", 25), 111.0)          # the kernel's job now
    assert v.flows == {}


CLIENT, SERVER = ("192.0.2.10", 40000), ("192.0.2.25", 25)


def test_a_torn_down_flow_in_replay_passes_rsts_and_a_new_connection_once_the_server_had_its_rst():
    """As the kernel (bpf/datapath.c, ss_reset_how): a client SYN before the
    server's packet passes but keeps the drop; after it, ends the drop."""
    v = Verdicts()
    v.add_flow((*CLIENT, *SERVER), reset=True)
    assert not v.passes(seg(*CLIENT, *SERVER), 1.0)                     # made into an RST: not dissected
    assert v.passes(seg(*CLIENT, *SERVER, flags=RST), 1.0)              # an RST goes on
    assert v.passes(seg(*CLIENT, *SERVER, flags=SYN), 1.0)              # passes, the drop stays
    assert v.flow_dropped(*CLIENT, *SERVER)
    assert not v.passes(seg(*SERVER, *CLIENT), 1.0)                     # the server gets its RST
    assert v.passes(seg(*CLIENT, *SERVER, flags=SYN), 2.0)              # a new connection
    assert not v.flow_dropped(*CLIENT, *SERVER) and not v.flow_dropped(*SERVER, *CLIENT)
    assert v.passes(seg(*CLIENT, *SERVER), 2.0) and v.resets == v.torn == set()


def test_a_silent_drop_passes_nothing_and_a_syn_does_not_end_it():
    v = Verdicts()
    v.add_flow((*CLIENT, *SERVER))
    assert not v.passes(seg(*SERVER, *CLIENT), 1.0)
    for flags in (RST, SYN, ACK):
        assert not v.passes(seg(*CLIENT, *SERVER, flags=flags), 1.0)


def test_the_live_gate_ends_a_torn_down_drop_on_the_syn_the_kernel_let_through():
    v = Verdicts(keep=10.0)
    v.add_flow((*CLIENT, *SERVER), now=100.0, reset=True)
    assert not v.passes(seg(*CLIENT, *SERVER), 100.5)                   # a straggler
    assert v.passes(seg(*CLIENT, *SERVER, flags=SYN), 101.0)           # in the ring: the kernel ended it
    assert v.passes(seg(*CLIENT, *SERVER), 101.0) and v.flows == {}


class _Flow:
    def __init__(self, orig_h, orig_p, resp_h, resp_p):
        self.orig_h, self.orig_p, self.resp_h, self.resp_p = orig_h, orig_p, resp_h, resp_p


def test_a_ban_tears_down_the_open_flows_of_the_network_and_no_other():
    from sensor.rules.enforce import ReplayEnforcer
    enforcer = ReplayEnforcer()
    enforcer.verdicts.ports = frozenset((25,))
    inbound = _Flow("192.0.2.66", 40000, "198.51.100.25", 25)
    outbound = _Flow("198.51.100.25", 40001, "192.0.2.67", 25)       # this host's mail to the banned network
    other = _Flow("203.0.113.9", 40002, "198.51.100.25", 25)
    enforcer.open_flows = lambda: (inbound, outbound, other)
    enforcer.ban("192.0.2.64/30", ttl=None, now=1.0)
    resets = enforcer.verdicts.resets
    assert (pack_addr("192.0.2.66"), 40000, pack_addr("198.51.100.25"), 25) in resets
    assert (pack_addr("192.0.2.67"), 25, pack_addr("198.51.100.25"), 40001) in resets
    assert not any(pack_addr("203.0.113.9") in key for key in resets)
    # the torn-down flow's RST passes (as the kernel lets it); a new connection from the host meets the ban
    assert enforcer.passes(seg("192.0.2.66", 40000, "198.51.100.25", 25, flags=RST | ACK), 2.0)
    assert not enforcer.passes(seg("192.0.2.66", 40009, "198.51.100.25", 25, flags=SYN), 2.0)


def test_a_kernel_verdict_is_timed_from_its_event_and_from_its_decision():
    import time

    from sensor.rules.enforce import KernelEnforcer

    class Maps:
        def ban(self, network, ttl, reason):
            time.sleep(0.002)

    enforcer = KernelEnforcer(Maps())
    enforcer.ban("192.0.2.66/32", ttl=None, now=1.0)        # a tick's or an operator's: no event
    assert enforcer.counters.since_decision.count == 1
    assert enforcer.counters.since_event.count == 0
    enforcer.event_ts_ns = time.monotonic_ns() - 50_000_000  # the event came 50 ms ago
    enforcer.ban("192.0.2.67/32", ttl=None, now=1.0)
    hist = enforcer.counters.since_event
    assert hist.count == 1 and hist.sum >= 0.052
    assert dict(hist.cumulative())["0.05"] == 0 and dict(hist.cumulative())["0.1"] == 1
    assert enforcer.counters.since_decision.sum >= 0.004

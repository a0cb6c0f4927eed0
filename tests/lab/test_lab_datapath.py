"""The datapath attached in a real network-namespace lab: a real SMTP server
(aiosmtpd) behind a veth, a real client (swaks), the kernel programs on the
server side. Events of both directions reach the consumer; a ban stops new
connections in XDP before they reach the server."""

from __future__ import annotations

import json

import pytest

from sensor.kernel import abi
from sensor.kernel.datapath import Datapath, DatapathConfig
from sensor.lab.network import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6
from support.prereqs import require_swaks_ipv6


@pytest.fixture
def datapath(lab, test_pin_root):
    dp = Datapath(DatapathConfig(pin_dir=test_pin_root / "lab" / f"v{abi.ABI_VERSION}")).load()
    try:
        dp.attach(lab.server_if, netns=lab.server_ns)
        yield dp
    finally:
        for table in (dp.maps.ban_v4, dp.maps.ban_v6, dp.maps.flow_drop, dp.maps.bypass_map):
            table.clear()
        dp.close()


def journal(lab) -> list[dict]:
    return [json.loads(line) for line in lab.journal.read_text().splitlines()]


def send_mail(lab, server=SERVER_V4, timeout=20):
    return lab.swaks("--from", "alice@example.org", "--to", "bob@example.net", server=server, timeout=timeout)


@pytest.mark.parametrize("server,client", [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)], ids=["ipv4", "ipv6"])
def test_a_real_session_shows_both_directions_in_the_consumer(lab, datapath, server, client):
    if server == SERVER_V6:
        require_swaks_ipv6()
    reader = datapath.event_reader()
    result = send_mail(lab, server=server)
    assert result.returncode == 0, result.stdout + result.stderr
    events = reader.poll(100) + reader.poll(100)
    ingress = [e for e in events if e.header.direction == abi.Direction.INGRESS]
    egress = [e for e in events if e.header.direction == abi.Direction.EGRESS]
    server_ifindex = lab.ifindex(lab.server_ns, lab.server_if)
    assert all(e.header.ifindex == server_ifindex for e in events)
    client_bytes = b"".join(e.payload for e in ingress)
    server_bytes = b"".join(e.payload for e in egress)
    assert all(e.src == client for e in ingress) and all(e.src == server for e in egress)
    assert b"EHLO client.lab.example\r\n" in client_bytes
    assert b"MAIL FROM:<alice@example.org>" in client_bytes and b"QUIT\r\n" in client_bytes
    assert server_bytes.startswith(b"220 ") and b"250 2.0.0 OK: queued" in server_bytes
    assert any(e.header.tcp_flags & abi.TCP_SYN for e in ingress)
    assert reader.lost == 0 and reader.callback_errors == 0
    counters = datapath.maps.counters()
    assert counters["ingress"]["pushed"] == len(ingress)
    assert counters["egress"]["pushed"] == len(egress)


def test_a_banned_client_never_reaches_the_server(lab, datapath):
    assert send_mail(lab).returncode == 0
    connections_before = sum(1 for e in journal(lab) if e["kind"] == "connection")
    datapath.maps.ban(f"{CLIENT_V4}/32", ttl=60)
    result = lab.swaks("--from", "alice@example.org", "--to", "bob@example.net", "--timeout", "3", timeout=20)
    assert result.returncode != 0
    assert sum(1 for e in journal(lab) if e["kind"] == "connection") == connections_before
    counters = datapath.maps.counters()["ingress"]
    assert counters["drop_ban"] >= 1
    [ban] = datapath.maps.bans()
    assert ban.packets == counters["drop_ban"]
    datapath.maps.unban(f"{CLIENT_V4}/32")
    assert send_mail(lab).returncode == 0


def test_detach_leaves_the_interface_as_it_was(lab, test_pin_root):
    from sensor.kernel.netns import iproute

    dp = Datapath(DatapathConfig(pin_dir=test_pin_root / "lab" / f"v{abi.ABI_VERSION}")).load()
    dp.attach(lab.server_if, netns=lab.server_ns)
    dp.close()
    with iproute(lab.server_ns) as ipr:
        index = ipr.link_lookup(ifname=lab.server_if)[0]
        xdp = ipr.get_links(index)[0].get_attr("IFLA_XDP")
        assert not (xdp and xdp.get_attr("IFLA_XDP_PROG_ID"))
        assert not [q for q in ipr.get_qdiscs(index) if q.get_attr("TCA_KIND") == "clsact"]


def test_an_interface_with_a_foreign_xdp_program_is_refused_not_clobbered(lab, datapath, test_pin_root):
    from sensor.errors import SensorError

    other = Datapath(DatapathConfig(pin_dir=test_pin_root / "lab" / f"v{abi.ABI_VERSION}")).load()
    try:
        with pytest.raises(SensorError, match="already has an XDP program"):
            other.attach(lab.server_if, netns=lab.server_ns)
    finally:
        other.close()
    # the first program is still attached and still sees traffic
    reader = datapath.event_reader()
    assert send_mail(lab).returncode == 0
    assert reader.poll(100) + reader.poll(100)


def test_a_missing_interface_gets_one_clear_error(lab, test_pin_root):
    from sensor.errors import SensorError

    with Datapath(DatapathConfig(pin_dir=test_pin_root / "lab" / f"v{abi.ABI_VERSION}")) as dp:
        with pytest.raises(SensorError, match="interface 'nope0' does not exist in network namespace"):
            dp.attach("nope0", netns=lab.server_ns)


def test_a_clsact_qdisc_we_did_not_create_is_kept(lab, test_pin_root):
    import subprocess

    subprocess.run(lab.exec_argv(lab.server_ns, "tc", "qdisc", "add", "dev", lab.server_if, "clsact"), check=True)
    try:
        with Datapath(DatapathConfig(pin_dir=test_pin_root / "lab" / f"v{abi.ABI_VERSION}")) as dp:
            dp.attach(lab.server_if, netns=lab.server_ns)
        shown = subprocess.run(lab.exec_argv(lab.server_ns, "tc", "qdisc", "show", "dev", lab.server_if),
                               capture_output=True, text=True, check=True).stdout
        filters = subprocess.run(lab.exec_argv(lab.server_ns, "tc", "filter", "show", "dev", lab.server_if,
                                               "egress"), capture_output=True, text=True, check=True).stdout
        assert "clsact" in shown and "ss_tc_egress" not in filters
    finally:
        subprocess.run(lab.exec_argv(lab.server_ns, "tc", "qdisc", "del", "dev", lab.server_if, "clsact"))

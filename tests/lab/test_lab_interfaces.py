"""Several interfaces (issue 16 §6): `smtp-sensor run -i A -i B` on the two
veth interfaces of a router namespace (sensor.lab.gateway: the client's link
and the server's). XDP and TC on both, one pin folder, counters per
interface in `status` and in the metrics, both detached at the stop; and
when the second cannot be attached, the first is detached before the one
line that says why."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from sensor.kernel import abi
from sensor.kernel.datapath import attached_xdp
from sensor.kernel.netns import iproute
from sensor.lab.gateway import GATEWAY_SERVER_V4
from support.lab_sensor import REPO, SensorProcess
from support.lab_session import gateway_with_server
from support.prereqs import require_module

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def gateway(lab_prereqs, tmp_path_factory):
    yield from gateway_with_server(tmp_path_factory, "interfaces")


def attached(lab, ifname) -> tuple[int | None, str]:
    """(the XDP program's id, the egress filters as tc prints them) of a router interface."""
    with iproute(lab.router_ns) as ipr:
        xdp = attached_xdp(ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0])[0]
    tc = subprocess.run(["tc", "-n", lab.router_ns, "filter", "show", "dev", ifname, "egress"],
                        capture_output=True, text=True).stdout
    return xdp, tc


def scrape(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_both_interfaces_are_inspected_counted_apart_and_detached(gateway, test_pin_root, tmp_path):
    require_module("prometheus_client")
    lab = gateway
    pins = test_pin_root / "interfaces" / f"v{abi.ABI_VERSION}"
    sensor = SensorProcess(lab, tmp_path / "records.json", pins, tmp_path / "c.sock",
                           "-i", lab.router_server_if, "--metrics", "127.0.0.1:0",
                           interface=lab.router_if, netns=lab.router_ns)
    try:
        running = sensor.wait_log(lambda e: e.get("event") == "running", timeout=120)
        assert running["interfaces"] == [lab.router_if, lab.router_server_if]
        result = lab.swaks("--from", "two@allowed.example", "--to", "user@lab.example", server=GATEWAY_SERVER_V4)
        assert result.returncode == 0, result.stdout + result.stderr
        sensor.wait_record(lambda r: r.get("mailfrom") == "two@allowed.example")

        status = sensor.cli("status")
        by_name = {a["interface"]: a for a in status["interfaces"]}
        assert set(by_name) == {lab.router_if, lab.router_server_if}
        assert len({(a["xdp_prog_id"], a["tc_prog_id"]) for a in by_name.values()}) == 1   # one load
        for name, a in by_name.items():
            xdp, tc = attached(lab, name)
            assert xdp == a["xdp_prog_id"] and "ss_tc_egress" in tc
            # the client's segments come in on the client's link and leave on the
            # server's; the replies the other way: every hook of both saw the session
            for direction in ("ingress", "egress"):
                assert a["counters"][direction]["pushed"] > 0, (name, direction, a["counters"])
                assert a["counters"][direction]["seen"] >= a["counters"][direction]["pushed"]
        # the two interfaces' counters add up to the direction's (cheap passes aside)
        for direction in ("ingress", "egress"):
            total = sum(a["counters"][direction]["pushed"] for a in by_name.values())
            assert total == status["counters"][direction]["pushed"]
        assert sorted(p.name for p in pins.iterdir()) == ["ss_ban_v4", "ss_ban_v6", "ss_bypass", "ss_flow_drop"]
        # a segment through the router is pushed twice (XDP of one, TC of the other): read as a retransmission
        assert status["reassembly"]["retransmitted"] > 0

        got = scrape(running["metrics"])
        after = sensor.cli("status")
        for name in by_name:
            for direction in ("ingress", "egress"):
                key = ("smtp_sensor_interface_packets_total",
                       (("direction", direction), ("interface", name), ("verdict", "pushed")))
                before_n = by_name[name]["counters"][direction]["pushed"]
                after_n = {a["interface"]: a for a in after["interfaces"]}[name]["counters"][direction]["pushed"]
                assert before_n <= got[key] <= after_n, (key, got.get(key))
        assert sensor.stop() == 0
    finally:
        sensor.stop()
    for name in (lab.router_if, lab.router_server_if):
        xdp, tc = attached(lab, name)
        assert xdp is None and "ss_tc_egress" not in tc, (name, xdp, tc)


def test_when_the_second_interface_fails_the_first_is_detached(gateway, test_pin_root, tmp_path):
    lab = gateway
    result = subprocess.run(
        [sys.executable, "-m", "sensor.cli", "run", "-i", lab.router_if, "-i", "ss-no-such-if",
         "--netns", lab.router_ns, "--pin-dir", str(test_pin_root / "interfaces-fail" / f"v{abi.ABI_VERSION}"),
         "--control-socket", "none", "-o", str(tmp_path / "records.json")],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("smtp-sensor: interface 'ss-no-such-if' does not exist in network namespace"), \
        result.stderr
    assert "Traceback" not in result.stderr
    # it was attached (the log says so), and is no more
    assert '"attached"' in result.stdout and lab.router_if in result.stdout
    xdp, tc = attached(lab, lab.router_if)
    assert xdp is None and "ss_tc_egress" not in tc

"""A sensor killed without cleanup (SIGKILL, the OOM killer) leaves its XDP
program and TC filter attached.  The next start with the same pin folder
replaces them atomically and runs (systemd's Restart=on-failure recovers); a
clean stop then leaves nothing.  What is not a killed sensor's own is still
refused in one line: a program named like ours but of another pin folder, a
running sensor's, a foreign one.  `smtp-sensor unload -i IF` removes a
killed sensor's programs by hand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from sensor.kernel import bpfsys
from sensor.kernel.datapath import TC_PRIO, attached_xdp
from sensor.kernel.netns import iproute
from sensor.lab.network import Lab
from support.lab_sensor import SensorProcess

CLI = [sys.executable, "-m", "sensor.cli"]


def xdp_prog_id(lab) -> int | None:
    with iproute(lab.server_ns) as ipr:
        return attached_xdp(ipr.get_links(ipr.link_lookup(ifname=lab.server_if)[0])[0])[0]


def tc_state(lab) -> tuple[str, str]:
    """(egress filters, qdiscs) of the server's veth as tc prints them."""
    run = lambda *a: subprocess.run(["tc", "-n", lab.server_ns, *a], capture_output=True, text=True).stdout
    return run("filter", "show", "dev", lab.server_if, "egress"), run("qdisc", "show", "dev", lab.server_if)


def running(sensor: SensorProcess) -> dict:
    return sensor.wait_log(lambda e: e.get("event") == "running", timeout=120)


def kill(sensor: SensorProcess) -> None:
    sensor.proc.send_signal(signal.SIGKILL)
    sensor.proc.wait()
    sensor.stop()


def start_refused(lab, pins, tmp_path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", "-i", lab.server_if, "--netns", lab.server_ns, "--pin-dir", str(pins),
                           "--control-socket", str(tmp_path / f"{name}.sock"), "--duration", "1"],
                          capture_output=True, text=True, timeout=120)


def assert_nothing_left(lab) -> None:
    assert xdp_prog_id(lab) is None
    filters, qdiscs = tc_state(lab)
    assert "ss_tc_egress" not in filters and "clsact" not in qdiscs, (filters, qdiscs)


def test_a_restart_takes_over_the_programs_of_a_killed_sensor(lab, test_pin_root, tmp_path):
    pins = test_pin_root / "takeover" / "v1"
    first = SensorProcess(lab, tmp_path / "r1.json", pins, tmp_path / "a.sock")
    try:
        running(first)
        old_xdp = xdp_prog_id(lab)
        kill(first)
    finally:
        first.stop()
    assert old_xdp is not None, "the killed sensor's XDP program should still be attached"
    assert "ss_tc_egress" in tc_state(lab)[0]

    # the name alone is not enough: a sensor of another pin folder refuses it
    other = start_refused(lab, test_pin_root / "takeover-other" / "v1", tmp_path, "o")
    assert other.returncode == 2 and "using no map pinned in" in other.stderr, other.stderr[-2000:]
    assert "Traceback" not in other.stderr and xdp_prog_id(lab) == old_xdp

    second = SensorProcess(lab, tmp_path / "r2.json", pins, tmp_path / "b.sock")
    try:
        running(second)
        took = second.wait_log(lambda e: e.get("event", "").startswith("took over"))
        assert took["replaced_xdp_prog_id"] == old_xdp and took["replaced_tc_prog_id"]
        new_xdp = xdp_prog_id(lab)
        assert new_xdp == took["xdp_prog_id"] != old_xdp
        status = second.cli("status")
        assert status["interfaces"][0]["xdp_prog_id"] == new_xdp
        # the new programs do the work: a session through them is recorded
        assert lab.swaks("--to", "rcpt@lab.example", "--from", "sender@lab.example").returncode == 0
        second.wait_record(lambda r: r.get("event_type") == "smtp" and r.get("mailfrom") == "sender@lab.example")
        # a second sensor on the same interface while this one runs: refused
        busy = start_refused(lab, pins, tmp_path, "c")
        assert busy.returncode == 2 and f"in use by the running process {second.proc.pid}" in busy.stderr, \
            busy.stderr[-2000:]
        assert second.stop() == 0
    finally:
        second.stop()
    assert_nothing_left(lab)


def test_unload_removes_a_killed_sensors_programs(lab, test_pin_root, tmp_path):
    pins = test_pin_root / "stale" / "v1"
    sensor = SensorProcess(lab, tmp_path / "r.json", pins, tmp_path / "a.sock", "--xdp-mode", "generic")
    try:
        running(sensor)
        kill(sensor)
    finally:
        sensor.stop()
    assert xdp_prog_id(lab) is not None
    unload = subprocess.run([*CLI, "unload", "-i", lab.server_if, "--netns", lab.server_ns, "--pin-dir", str(pins),
                             "--control-socket", str(tmp_path / "a.sock")], capture_output=True, text=True,
                            timeout=60)
    assert unload.returncode == 0, unload.stderr
    assert "removed XDP program" in unload.stdout and "(generic)" in unload.stdout
    assert "TC egress filter" in unload.stdout
    assert_nothing_left(lab)


@pytest.fixture
def foreign_xdp(lab):
    """A foreign XDP program (two instructions, no maps) attached by hand."""
    fd = bpfsys.load_xdp_pass("foreign_pass")
    with iproute(lab.server_ns) as ipr:
        idx = ipr.link_lookup(ifname=lab.server_if)[0]
        ipr.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", 1 << 2)]})
    try:
        yield bpfsys.prog_id(fd)
    finally:
        os.close(fd)
        with iproute(lab.server_ns) as ipr:
            ipr.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", 1 << 2)]})


def test_a_foreign_xdp_program_is_refused_and_left_alone(lab, foreign_xdp, test_pin_root, tmp_path):
    refused = start_refused(lab, test_pin_root / "foreign" / "v1", tmp_path, "f")
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = [line for line in refused.stderr.splitlines() if "foreign_pass" in line]
    assert len(lines) == 1 and "not smtp-sensor's" in lines[0] and "will not replace it" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert xdp_prog_id(lab) == foreign_xdp
    filters, qdiscs = tc_state(lab)
    assert "ss_tc_egress" not in filters and "clsact" not in qdiscs
    unload = subprocess.run([*CLI, "unload", "-i", lab.server_if, "--netns", lab.server_ns, "--keep-maps",
                             "--control-socket", str(tmp_path / "x.sock")], capture_output=True, text=True, timeout=60)
    assert unload.returncode == 0 and "no smtp-sensor program attached" in unload.stdout
    assert xdp_prog_id(lab) == foreign_xdp


def test_a_foreign_filter_at_our_tc_priority_is_refused(lab, test_pin_root, tmp_path):
    from bcc import BPF

    bpf = BPF(text=b"int foreign_cls(struct __sk_buff *skb) { return 0; }")
    fn = bpf.load_func(b"foreign_cls", BPF.SCHED_CLS)
    with iproute(lab.server_ns) as ipr:
        idx = ipr.link_lookup(ifname=lab.server_if)[0]
        ipr.tc("add", "clsact", idx)
        ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name="foreign_cls", parent="ffff:fff3", classid=1,
               direct_action=True, prio=TC_PRIO)
    try:
        refused = start_refused(lab, test_pin_root / "foreign-tc" / "v1", tmp_path, "t")
        assert refused.returncode == 2 and "TC egress filter 'foreign_cls" in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr and xdp_prog_id(lab) is None
        assert "foreign_cls" in tc_state(lab)[0]
    finally:
        with iproute(lab.server_ns) as ipr:
            ipr.tc("del", "clsact", idx)
        bpf.cleanup()

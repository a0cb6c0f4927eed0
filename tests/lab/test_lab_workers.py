"""Live flow-sharded workers (issue 15 §1): the real CLI sensor with
``--workers 2`` on the lab server's veth, clients from several addresses
that the kernel's hash puts in both workers' rings.

* every session is recorded once, in the one records file, by the worker of
  its client (the flows' ``worker`` in ``smtp-sensor flows``);
* ``smtp-sensor status`` sums the workers' counters and has a row per worker;
* a ban of one address or of a prefix, through the supervisor: dropped in
  XDP, listed, one drop record (and one for the unban);
* ``kill -9`` of one worker: the supervisor starts it again, counts it in
  ``status``, and the sessions after it are recorded;
* SIGTERM: exit 0, every worker ended, nothing of ours left on the interface;
* a worker that keeps dying stops the sensor (exit 1), detached;
* rules reloaded in every worker (the control request, SIGHUP), statistics
  snapshots per worker restored by their workers at the next start.

The first tests run in file order on one sensor; the last two start their own.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time

import pytest

from sensor import shard
from sensor.kernel import abi
from sensor.lab.network import Lab
from support.lab_sensor import SensorProcess, assert_detached

pytestmark = pytest.mark.lab

WORKERS = 2
CLIENTS = tuple(f"192.0.2.{i}" for i in range(10, 18))


def worker_of(address: str) -> int:
    return shard.worker_of_address(ipaddress.ip_address(address).packed, WORKERS)


@pytest.fixture(scope="module")
def lab(lab_prereqs, tmp_path_factory):
    journal = tmp_path_factory.mktemp("workers-lab") / "journal.jsonl"
    with Lab(client_addrs=CLIENTS) as lab:
        lab.journal = journal
        lab.start_server(journal=journal)
        yield lab


@pytest.fixture(scope="module")
def sensor(lab, test_pin_root, tmp_path_factory):
    assert {worker_of(a) for a in CLIENTS} == set(range(WORKERS))   # the clients do land in both
    work = tmp_path_factory.mktemp("workers-sensor")
    proc = SensorProcess(lab, work / "records.json", test_pin_root / "workers" / f"v{abi.ABI_VERSION}",
                         work / "control.sock", workers=WORKERS)
    try:
        proc.wait_log(lambda e: e.get("event") == "supervising", timeout=90)
        for worker in range(WORKERS):
            proc.wait_log(lambda e, w=worker: e.get("event") == "running" and e.get("worker") == w, timeout=30)
        yield proc
    finally:
        proc.stop()


def session(lab, source: str, tag: str) -> None:
    result = lab.swaks("--from", f"{tag}@example.org", "--to", "user@lab.example", source=source)
    assert result.returncode == 0, result.stdout + result.stderr


def smtp_records(sensor, tag: str) -> list[dict]:
    return [r for r in sensor.records() if r.get("event_type") == "smtp" and r.get("mailfrom") == f"{tag}@example.org"]


def wait_recorded(sensor, tags, timeout: float = 10.0) -> dict[str, list[dict]]:
    deadline = time.monotonic() + timeout
    while True:
        found = {tag: smtp_records(sensor, tag) for tag in tags}
        if all(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_sessions_from_every_client_are_recorded_once_in_one_stream(lab, sensor):
    tags = {f"first-{i}": client for i, client in enumerate(CLIENTS)}
    for tag, client in tags.items():
        session(lab, client, tag)
    found = wait_recorded(sensor, tags)
    assert {tag: len(recs) for tag, recs in found.items()} == {tag: 1 for tag in tags}, sensor.describe()
    for tag, client in tags.items():
        assert found[tag][0]["id.orig_h"] == client
    uids = [r["uid"] for r in sensor.records() if r.get("event_type") == "smtp"]
    assert len(uids) == len(set(uids))
    # both workers did their share (their rings' events: the status test)


def test_status_sums_the_workers_and_lists_each(lab, sensor):
    status = sensor.cli("status")
    rows = status["workers"]
    assert [r["worker"] for r in rows] == list(range(WORKERS))
    assert all(r["alive"] and r["answered"] for r in rows)
    events = [r["events"] for r in rows]
    assert all(e > 0 for e in events), rows          # both rings were read
    assert status["events"] == sum(events)
    # the kernel's counters are one map, counted once: every event it pushed
    # (held ones too: the commit hold is on, each worker released its own) was read by a worker
    kernel = status["counters"]
    assert kernel["ingress"]["held"] > 0
    assert status["events"] == kernel["ingress"]["pushed"] + kernel["ingress"]["held"] + kernel["egress"]["pushed"]
    assert status["pipeline"]["transactions"] == sum(r["pipeline"]["transactions"] for r in rows) == len(CLIENTS)
    assert status["supervisor"]["worker_restarts"] == 0


def test_flows_are_listed_across_workers_with_their_worker(lab, sensor):
    socks = []
    try:
        for client in CLIENTS[:4]:
            sock = lab.connect()
            socks.append(sock)
        # the lab's connect() binds no source: open flows from the default address
        time.sleep(0.5)
        flows = sensor.cli("flows")
        assert len(flows) >= len(socks)
        for row in flows:
            host = row["orig"].rsplit(":", 1)[0]
            assert row["worker"] == worker_of(host)
    finally:
        for sock in socks:
            sock.close()


def drop_records(sensor, target: str, action: str) -> list[dict]:
    return [r for r in sensor.records() if r.get("event_type") == "drop" and r.get("target") == target
            and r.get("action") == action]


@pytest.mark.parametrize("prefix", ["one address", "192.0.2.0/28"])
def test_a_ban_through_the_supervisor_drops_in_xdp_is_listed_and_recorded_once(lab, sensor, prefix):
    client = CLIENTS[1]
    target = f"{client}/32" if prefix == "one address" else prefix
    assert sensor.cli("ban", "add", target.removesuffix("/32"), "--ttl", "600", "--reason", "workers test") == {
        "banned": target, "ttl": 600.0, "note": "workers test"}
    try:
        [row] = [b for b in sensor.cli("ban", "list") if b["target"] == target]
        assert row["note"] == "workers test"
        result = lab.swaks("--from", "banned@example.org", "--to", "user@lab.example", source=client,
                           timeout=10)
        assert result.returncode != 0      # its SYNs are dropped in XDP
        assert sensor.cli("status")["counters"]["ingress"]["drop_ban"] >= 1
    finally:
        assert sensor.cli("ban", "del", target) == {"unbanned": target}
    time.sleep(0.5)
    assert len(drop_records(sensor, target, "ban_source")) == 1
    assert len(drop_records(sensor, target, "unban_source")) == 1
    assert not [b for b in sensor.cli("ban", "list") if b["target"] == target]


def test_a_killed_worker_is_restarted_counted_and_its_clients_recorded_again(lab, sensor):
    victim = 1
    pid = next(r["pid"] for r in sensor.cli("status")["workers"] if r["worker"] == victim)
    mark = sensor.mark()
    os.kill(pid, signal.SIGKILL)
    restarted = sensor.wait_log(lambda e: e.get("event", "").startswith("worker died"), mark, timeout=10)
    assert restarted["worker"] == victim
    sensor.wait_log(lambda e: e.get("event") == "running" and e.get("worker") == victim, mark, timeout=30)
    tags = {f"after-{i}": client for i, client in enumerate(CLIENTS)}
    for tag, client in tags.items():
        session(lab, client, tag)
    found = wait_recorded(sensor, tags)
    assert {tag: len(recs) for tag, recs in found.items()} == {tag: 1 for tag in tags}, sensor.describe()
    status = sensor.cli("status")
    assert status["supervisor"]["worker_restarts"] == 1
    row = next(r for r in status["workers"] if r["worker"] == victim)
    assert row["restarts"] == 1 and row["alive"] and row["pid"] != pid


def test_sigterm_stops_every_worker_and_detaches(lab, sensor):
    pids = [r["pid"] for r in sensor.cli("status")["workers"]]
    mark = sensor.mark()
    assert sensor.stop() == 0, sensor.describe()
    sensor.wait_log(lambda e: e.get("event") == "stopped" and "supervisor" in e, mark, timeout=1)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert_detached(lab)


def test_a_worker_that_keeps_dying_stops_the_sensor_detached(lab, test_pin_root, tmp_path):
    """RESTARTS_MAX deaths within RESTART_WINDOW are restarted; the next one
    stops the sensor, exit status 1, the programs detached (fail open)."""
    from sensor.service.supervisor import RESTARTS_MAX

    proc = SensorProcess(lab, tmp_path / "records.json", test_pin_root / "workers-dying" / f"v{abi.ABI_VERSION}",
                         tmp_path / "control.sock", workers=WORKERS)
    try:
        mark = 0
        for death in range(RESTARTS_MAX + 1):
            running = proc.wait_log(lambda e: e.get("event") == "running" and e.get("worker") == 0, mark,
                                    timeout=90 if death == 0 else 30)
            pid = next(r["pid"] for r in proc.cli("status")["workers"] if r["worker"] == 0)
            mark = proc.logs.index(running) + 1
            os.kill(pid, signal.SIGKILL)
        proc.wait_log(lambda e: e.get("event", "").startswith("a worker keeps dying"), mark, timeout=10)
        assert proc.proc.wait(timeout=30) == 1
    finally:
        proc.stop()
    assert proc.wait_log(lambda e: e.get("event") == "detached", mark, timeout=1)
    assert_detached(lab)


def test_each_worker_reloads_the_rules_and_keeps_its_own_hosts_statistics(lab, test_pin_root, tmp_path):
    """Rules in every worker (a reload through the supervisor, SIGHUP
    forwarded); statistics snapshots per worker, each restored by its
    worker at the next start, the hosts' sum unchanged."""
    import shutil

    from support.lab_sensor import REPO

    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    state = tmp_path / "stats.msgpack"
    pins = test_pin_root / "workers-state" / f"v{abi.ABI_VERSION}"
    args = ("--rules", str(rules), "--state-file", str(state))
    first = SensorProcess(lab, tmp_path / "r1.json", pins, tmp_path / "a.sock", *args, workers=WORKERS)
    try:
        for worker in range(WORKERS):
            first.wait_log(lambda e, w=worker: e.get("event") == "running" and e.get("worker") == w, timeout=120)
        reloaded = first.cli("reload")
        assert reloaded["workers"] == WORKERS and reloaded["errors"] == {} and reloaded["rules"]
        mark = first.mark()
        first.proc.send_signal(signal.SIGHUP)
        for worker in range(WORKERS):
            first.wait_log(lambda e, w=worker: e.get("worker") == w and "SIGHUP" in e.get("event", ""), mark)
        for i, client in enumerate(CLIENTS[:4]):
            session(lab, client, f"stats-{i}")
        wait_recorded(first, [f"stats-{i}" for i in range(4)])
        hosts = first.cli("status")["spam_stats"]["hosts"]
        assert hosts >= 4
        assert sorted(r["host"] for r in first.cli("stats")["hosts"]) == sorted(CLIENTS[:4])
    finally:
        assert first.stop() == 0, first.describe()
    for worker in range(WORKERS):
        assert state.with_name(f"{state.name}.worker{worker}").exists()
    again = SensorProcess(lab, tmp_path / "r2.json", pins, tmp_path / "b.sock", *args, workers=WORKERS)
    try:
        for worker in range(WORKERS):
            restored = again.wait_log(lambda e, w=worker: e.get("event") == "statistics snapshot"
                                      and e.get("worker") == w, timeout=120)
            assert restored["level"] == "info", restored
        for worker in range(WORKERS):
            again.wait_log(lambda e, w=worker: e.get("event") == "running" and e.get("worker") == w, timeout=60)
        assert again.cli("status")["spam_stats"]["hosts"] == hosts
        by_worker = {r["host"]: r["worker"] for r in again.cli("stats")["hosts"]}
        assert by_worker == {c: worker_of(c) for c in CLIENTS[:4]}
    finally:
        again.stop()


def test_metrics_sum_the_workers_and_an_eve_output_added_on_reload_gets_every_later_record(
        lab, test_pin_root, tmp_path):
    """``--workers 2 --metrics``: the scrape's userland counters are the sums
    of the workers' status, the kernel's read once, with the names a single
    process exports; a reload adding an ``[[output]]`` (EVE) swaps the
    supervisor's outputs: every session after it is in the new file, none of
    those before it, none lost; a reload whose new output cannot be opened
    is refused in one line and the outputs in place go on."""
    import json

    import urllib.request

    from support.prereqs import require_module

    def scrape(url):
        from prometheus_client.parser import text_string_to_metric_families
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    require_module("prometheus_client")
    config = tmp_path / "sensor.toml"
    config.write_text("[sensor]\nports = [25]\n")
    eve = tmp_path / "eve.json"
    proc = SensorProcess(lab, tmp_path / "records.json", test_pin_root / "workers-metrics" / f"v{abi.ABI_VERSION}",
                         tmp_path / "control.sock", "--config", str(config), "--metrics", "127.0.0.1:0",
                         workers=WORKERS)
    try:
        started = proc.wait_log(lambda e: e.get("event") == "supervising", timeout=90)
        for worker in range(WORKERS):
            proc.wait_log(lambda e, w=worker: e.get("event") == "running" and e.get("worker") == w, timeout=60)
        before = {f"m-before-{i}": c for i, c in enumerate(CLIENTS)}
        for tag, client in before.items():
            session(lab, client, tag)
        wait_recorded(proc, before)
        time.sleep(0.5)
        got = scrape(started["metrics"])
        status = proc.cli("status")
        rows = status["workers"]
        assert got[("smtp_sensor_workers_up", ())] == WORKERS
        assert got[("smtp_sensor_events_total", ())] == sum(r["events"] for r in rows) > 0
        assert got[("smtp_sensor_transactions_total", ())] == sum(r["pipeline"]["transactions"] for r in rows)
        assert got[("smtp_sensor_kernel_seen_packets_total", (("direction", "ingress"),))] > 0
        assert got[("smtp_sensor_verdict_to_kernel_seconds_count", (("since", "event"),))] >= 0
        assert ("smtp_sensor_ring_fill_ratio", ()) in got and ("smtp_sensor_uptime_seconds", ()) in got

        config.write_text(f'[sensor]\nports = [25]\n\n[[output]]\ntype = "eve"\npath = "{eve}"\n')
        result = proc.cli("reload")
        assert result["config_changed"] == ["outputs"] and result["workers"] == WORKERS, result
        after = {f"m-after-{i}": c for i, c in enumerate(CLIENTS)}
        for tag, client in after.items():
            session(lab, client, tag)
        found = wait_recorded(proc, after)
        assert {t: len(r) for t, r in found.items()} == {t: 1 for t in after}, proc.describe()
        deadline = time.monotonic() + 10
        while True:
            senders = [e.get("smtp", {}).get("mail_from", "") for e in map(json.loads, eve.read_text().splitlines())
                       if e.get("event_type") == "smtp"] if eve.exists() else []
            if len(senders) >= len(after) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(s.strip("<>") for s in senders) == sorted(f"{t}@example.org" for t in after)

        # an output that cannot be opened (its folder is a file) refuses the
        # whole reload in one line; the EVE output in place goes on
        config.write_text(f'[sensor]\nports = [25]\n\n[[output]]\ntype = "eve"\npath = "{eve}"\n\n'
                          f'[[output]]\ntype = "native"\npath = "{eve}/inside.json"\n')
        refused = proc.cli_result("reload")
        assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused
        assert "Traceback" not in refused.stderr and "inside.json" in refused.stderr, refused.stderr
        later = {f"m-refused-{i}": c for i, c in enumerate(CLIENTS)}
        for tag, client in later.items():
            session(lab, client, tag)
        wait_recorded(proc, later)
        deadline = time.monotonic() + 10
        while True:
            senders = [e.get("smtp", {}).get("mail_from", "") for e in map(json.loads, eve.read_text().splitlines())
                       if e.get("event_type") == "smtp"]
            if len(senders) >= len(after) + len(later) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(s.strip("<>") for s in senders) == sorted(f"{t}@example.org" for t in {**after, **later})
    finally:
        assert proc.stop() == 0, proc.describe()

"""``reload`` of a running sensor, live in the lab (issue 16 §4): the config
file changed under a running `smtp-sensor run`, then `smtp-sensor reload`:

* the ports: a session on 2525 is not seen before, it is after (the kernel's
  port set and the userland's); a session open across the reload keeps its
  flow and gets its whole record;
* ``[spam_stats]``: the hosts counted before are kept, the new threshold and
  the new local networks judge them (a notice of the internal class);
* a key that needs a restart: one line naming it, exit code 1, and the
  running configuration stays (ports, thresholds).
"""

from __future__ import annotations

import time

import pytest

from sensor.lab.network import CLIENT_V4, Lab
from support.lab_sensor import SensorProcess
from support.lab_session import LineSession

pytestmark = pytest.mark.lab

CONFIG = """
[sensor]
ports = {ports}

[spam_stats]
threshold = {threshold}
percent = 0
check_interval = "1s"
local_networks = {local}
{window}

[spam_stats.ban]
SMTP_PossibleSpam = 0
SMTP_PossibleInternalSpam = 0
"""


@pytest.fixture(scope="module")
def lab(lab_prereqs, tmp_path_factory):
    journal = tmp_path_factory.mktemp("reload") / "journal.jsonl"
    with Lab() as lab:
        lab.journal = journal
        lab.start_server(journal=journal)
        lab.start_server(journal=journal, port=2525)
        yield lab


def write_config(path, ports=(25,), threshold=300, local=(), window=""):
    path.write_text(CONFIG.format(ports=list(ports), threshold=threshold,
                                  local="[" + ", ".join(f'"{n}"' for n in local) + "]", window=window))


def smtp_records(sensor, port):
    return [r for r in sensor.records() if r.get("event_type", "smtp") == "smtp" and "helo" in r
            and r.get("id.resp_p") == port]


class Session(LineSession):
    """A client session that stays open across the reload."""

    def finish(self, sender: str) -> None:
        for line in (f"MAIL FROM:<{sender}>", "RCPT TO:<rcpt@lab.example>", "DATA"):
            self.say(line)
        assert self.say("Subject: across a reload\r\n\r\nhello\r\n.").startswith(b"250")
        self.say("QUIT")
        self.close()


def test_reload_applies_ports_and_statistics_live_and_refuses_a_restart_key(lab, test_pin_root, tmp_path):
    config = tmp_path / "sensor.toml"
    write_config(config)
    sensor = SensorProcess(lab, tmp_path / "records.json", test_pin_root / "reload" / "v1", tmp_path / "c.sock",
                           "--config", str(config))
    try:
        sensor.wait_log(lambda e: e.get("event") == "running", timeout=120)
        for i in range(2):
            assert lab.swaks("--to", "rcpt@lab.example", "--from", f"before{i}@lab.example").returncode == 0
        assert lab.swaks("--port", "2525", "--to", "rcpt@lab.example", "--from", "unseen@lab.example").returncode == 0
        sensor.wait_record(lambda r: r.get("mailfrom") == "before1@lab.example")
        open_session = Session(lab)
        assert open_session.greeting.startswith(b"220")
        assert open_session.say("EHLO across.lab.example").startswith(b"250")
        time.sleep(0.5)
        assert smtp_records(sensor, 2525) == []                       # not a port of the sensor yet
        (host,) = [h for h in sensor.cli("stats")["hosts"] if h["host"] == CLIENT_V4]
        assert host["total"] == 3                                    # two sessions and the open one

        write_config(config, ports=(25, 2525), threshold=4, local=(f"{CLIENT_V4}/32",))
        result = sensor.cli("reload")
        assert set(result["config_changed"]) == {"sensor.ports", "spam_stats.threshold",
                                                 "spam_stats.local_networks"}, result
        status = sensor.cli("status")
        assert status["ports"] == [25, 2525]
        stats = sensor.cli("stats")
        assert stats["thresholds"]["total"] == 4
        (host,) = [h for h in stats["hosts"] if h["host"] == CLIENT_V4]
        assert host["total"] == 3                                    # counted before the reload, kept

        open_session.finish("across@lab.example")                   # the flow open across the reload
        record = sensor.wait_record(lambda r: r.get("mailfrom") == "across@lab.example")
        assert record["helo"] == "across.lab.example"
        assert lab.swaks("--port", "2525", "--to", "rcpt@lab.example", "--from", "seen@lab.example").returncode == 0
        sensor.wait_record(lambda r: r.get("mailfrom") == "seen@lab.example" and r.get("id.resp_p") == 2525)
        # 4 connections from the client (the one on 2525 too): judged by the new threshold, classified by the new local networks
        notice = sensor.wait_record(lambda r: r.get("event_type") == "notice", timeout=10)
        assert notice["note"] == "SMTP_PossibleInternalSpam", notice

        write_config(config, ports=(25,), threshold=4, local=(f"{CLIENT_V4}/32",), window='window = "sliding"')
        refused = sensor.cli_result("reload")
        assert refused.returncode == 1
        lines = refused.stderr.strip().splitlines()
        assert lines == ["smtp-sensor: configuration not reloaded: [spam_stats] window needs a restart "
                         "(systemctl restart smtp-sensor); the running configuration stays"], refused.stderr
        assert sensor.cli("status")["ports"] == [25, 2525]
        assert sensor.cli("stats")["thresholds"]["window"] == "fixed"
        assert sensor.stop() == 0
    finally:
        sensor.stop()

"""The Haka seed's rules on the Haka seed's capture: the alert it intends,
the 25 of 48 packets that pass when the flow is dropped at MAIL FROM (its
reference pcap, packet for packet), and the streamed content dump."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig
from sensor.inputs.pcapfile import read_packets
from sensor.inputs.replay import replay
from sensor.records.sinks import ListSink
from support.record_schemas import check

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"


@pytest.fixture
def rules_dir(tmp_path):
    """A copy of the shipped rules, to edit their settings."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def run_rules(capture, rules_dir, write_passed=None, enforce=True):
    """The sensor's userland with the rules of ``rules_dir`` on ``capture``."""
    sink = ListSink()
    userland = Userland(Config(sensor=SensorConfig(rules=rules_dir, enforce=enforce)), sink)
    result = replay(capture, userland, write_passed=write_passed)
    for rec in sink:
        check(rec)
    return sink, userland.engine, result


def test_mail_from_a_banned_domain_alerts_and_drops_like_the_seed_intends(pcaps_dir, tmp_path):
    passed = tmp_path / "passed.pcap"
    sink, engine, _ = run_rules(pcaps_dir / "haka__smtp.pcap", RULES, passed)
    (alert,) = sink.of("alert")
    assert alert["alert"]["signature"] == "forbidden mail domain"
    assert alert["alert"]["severity"] == "low"
    assert alert["alert"]["signature_id"] == "spam_filter.mail_from"
    assert alert["smtp"] == {"helo": "some_domain", "mail_from": "hacker@suspicious.org"}
    (drop,) = sink.of("drop")
    assert drop["action"] == "drop_flow" and drop["uid"] == alert["uid"]
    assert engine.counters.errors == 0


def _records(path):
    return [(round(ts, 6), bytes(frame), wirelen) for ts, _lt, frame, wirelen in read_packets(path)]


def test_passed_capture_equals_hakas_reference_packet_for_packet(pcaps_dir, tmp_path):
    passed = tmp_path / "passed.pcap"
    run_rules(pcaps_dir / "haka__smtp.pcap", RULES, passed)
    ours, reference = _records(passed), _records(pcaps_dir / "expected/haka/smtp_spam_filter-ref.pcap")
    assert len(ours) == len(reference) == 25
    assert ours == reference
    assert stat.S_IMODE(os.stat(passed).st_mode) == 0o600
    assert len(_records(pcaps_dir / "haka__smtp.pcap")) == 48


def test_an_allowed_domain_passes_every_packet(pcaps_dir, rules_dir, tmp_path):
    toml = rules_dir / "rules.toml"
    toml.write_text(toml.read_text().replace('"suspicious.org", ', ""))
    passed = tmp_path / "passed.pcap"
    sink, _, _ = run_rules(pcaps_dir / "haka__smtp.pcap", rules_dir, passed)
    assert sink.of("alert") == [] and sink.of("drop") == []
    assert len(_records(passed)) == 48
    (smtp,) = sink.of("smtp")
    assert smtp["delivered"] is True          # the seed dropped every MAIL: we do not


def test_dropped_flow_is_not_dissected_further(pcaps_dir):
    sink, engine, result = run_rules(pcaps_dir / "haka__smtp.pcap", RULES)
    (smtp,) = sink.of("smtp")
    # the MAIL was seen (it triggered the verdict); nothing after it was
    assert [s["verb"] for s in smtp["steps"]] == ["MAIL"] and "code" not in smtp["steps"][0]
    # 23 packets do not pass: the MAIL that triggered the verdict (dissected)
    # and the 22 after it (kept from the dissector, as the kernel would)
    assert result.counters["gated"] == 22


def test_monitor_only_replay_records_the_verdict_and_keeps_every_packet(pcaps_dir, tmp_path):
    """``[sensor] enforce = false`` (a SPAN port's config): what the live sensor
    in monitor mode writes -- the drop says ``enforced_by: monitor``, nothing
    is gated, the whole dialogue is dissected -- and every packet passes."""
    passed = tmp_path / "passed.pcap"
    sink, engine, result = run_rules(pcaps_dir / "haka__smtp.pcap", RULES, passed, enforce=False)
    (drop,) = sink.of("drop")
    assert drop["action"] == "drop_flow" and drop["enforced_by"] == "monitor"
    assert result.counters["gated"] == 0
    (smtp,) = sink.of("smtp")
    assert [s["verb"] for s in smtp["steps"]] == ["MAIL", "RCPT", "DATA", "."] and smtp["delivered"] is True
    assert engine.counters.drops == 1 and engine.counters.late_events > 0
    assert _records(passed) == _records(pcaps_dir / "haka__smtp.pcap")
    # the verdicts are those of an enforcing replay, said as monitor
    enforcing, _, _ = run_rules(pcaps_dir / "haka__smtp.pcap", RULES)
    assert sink.of("alert") == enforcing.of("alert")
    assert [dict(d, enforced_by="replay") for d in sink.of("drop")] == enforcing.of("drop")


def test_content_dump_matches_hakas_reference(pcaps_dir, rules_dir, tmp_path):
    dump = tmp_path / "content.txt"
    toml = rules_dir / "rules.toml"
    text = toml.read_text().replace('"suspicious.org", ', "").replace("enabled = false", "enabled = true")
    toml.write_text(text.replace('# path = "/var/log/smtp-sensor/mail-content.txt"', f'path = "{dump}"'))
    run_rules(pcaps_dir / "haka__smtp.pcap", rules_dir)
    reference = (pcaps_dir / "expected/haka/smtp_mail_content-ref.txt").read_bytes()
    start = reference.index(b"== Mail Content ==\n")
    end = reference.index(b"== End Mail Content ==\n") + len(b"== End Mail Content ==\n")
    expected = reference[start:end]
    # Haka counts the last line's CRLF as part of the end marker and its print()
    # adds "\n"; RFC 5321 4.1.1.4 says that CRLF is content.  So ours is the
    # reference with print's "\n" replaced by the content's own CRLF.
    assert dump.read_bytes() == expected.replace(b"...\n== End", b"...\r\n== End")
    assert stat.S_IMODE(os.stat(dump).st_mode) == 0o600          # it holds whole messages

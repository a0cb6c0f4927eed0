"""The EVE output: every record of every shipped capture, replayed through
the whole userland with the repo's rules (and with reject statistics that
judge at once, so notices and bans come too), validates against Suricata's
own JSON Schema; and the fields Suricata's consumers key on are the ones
Suricata writes."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig, SpamStatsConfig
from sensor.inputs.replay import replay
from sensor.outputs import Outputs
from sensor.outputs.destinations import StreamDestination
from sensor.outputs.eve import EveOutput, flow_id
from support.captures import PCAPS_DIR
from support.eve_schema import check_eve

REPO = Path(__file__).resolve().parents[2]
CAPTURES = sorted(PCAPS_DIR.rglob("*.pcap"))
WITH_RULES = Config(sensor=SensorConfig(rules=REPO / "rules"))
#: every host judged at its first connection, any reject share: notices and bans in a replay
JUDGING = replace(WITH_RULES, spam_stats=SpamStatsConfig(threshold=1, percent=0))


def eve_of(capture: Path, config: Config = WITH_RULES) -> tuple[list[dict], list[dict]]:
    """(native records, EVE records) of one replay, the EVE ones read back from their lines."""
    text = io.StringIO()
    native = []
    outputs = Outputs([(EveOutput(StreamDestination(text)), None)])
    outputs.outputs.append((SimpleNamespace(write=native.append), None))
    replay(capture, Userland(config, outputs, by_content=True))
    return native, [json.loads(line) for line in text.getvalue().splitlines()]


@pytest.mark.parametrize("config", [WITH_RULES, JUDGING], ids=["rules", "rules+notices"])
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_every_eve_record_of_every_capture_validates_against_suricatas_schema(capture, config):
    native, eve = eve_of(capture, config)
    assert len(eve) == len(native)
    for record in eve:
        check_eve(record)


def test_the_captures_give_every_record_type():
    kinds = set()
    for capture in CAPTURES:
        kinds |= {r["event_type"] for r in eve_of(capture, JUDGING)[1]}
    assert {"smtp", "fileinfo", "anomaly", "alert", "drop", "notice"} <= kinds


def test_the_schema_refuses_what_suricata_does_not_write():
    _, eve = eve_of(PCAPS_DIR / "haka__smtp.pcap")
    smtp = next(r for r in eve if r["event_type"] == "smtp")
    check_eve(smtp)
    for broken in ({**smtp, "uid": "C1"},                               # a key of ours at the top
                   {**smtp, "in_iface": "eth0"},                          # Suricata writes it live; its schema has none
                   {**smtp, "timestamp": "2026-12-02 05:00:00"},          # not Suricata's timestamp
                   {**smtp, "flow_id": "1"},
                   {**smtp, "email": {**smtp.get("email", {}), "cc": ["a@example.com"]}}):
        with pytest.raises(jsonschema.ValidationError):
            check_eve(broken)


def test_smtp_events_have_suricatas_fields():
    native, eve = eve_of(PCAPS_DIR / "arkime__smtp-zip.pcap")
    (n_smtp,) = [r for r in native if r["event_type"] == "smtp"]
    (smtp,) = [r for r in eve if r["event_type"] == "smtp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d{4}", smtp["timestamp"])
    assert smtp["flow_id"] == flow_id(n_smtp["uid"]) and 0 < smtp["flow_id"] < 2 ** 48
    assert (smtp["src_ip"], smtp["src_port"], smtp["dest_ip"], smtp["dest_port"]) == (
        n_smtp["id.orig_h"], n_smtp["id.orig_p"], n_smtp["id.resp_h"], n_smtp["id.resp_p"])
    assert smtp["proto"] == "TCP" and smtp["app_proto"] == "smtp"
    assert smtp["community_id"] == n_smtp["community_id"] and smtp["tx_id"] == 0
    assert smtp["smtp"]["mail_from"] == f"<{n_smtp['mailfrom']}>"
    assert smtp["smtp"]["rcpt_to"] == [f"<{r}>" for r in n_smtp["rcptto"]]
    assert smtp["smtp"]["helo"] == n_smtp["helo"]
    email = smtp["email"]
    assert email["status"] == "PARSE_DONE" and email["subject"] == n_smtp["subject"]
    assert email["from"] == n_smtp["from"] and email["to"] == n_smtp["to"]
    assert email["attachment"] == n_smtp["attachments"]
    (n_file,) = [r for r in native if r["event_type"] == "files" and r.get("filename") in n_smtp["attachments"]]
    (fileinfo,) = [r for r in eve if r["event_type"] == "fileinfo"
                   and r["fileinfo"].get("filename") == n_file["filename"]]
    assert fileinfo["fileinfo"]["filename"] == n_file["filename"] and fileinfo["fileinfo"]["state"] == "CLOSED"
    assert fileinfo["fileinfo"]["sha256"] == n_file["sha256"] and fileinfo["fileinfo"]["size"] == n_file["seen_bytes"]
    # every record of the flow has its flow_id
    uid_of = {r["uid"] for r in native if "uid" in r}
    assert {r["flow_id"] for r in eve if "flow_id" in r} == {flow_id(u) for u in uid_of}


def test_alerts_and_drops_in_suricatas_shape():
    _, eve = eve_of(PCAPS_DIR / "haka__smtp.pcap")
    alerts = [r for r in eve if r["event_type"] == "alert"]
    drops = [r for r in eve if r["event_type"] == "drop"]
    assert alerts and drops
    for a in alerts:
        assert isinstance(a["alert"]["signature_id"], int) and 1_000_000 <= a["alert"]["signature_id"] < 2_000_000
        assert a["alert"]["severity"] in (1, 2, 3) and a["alert"]["action"] in ("allowed", "blocked")
        assert a["alert"]["gid"] == 1 and a["alert"]["category"]
    for d in drops:
        assert d["drop"]["reason"] == "rule" and d["alert"]["action"] == "blocked"
        # the drop names the alert of the rule that dropped: the same signature as one of the alerts
        assert d["alert"]["signature_id"] in {a["alert"]["signature_id"] for a in alerts}
        assert {v["key"] for v in d["metadata"]["flowvars"]} >= {"action", "target", "enforced_by", "rule_id"}


def test_anomalies_name_their_layer_as_suricata_does():
    kinds = {}
    for capture in CAPTURES:
        for r in eve_of(capture)[1]:
            if r["event_type"] == "anomaly":
                kinds.setdefault(r["anomaly"]["type"], r)
    applayer = kinds["applayer"]
    assert applayer["anomaly"]["app_proto"] == "smtp" and applayer["anomaly"]["layer"] == "proto_parser"
    assert set(kinds) <= {"applayer", "stream", "decode"}


def test_notices_carry_the_host_and_the_counts():
    notices = []
    for capture in CAPTURES:
        notices += [r for r in eve_of(capture, JUDGING)[1] if r["event_type"] == "notice"]
    assert notices
    for n in notices:
        assert n["src_ip"] == n["alert"]["source"]["ip"]
        assert n["alert"]["category"].startswith("SMTP_")
        assert {"total", "rejects", "percent"} <= set(n["metadata"]["flowints"])

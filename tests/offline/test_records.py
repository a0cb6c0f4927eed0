"""The smtp and anomaly records: Zeek's field meanings, our additions, and
every record of every shipped capture valid against its JSON Schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from sensor import records
from sensor.assembly import Userland
from sensor.config import Config
from sensor.inputs.replay import replay
from sensor.records.sinks import JsonLinesSink, ListSink
from sensor.smtp import anomalies as smtp_anomalies
from sensor.stream import defrag, reassembly
from support.captures import PCAPS_DIR as PCAPS
from support.record_schemas import check, record_types, validator


def _captures():
    return sorted(PCAPS.glob("*.pcap"))


def test_every_schema_is_a_valid_json_schema():
    assert {"anomaly", "smtp", "alert", "drop", "notice"} <= set(record_types())
    for name in record_types():
        validator(name)


@pytest.mark.parametrize("capture", _captures(), ids=lambda p: p.stem)
def test_every_record_of_every_capture_matches_its_schema(capture):
    sink = ListSink()
    replay(capture, Userland(Config(), sink))
    for record in sink:
        check(record)


def test_schema_rejects_a_record_missing_a_zeek_field():
    sink = ListSink()
    replay(PCAPS / "haka__smtp.pcap", Userland(Config(), sink))
    rec = dict(sink.of("smtp")[0])
    del rec["id.resp_p"]
    with pytest.raises(jsonschema.ValidationError):
        check(rec)
    rec = dict(sink.of("smtp")[0], unknown_field=1)
    with pytest.raises(jsonschema.ValidationError):
        check(rec)


def test_anomaly_names_are_the_documented_ones():
    tcp_names = {getattr(reassembly, n) for n in dir(reassembly) if n.startswith("ANOMALY_")}
    sink = ListSink()
    for capture in _captures():
        replay(capture, Userland(Config(), sink))
    for rec in sink.of("anomaly"):
        allowed = {"smtp": smtp_anomalies.ALL, "tcp": tcp_names, "ip": defrag.ANOMALIES}[rec["layer"]]
        assert rec["name"] in allowed


def test_haka_capture_gives_one_transaction_with_each_step_and_its_reply():
    sink = ListSink()
    replay(PCAPS / "haka__smtp.pcap", Userland(Config(), sink))
    (rec,) = sink.of("smtp")
    assert rec["helo"] == "some_domain"
    assert rec["mailfrom"] == "hacker@suspicious.org"
    assert rec["rcptto"] == ["backup"]
    assert [(s["verb"], s.get("code")) for s in rec["steps"]] == [
        ("MAIL", 250), ("RCPT", 250), ("DATA", 354), (".", 250)]
    assert rec["steps"][0]["enhanced"] == "2.1.0"
    assert rec["last_reply"].startswith("250 2.0.0 Ok: queued as")
    assert rec["path"] == ["192.168.20.1", "192.168.10.10"]
    assert rec["id.resp_p"] == 25 and rec["tls"] is False and rec["delivered"] is True
    assert rec["msg_size"] > 0


def test_single_received_header_is_first_received_and_no_second():
    sink = ListSink()
    replay(PCAPS / "arkime__smtp-originating.pcap", Userland(Config(), sink))
    (rec,) = sink.of("smtp")
    assert rec["first_received"].startswith("from [10.000.000.002]")
    assert "second_received" not in rec
    # "10.000.000.002" is not a valid address (leading zeros): not in the path
    assert rec["path"] == [rec["id.resp_h"], rec["id.orig_h"]]


def test_starttls_transaction_is_marked_tls():
    sink = ListSink()
    replay(PCAPS / "arkime__smtp-starttls.pcap", Userland(Config(), sink))
    (rec,) = sink.of("smtp")
    assert rec["tls"] is True


def test_split_addresses_keeps_quoted_commas_together():
    assert records.split_addresses('"Doe, John" <j@x.example>, b@y.example,, (c, d) e@z.example') == [
        '"Doe, John" <j@x.example>', "b@y.example", "(c, d) e@z.example"]


def test_received_path_takes_the_second_address_when_two_are_named():
    path = records.received_path(["192.0.2.25", "192.0.2.10"], [
        "from a.example (a.example [198.51.100.7]) by mx.example (192.0.2.25) with ESMTP",
        "from b.example ([203.0.113.9]) by a.example",
        "from c.example by b.example",                      # no address: skipped
        "from d.example ([IPv6:2001:db8::1]) by c.example",   # "IPv6:" before it: not wrapped, as in Zeek
        "from e.example (e.example [2001:db8::2]) by d.example; id 198.51.100.99;",
    ])
    assert path == ["192.0.2.25", "192.0.2.10", "192.0.2.25", "203.0.113.9", "2001:db8::2"]


def test_ip_addresses_are_extracted_as_zeeks_regular_expression_splits_them():
    # the longest match at the leftmost place: "198.51.100.300" gives "198.51.100.30", as in Zeek
    assert records.extract_ips("a 192.0.2.1, b [198.51.100.300] c 10.0.0.1") == [
        "192.0.2.1", "198.51.100.30", "10.0.0.1"]
    # only those wrapped in brackets, parens, braces or spaces for the path
    assert records.extract_ips("(192.0.2.1) [192.0.2.2] {192.0.2.3} 192.0.2.4 <192.0.2.5> 192.0.2.6;",
                               wrapped=True) == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    assert records.extract_ips("192.0.2.7", wrapped=True) == ["192.0.2.7"]


def test_json_lines_sink_writes_one_parseable_line_per_record(tmp_path):
    out = tmp_path / "records.json"
    with open(out, "w") as f:
        sink = JsonLinesSink(f)
        replay(PCAPS / "haka__smtp.pcap", Userland(Config(), sink))
    lines = out.read_text().splitlines()
    assert len(lines) == sink.written > 0
    parsed = [json.loads(line) for line in lines]
    assert list(parsed[0])[:2] == ["ts", "event_type"]
    for rec in parsed:
        check(rec)

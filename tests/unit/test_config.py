"""sensor.config: the TOML configuration, its defaults and its one-line errors."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from sensor import smtp
from sensor.config import Config, ConfigError, LimitsConfig, SensorConfig, SpamStatsConfig, load, loads, parse_duration
from sensor.errors import SensorError
from sensor.stream import reassembly

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "config.example.toml"


def test_defaults_need_no_file_and_hold_the_seeds_constants():
    c = Config()
    s = c.spam_stats
    assert (s.threshold, s.percent, s.period) == (300, 30, 3600.0)
    assert s.reject_codes == {550, 551, 553, 554}
    assert s.check_every == 3600.0 and s.suppression == 3600.0      # both follow the period
    assert s.window == "fixed" and s.local_mail == () and s.allow == ()
    assert dict(s.ban) == {"SMTP_PossibleSpam": 3600.0, "SMTP_PossibleInternalSpam": 3600.0,
                           "SMTP_StrangeRejectBehavior": 0.0}
    assert c.sensor.ports == (25, 587) and c.sensor.output == "-" and c.sensor.output_path is None
    assert c.sensor.state_file is None and c.sensor.xdp_mode == "auto"
    assert c.limits.smtp == smtp.SmtpLimits() and c.limits.reassembly == reassembly.ReassemblyLimits()


def test_the_example_loads_and_states_the_true_defaults():
    """Every key at its default but the two snapshots, which the example turns
    on (as deploy/smtp-sensor.service does): statistics and bans survive restarts and reboots."""
    config = load(EXAMPLE)
    assert config.sensor.state_file == Path("/var/lib/smtp-sensor/spam-stats.msgpack")
    assert config.sensor.ban_file == Path("/var/lib/smtp-sensor/bans.msgpack")
    snapshots_off = dataclasses.replace(config.sensor, state_file=None, ban_file=None)
    assert dataclasses.replace(config, sensor=snapshots_off, source=None) == Config()


def test_the_example_documents_every_key():
    text = EXAMPLE.read_text()
    sections = [SensorConfig, SpamStatsConfig, smtp.SmtpLimits, reassembly.ReassemblyLimits]
    for cls in sections:
        for f in dataclasses.fields(cls):
            if f.name == "ban":
                assert "\n[spam_stats.ban]\n" in text
                continue
            assert f"\n{f.name} =" in text or f"\n# {f.name} =" in text, f"{cls.__name__}.{f.name}"
    for note in ("SMTP_PossibleSpam", "SMTP_PossibleInternalSpam", "SMTP_StrangeRejectBehavior"):
        assert f"\n{note} =" in text


def test_a_full_config(tmp_path):
    path = tmp_path / "etc" / "sensor.toml"
    path.parent.mkdir()
    path.write_text('''
[sensor]
interfaces = ["veth0", "eth1"]
netns = "mail"
ports = [25, 2525]
xdp_mode = "generic"
rules = "rules"
output = "records.json"
state_file = "/var/lib/smtp-sensor/state.msgpack"
snapshot_interval = "30s"

[limits.smtp]
command_line = 1024
[limits.reassembly]
idle_timeout = 60
ack_gaps = false

[spam_stats]
threshold = 5
percent = 50
period = "10m"
check_interval = "1m"
reject_codes = [550, 554, 450]
local_mail = ["198.51.100.25", "2001:db8::/48"]
local_networks = ["192.0.2.0/24"]
window = "sliding"
sliding_buckets = 10
suppress_for = "1h30m"
max_hosts = 1000
allow = ["192.0.2.1/32"]

[spam_stats.ban]
SMTP_PossibleSpam = "2h"
SMTP_StrangeRejectBehavior = 600
''')
    c = load(path)
    assert c.source == path
    assert c.sensor.interfaces == ("veth0", "eth1") and c.sensor.netns == "mail"
    assert c.sensor.ports == (25, 2525) and c.sensor.xdp_mode == "generic"
    assert c.sensor.rules == path.parent / "rules"                 # relative to the file
    assert c.sensor.output_path == path.parent / "records.json"
    assert c.sensor.state_file == Path("/var/lib/smtp-sensor/state.msgpack")
    assert c.sensor.snapshot_interval == 30.0
    assert c.limits.smtp.command_line == 1024 and c.limits.smtp.reply_line == 2048
    assert c.limits.reassembly.idle_timeout == 60.0 and c.limits.reassembly.ack_gaps is False
    s = c.spam_stats
    assert (s.threshold, s.percent, s.period, s.check_every, s.suppression) == (5, 50, 600, 60, 5400)
    assert s.reject_codes == {450, 550, 554}
    assert s.local_mail == (ipaddress.ip_network("198.51.100.25/32"), ipaddress.ip_network("2001:db8::/48"))
    assert s.window == "sliding" and s.sliding_buckets == 10
    assert dict(s.ban) == {"SMTP_PossibleSpam": 7200.0, "SMTP_PossibleInternalSpam": 3600.0,
                           "SMTP_StrangeRejectBehavior": 600.0}
    assert s.ban_ttl("SMTP_PossibleSpam") == 7200.0


@pytest.mark.parametrize("text,seconds", [
    (90, 90.0), (1.5, 1.5), ("30s", 30.0), ("60m", 3600.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("60 mins", 3600.0), ("2d", 172800.0), ("0.5h", 1800.0), (" 1h 5s ", 3605.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "1h junk", "-5s", "5", True, [1], float("nan")])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# each: TOML, then what the one-line error must contain (file, table, key, problem)
ERRORS = [
    ("[spam_stats]\npercent = 130", ["[spam_stats] percent:", "0..100", "130"]),
    ("[spam_stats]\npercent = 29.5", ["[spam_stats] percent:", "integer"]),
    ("[spam_stats]\nthreshold = 0", ["[spam_stats] threshold:", ">= 1"]),
    ("[spam_stats]\nthreshold = true", ["[spam_stats] threshold:", "integer"]),
    ("[spam_stats]\ntreshold = 3", ["[spam_stats]", 'unknown key "treshold"', 'did you mean "threshold"']),
    ("[spam_stats]\nperiod = \"1 fortnight\"", ["[spam_stats] period:", "1h"]),
    ("[spam_stats]\nperiod = 0", ["[spam_stats] period:", "> 0"]),
    ("[spam_stats]\ncheck_interval = -1", ["[spam_stats] check_interval:"]),
    ("[spam_stats]\nlocal_mail = [\"10.0.0.0/33\"]", ["[spam_stats] local_mail:", "10.0.0.0/33", "CIDR"]),
    ("[spam_stats]\nlocal_networks = [\"mail.example\"]", ["[spam_stats] local_networks:", "mail.example"]),
    ("[spam_stats]\nallow = \"192.0.2.0/24\"", ["[spam_stats] allow:", "list"]),
    ("[spam_stats]\nallow = [24]", ["[spam_stats] allow:", "24"]),
    ("[spam_stats]\nreject_codes = [550, 999]", ["[spam_stats] reject_codes:", "200..599", "999"]),
    ("[spam_stats]\nreject_codes = []", ["[spam_stats] reject_codes:", "at least one"]),
    ("[spam_stats]\nwindow = \"tumbling\"", ["[spam_stats] window:", "fixed, sliding", "tumbling"]),
    ("[spam_stats]\nmax_hosts = 0", ["[spam_stats] max_hosts:"]),
    ("[spam_stats.ban]\nSMTP_PossibleSpam = \"forever\"", ["[spam_stats.ban] SMTP_PossibleSpam:", "0 turns"]),
    ("[spam_stats.ban]\nSMTP_Spam = 60", ["[spam_stats.ban]", 'unknown key "SMTP_Spam"']),
    ("[spam_stats]\nban = 60", ["[spam_stats] ban:", "table"]),
    ("[sensor]\nports = [25, 70000]", ["[sensor] ports:", "1..65535", "70000"]),
    ("[sensor]\nports = []", ["[sensor] ports:", "at least one"]),
    ("[sensor]\ninterfaces = \"eth0\"", ["[sensor] interfaces:", "list"]),
    ("[sensor]\ninterfaces = [\"a-very-long-interface-name\"]", ["[sensor] interfaces:", "15 characters"]),
    ("[sensor]\nxdp_mode = \"offload\"", ["[sensor] xdp_mode:", "auto, native, generic"]),
    ("[sensor]\noutput = \"\"", ["[sensor] output:", "empty"]),
    ("[sensor]\nsnapshot_interval = \"0s\"", ["[sensor] snapshot_interval:", "> 0"]),
    ("[sensor]\ninterface = [\"eth0\"]", ["[sensor]", 'unknown key "interface"', 'did you mean "interfaces"']),
    ("[limits.smtp]\ncommand_lin = 10", ["[limits.smtp]", 'unknown key "command_lin"', "command_line"]),
    ("[limits.smtp]\ncommand_line = \"512\"", ["[limits.smtp] command_line:", "integer"]),
    ("[limits.smtp]\ncommand_line = 0", ["[limits.smtp] command_line:", ">= 1"]),
    ("[limits.reassembly]\nidle_timeout = 0", ["[limits.reassembly] idle_timeout:", "> 0"]),
    ("[limits.reassembly]\nack_gaps = 1", ["[limits.reassembly] ack_gaps:", "true or false"]),
    ("[stream]\nchecksum_validation = true", ["[stream] checksum_validation:", "string"]),
    ("[stream]\nchecksum_validation = \"offload\"", ["[stream] checksum_validation:", "auto, yes, no"]),
    ("[stream]\nurgent = \"bsd\"", ["[stream] urgent:", "linux, inline", "bsd"]),
    ("[stream]\noverlap_policy = \"solaris\"", ["[stream] overlap_policy:", "linux, bsd, windows, first, last"]),
    ("[stream]\noverlap = \"linux\"", ["[stream]", 'unknown key "overlap"', "overlap_policy"]),
    ("[limits]\ndns = {}", ["[limits]", 'unknown key "dns"']),
    ("[limits]\nsmtp = 3", ["[limits] smtp:", "table"]),
    ("[spamstats]\nthreshold = 3", ['unknown table "spamstats"', 'did you mean "spam_stats"']),
    ("sensor = 3", ["sensor:", "must be a table"]),
    ("[sensor\nports = [25]", ["not valid TOML", "line 1"]),
    ("[sensor]\nports = [25,\n", ["not valid TOML"]),
]


@pytest.mark.parametrize("text,expected", ERRORS, ids=[e[1][0] + " " + str(i) for i, e in enumerate(ERRORS)])
def test_errors_are_one_line_naming_file_table_and_key(tmp_path, text, expected):
    path = tmp_path / "sensor.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert isinstance(err.value, SensorError)
    assert "\n" not in message and len(message) < 300
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read the config: No such file"):
        load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read the config"):
        load(tmp_path)                     # a folder
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(bad)


def test_sections_built_in_code_are_validated_the_same_way():
    with pytest.raises(ConfigError, match=r"^\[spam_stats\] percent: must be an integer 0..100, got 101$"):
        SpamStatsConfig(percent=101)
    with pytest.raises(ConfigError, match=r"^\[sensor\] ports:"):
        SensorConfig(ports=[0])
    with pytest.raises(ConfigError, match=r"^\[limits.smtp\] unknown key"):
        LimitsConfig(smtp={"nope": 1})
    s = SpamStatsConfig(period="10m", local_mail=["192.0.2.7"], ban={"SMTP_PossibleSpam": "5m"})
    assert s.period == 600 and s.local_mail == (ipaddress.ip_network("192.0.2.7/32"),)
    assert s.ban_ttl("SMTP_PossibleSpam") == 300 and s.ban_ttl("SMTP_PossibleInternalSpam") == 3600
    # replace() keeps validating, and the defaults that follow the period follow it
    s2 = dataclasses.replace(s, period="1h")
    assert s2.check_every == 3600 and s2.suppression == 3600
    with pytest.raises(ConfigError):
        dataclasses.replace(s, threshold=-1)


def test_host_bits_are_cleared_like_zeek_subnets():
    s = loads('[spam_stats]\nlocal_networks = ["10.1.2.3/8"]')
    assert s.spam_stats.local_networks == (ipaddress.ip_network("10.0.0.0/8"),)


def test_loads_without_a_source_names_no_file():
    with pytest.raises(ConfigError) as err:
        loads("[spam_stats]\npercent = -1")
    assert str(err.value).startswith("[spam_stats] percent:")


def test_the_default_pin_dir_is_the_datapaths():
    from sensor.kernel.datapath import DatapathConfig
    assert SensorConfig().pin_dir == DatapathConfig().pin_dir


def test_the_stream_table_reaches_the_reassembly():
    from sensor.assembly import Userland

    config = loads('[stream]\nchecksum_validation = "yes"\nurgent = "inline"\noverlap_policy = "first"\n')
    policy = Userland(config, lambda record: None).pipeline.reassembler.policy
    assert (policy.checksums, policy.urgent, policy.overlap) == ("yes", "inline", "first")

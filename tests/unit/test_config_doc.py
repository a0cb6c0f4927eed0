"""docs/config.md stays true: every key of sensor/config.py (and of the limits
dataclasses) has a row, no row names a key that does not exist, each row's
default read as TOML is the code's default, its type matches, and every
`run` flag is documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sensor import smtp
from sensor import config
from sensor.config import (NOTICE_TYPES, ClusterConfig, EnforceConfig, LimitsConfig, SensorConfig, SpamStatsConfig,
                           StreamConfig, MimeConfig, tomllib)
from sensor.smtp.limits import MimeLimits
from sensor.rules.budget import RuleLimits
from sensor.stream import defrag, reassembly

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<type>[^|]+) \| (?P<default>[^|]+) \| (?P<meaning>.+) \|$")


def tables() -> dict[str, dict[str, dict]]:
    """{table: {key: {"type", "default", "meaning"}}} from the '## `[table]`' sections."""
    out, current, table = {}, None, None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^## `\[(?P<table>[\w.]+)\]`$", line)
        if heading:
            table = heading["table"]
            current = out.setdefault(table, {})
            continue
        if line.startswith("## "):
            current = None
        row = ROW.match(line)
        if current is not None and row:
            assert row["key"] not in current, f"[{table}] {row['key']} twice"
            current[row["key"]] = {k: row[k].strip() for k in ("type", "default", "meaning")}
    return out


SECTIONS = {
    "sensor": (SensorConfig, lambda k, v: getattr(SensorConfig(**{k: v}), k)),
    "limits.smtp": (smtp.SmtpLimits, lambda k, v: getattr(LimitsConfig(smtp={k: v}).smtp, k)),
    "limits.reassembly": (reassembly.ReassemblyLimits, lambda k, v: getattr(LimitsConfig(reassembly={k: v}).reassembly, k)),
    "limits.defrag": (defrag.DefragLimits, lambda k, v: getattr(LimitsConfig(defrag={k: v}).defrag, k)),
    "limits.rules": (RuleLimits, lambda k, v: getattr(LimitsConfig(rules={k: v}).rules, k)),
    "limits.mime": (MimeLimits, lambda k, v: getattr(LimitsConfig(mime={k: v}).mime, k)),
    "mime": (MimeConfig, lambda k, v: getattr(MimeConfig(**{k: v}), k)),
    "spam_stats": (SpamStatsConfig, lambda k, v: getattr(SpamStatsConfig(**{k: v}), k)),
    "enforce": (EnforceConfig, lambda k, v: getattr(EnforceConfig(**{k: v}), k)),
    "stream": (StreamConfig, lambda k, v: getattr(StreamConfig(**{k: v}), k)),
    "cluster": (ClusterConfig, lambda k, v: getattr(ClusterConfig(**{k: v}), k)),
}


def _toml_value(cell: str):
    m = re.fullmatch(r"`(.+)`", cell)
    assert m, f"a default is a TOML value in backticks or 'unset', got {cell!r}"
    return tomllib.loads(f"x = {m.group(1)}")["x"]


def _type_fits(doc_type: str, value) -> bool:
    if isinstance(value, bool):
        return doc_type == "boolean"
    if isinstance(value, int):
        return doc_type in ("integer", "number", "duration")
    if isinstance(value, float):
        return doc_type in ("number", "duration")
    if isinstance(value, list):
        return doc_type.startswith("list of")
    if isinstance(value, str):
        return doc_type in ("string", "path", "duration")
    return False


def test_the_doc_has_every_table():
    assert set(tables()) == {*SECTIONS, "spam_stats.ban"}
    # a table the loader accepts is a table checked here ([limits] has its own four)
    assert set(config._SECTIONS) - {"limits"} <= set(SECTIONS)


@pytest.mark.parametrize("table", SECTIONS)
def test_every_key_is_documented_and_no_other(table):
    cls, _ = SECTIONS[table]
    fields = {f.name for f in dataclasses.fields(cls)} - {"ban"}      # [spam_stats.ban] is its own table
    assert set(tables()[table]) == fields


@pytest.mark.parametrize("table", SECTIONS)
def test_every_default_is_the_codes(table):
    cls, build = SECTIONS[table]
    defaults = cls()
    for key, row in tables()[table].items():
        expected = getattr(defaults, key)
        assert row["meaning"], f"[{table}] {key}: no meaning"
        if row["default"] == "unset":
            assert expected is None, f"[{table}] {key}: documented unset, the code's default is {expected!r}"
            continue
        value = _toml_value(row["default"])
        assert _type_fits(row["type"], value), f"[{table}] {key}: type {row['type']!r} for default {value!r}"
        # through the same validation a config file goes through
        assert build(key, value) == expected, f"[{table}] {key}: documented {row['default']}, code {expected!r}"


def test_ban_ttls():
    rows = tables()["spam_stats.ban"]
    assert set(rows) == set(NOTICE_TYPES)
    code = SpamStatsConfig().ban
    for note, row in rows.items():
        assert row["type"] == "duration"
        assert SpamStatsConfig(ban={note: _toml_value(row["default"])}).ban[note] == code[note], note


def test_every_run_flag_is_documented():
    from sensor.cli import build_parser

    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    text = DOC.read_text()
    for action in run._actions:
        if action.help == "==SUPPRESS==" or action.dest == "help":
            continue
        assert any(f"`{flag}" in text for flag in action.option_strings), action.option_strings
    for action in parser._actions:                      # the global ones used by run
        if action.dest in ("log_level", "log_format"):
            assert f"`{action.option_strings[0]}`" in text


def test_the_example_and_the_doc_agree_on_keys():
    example = tomllib.loads((DOC.parent / "config.example.toml").read_text())
    doc = tables()
    for table in ("sensor", "spam_stats", "enforce", "stream", "cluster"):
        assert set(example[table]) - {"ban"} <= set(doc[table])
    for table in ("smtp", "reassembly", "rules"):
        assert set(example["limits"][table]) <= set(doc[f"limits.{table}"])

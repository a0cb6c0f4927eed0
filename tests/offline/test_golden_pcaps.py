"""Golden files: every public capture replayed, its records compared with a reviewed copy.

In the manner of Zeek's btest baselines and Haka's hakapcap tests: each
capture in ``tests/data/pcaps`` is replayed through the whole pipeline
(``sensor.inputs.replay`` with ``uid_seed=0``, default ports 25 and 587, and the
flows on other ports found SMTP by content, as ``smtp-sensor replay`` does) and the
records are compared, as pretty-printed JSON text, with
``tests/data/golden/<capture stem>.json``.

Regenerate after an intended change, then REVIEW the diff against the capture
(``tshark -r FILE -q -z follow,tcp,ascii,0``) before committing it::

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/offline/test_golden_pcaps.py

Normalisation: nothing in a record is volatile once the uid seed is fixed
(``ts`` is capture time, uids come from the seed), and no record holds
anything of the host (no path, no wall-clock time).  Timestamps are still
rounded to the microsecond a pcap carries, so that a change in how the
capture reader adds seconds and microseconds (float rounding in the last bit)
does not show as a difference.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from sensor.assembly import Userland
from sensor.config import Config
from sensor.inputs.replay import replay
from sensor.records.sinks import ListSink
from support.captures import PCAPS_DIR, captures_in

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN", "") not in ("", "0")
_TS_KEYS = ("ts",)


CAPTURES = captures_in(PCAPS_DIR)


def normalise(value):
    """A record (or anything in it) with volatile fields made stable."""
    if isinstance(value, dict):
        return {k: (round(v, 6) if k in _TS_KEYS and isinstance(v, float) else normalise(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def records_of(path: Path) -> list[dict]:
    sink = ListSink()
    replay(path, Userland(Config(), sink, uid_seed=0, by_content=True))
    return [normalise(r) for r in sink]


def golden_text(records: list[dict]) -> str:
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n"


def golden_path(capture: str) -> Path:
    return GOLDEN_DIR / (Path(capture).stem + ".json")


@pytest.mark.parametrize("capture", CAPTURES)
def test_replay_records_equal_the_reviewed_golden_file(pcaps_dir, capture):
    got = golden_text(records_of(pcaps_dir / capture))
    path = golden_path(capture)
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != got:
            path.write_text(got, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"no golden file {path.relative_to(GOLDEN_DIR.parent.parent)}: run "
                    "UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/offline/test_golden_pcaps.py "
                    "and review it against the capture", pytrace=False)
    want = path.read_text(encoding="utf-8")
    if got != want:
        diff = "".join(difflib.unified_diff(
            want.splitlines(keepends=True), got.splitlines(keepends=True),
            fromfile=f"golden/{path.name}", tofile=f"replay of {capture}", n=2))
        lines = diff.splitlines(keepends=True)
        if len(lines) > 200:
            diff = "".join(lines[:200]) + f"... ({len(lines) - 200} more diff lines)\n"
        pytest.fail(f"records of {capture} differ from the golden file "
                    "(UPDATE_GOLDEN=1 rewrites it; review before committing):\n" + diff,
                    pytrace=False)


def test_every_capture_has_a_golden_file_and_every_golden_file_a_capture(pcaps_dir):
    captures = {Path(name).stem for name in captures_in(pcaps_dir)}
    assert captures, f"no capture in {pcaps_dir}"
    goldens = {p.stem for p in GOLDEN_DIR.glob("*.json")}
    assert sorted(captures - goldens) == [], "captures without a golden file"
    assert sorted(goldens - captures) == [], "golden files of captures that are gone"


def test_golden_files_are_lists_of_smtp_files_and_anomaly_records():
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        records = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(records, list), path.name
        for rec in records:
            assert list(rec)[:2] == ["ts", "event_type"], path.name
            assert rec["event_type"] in ("smtp", "files", "anomaly"), path.name


def test_every_fuid_of_a_golden_smtp_record_is_a_files_record_of_its_flow():
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        records = json.loads(path.read_text(encoding="utf-8"))
        files = {(r["uid"], r["trans_depth"], r["fuid"]) for r in records if r["event_type"] == "files"}
        linked = {(r["uid"], r["trans_depth"], f) for r in records if r["event_type"] == "smtp"
                  for f in r.get("fuids", ())}
        assert linked == files, path.name


def test_replay_is_reproducible_with_the_same_uid_seed(pcaps_dir):
    cap = pcaps_dir / "ndpi__smtp-starttls.pcap"      # two flows: two uids
    first, second = records_of(cap), records_of(cap)
    assert first == second
    assert len({r["uid"] for r in first}) == 2


# AUTH PLAIN initial responses (base64 of NUL user NUL password) sent in the
# clear in two of the captures: a record must never carry them.
_CREDENTIALS = {
    "arkime__smtp-data-250.pcap": "ADEyMzQ1Njc4QGFvbC5jb20AcGFzc3dk",
    "arkime__smtp-data-521.pcap": "ADEyMzQ1Njc4OUBhb2wuY29tADEyMzQ1Njc=",
}


@pytest.mark.parametrize("capture", sorted(_CREDENTIALS))
def test_sasl_credentials_in_a_capture_never_reach_a_record(pcaps_dir, capture):
    raw = (pcaps_dir / capture).read_bytes()
    secret = _CREDENTIALS[capture]
    assert secret.encode() in raw            # the capture does hold it
    text = golden_text(records_of(pcaps_dir / capture))
    assert secret not in text

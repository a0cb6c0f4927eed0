"""Our files records of the Arkime captures against Arkime's own expected
sessions (``expected/arkime/*.test``): every attachment md5 Arkime gives
(email.md5, the md5 of a base64-decoded part) is the md5 of one of our
entities of the same flow, its file names (email.filename) are our
attachment names, and the magic it found (email.bodyMagic) is our mime_type.
Arkime hashes base64 parts only; we hash every entity, so ours may have more.
"""

from __future__ import annotations

import json

import pytest
from support.captures import PCAPS_DIR

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig
from sensor.inputs.replay import replay
from sensor.records.sinks import ListSink
from sensor.stream.reassembly import DEFAULT_PORTS

ARKIME_DIR = PCAPS_DIR / "expected" / "arkime"
#: the sessions of smtp-decrypted are after STARTTLS (not ours: see test_expected_arkime)
SKIP = {"smtp-decrypted", "socks5-smtp-503"}
NAMES = sorted(p.stem for p in ARKIME_DIR.glob("*.test") if p.stem not in SKIP) if ARKIME_DIR.is_dir() else []
#: captures where a name differs on purpose: smtp-moloch-bof's attachment name
#: is thousands of "A"; Arkime keeps it whole, we cut it at [limits.mime]
#: filename (255, Suricata's limit) and raise MIME_LONG_FILENAME
CUT_NAMES = {"smtp-moloch-bof": 255}


def arkime_files(name: str) -> dict:
    doc = json.loads((ARKIME_DIR / f"{name}.test").read_text(encoding="utf-8"))
    out = {}
    for s in doc["sessions3"]:
        body = s["body"]
        email = body.get("email", {})
        out[body["network"]["community_id"]] = (set(email.get("md5", [])), list(email.get("filename", [])),
                                                set(email.get("bodyMagic", [])))
    return out


def our_files(name: str) -> dict:
    sink = ListSink()
    replay(PCAPS_DIR / f"arkime__{name}.pcap",
           Userland(Config(sensor=SensorConfig(ports=DEFAULT_PORTS)), sink, uid_seed=0))
    out: dict = {}
    for r in sink:
        md5s, names, types = out.setdefault(r["community_id"], (set(), [], set()))
        if r["event_type"] == "files":
            md5s.add(r["md5"])
            if "mime_type" in r:
                types.add(r["mime_type"])
        elif r["event_type"] == "smtp":
            names += r.get("attachments", [])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_attachment_hashes_names_and_magic_agree_with_arkime(name):
    ours = our_files(name)
    for cid, (md5s, names, magic) in arkime_files(name).items():
        if not (md5s or names or magic):
            continue
        our_md5s, our_names, our_types = ours[cid]
        assert md5s <= our_md5s, cid
        cut = CUT_NAMES.get(name)
        if cut is not None:
            assert any(len(n) > cut for n in names)          # the pin still has its reason
            names = [n[:cut] for n in names]
        assert names == our_names, cid
        assert magic <= our_types, cid


def test_the_comparison_covers_attachments():
    compared = [n for n in NAMES if any(v[0] for v in arkime_files(n).values())]
    assert {"smtp-zip", "smtp-subject-gb2312-b", "smtp-subject-utf8-q"} <= set(compared)

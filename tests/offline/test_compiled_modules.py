"""The per-packet modules compiled with Cython (setup.py, sensor/compiled.py)
give the same records as their pure-Python source, and are what runs when built.

Every capture in tests/data/pcaps (and its by_content/), plus one made by
bench/gen_capture.py (interleaved sessions, megabyte messages, dot-stuffing,
IPv6, VLAN tags, reordered and retransmitted segments), is replayed in two
fresh processes, one with ``SMTP_SENSOR_PURE=1``; the records must be
byte-identical (the JSON text of each, in order), and so must those of the
replay over 2 workers (sorted), which are one process's.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensor import compiled
from support.captures import PCAPS_DIR, generate_capture
from support.prereqs import missing

pytestmark = pytest.mark.offline

REPO = Path(__file__).resolve().parents[2]


def _captures() -> list[Path]:
    found = sorted(p for p in PCAPS_DIR.iterdir() if p.suffix in (".pcap", ".pcapng"))
    sub = PCAPS_DIR / "by_content"
    if sub.is_dir():
        found += sorted(p for p in sub.iterdir() if p.suffix in (".pcap", ".pcapng"))
    return found


def _replay_in_process(captures: list[Path], pure: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    env.pop(compiled.PURE_ENV, None)
    if pure:
        env[compiled.PURE_ENV] = "1"
    done = subprocess.run([sys.executable, "-m", "support.replay_records", *map(str, captures)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def _require_built() -> None:
    if compiled.forced_pure():
        pytest.fail(f"{compiled.PURE_ENV} is set in the test run: unset it to test the compiled modules",
                    pytrace=False)
    state = compiled.status()
    pure = {name: how for name, how in state.items() if how != "compiled"}
    if pure:
        missing("the compiled per-packet modules (./run setup builds them; needs gcc, python3-dev, "
                f"Cython): {pure}")


@pytest.fixture(scope="module")
def generated_capture(tmp_path_factory) -> Path:
    return generate_capture(tmp_path_factory.mktemp("generated") / "generated.pcap", size_mb=3, seed=7)


def test_the_compiled_modules_are_in_use_when_built():
    _require_built()
    for name in compiled.MODULES:
        mod = importlib.import_module(name)
        assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), name
    assert compiled.status() == {name: "compiled" for name in compiled.MODULES}


def test_compiled_and_pure_python_give_byte_identical_records_on_every_capture(generated_capture):
    _require_built()
    captures = _captures() + [generated_capture]
    assert len(captures) > 30
    fast = _replay_in_process(captures, pure=False)
    slow = _replay_in_process(captures, pure=True)
    assert set(fast["status"].values()) == {"compiled"}
    assert set(slow["status"].values()) == {f"pure: {compiled.PURE_ENV} is set"}
    total = 0
    for capture in map(str, captures):
        assert fast["records"][capture] == slow["records"][capture], capture
        assert fast["split"][capture] == slow["split"][capture], capture
        assert fast["split"][capture] == sorted(fast["records"][capture]), capture
        total += len(fast["records"][capture])
    assert len(fast["records"][str(generated_capture)]) > 20     # its transactions, files, anomalies
    assert total > 200

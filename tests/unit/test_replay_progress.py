"""Replay progress on a terminal: a line redrawn at most every `interval`
(a fake clock here: no timing), erased at the end; nothing when stderr is
not a terminal.  CaptureReader.offset / size give the position."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sensor.inputs.pcapfile import CaptureReader
from sensor.inputs.replay import PROGRESS_EVERY, TtyProgress

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Reader:
    def __init__(self, offset, size):
        self.offset, self.size = offset, size


def test_redrawn_at_most_every_interval_and_erased():
    clock, out = Clock(), io.StringIO()
    p = TtyProgress(out, name="big.pcap", interval=0.25, clock=clock)
    clock.now += 0.5
    p(4096, Reader(4_000_000, 16_000_000))               # first call: drawn
    for step in range(10):                               # 0.1 s apart: every third drawn
        clock.now += 0.1
        p(8192 + step, Reader(8_000_000, 16_000_000))
    assert p.redraws == 1 + 3
    text = out.getvalue()
    assert text.startswith("\rbig.pcap: 4096 packets, 4.0 of 16.0 MB (25.0%), 8.0 MB/s\x1b[K")
    p.close()
    assert out.getvalue().endswith("\r\x1b[K")
    assert out.getvalue().count("\r") == p.redraws + 1


def test_line_without_a_size_and_nothing_to_erase_when_never_drawn():
    assert TtyProgress.line(10, 2_500_000, None, 0.5) == "10 packets, 2.5 MB, 5.0 MB/s"
    assert TtyProgress.line(10, None, None, 0.0) == "10 packets, 0.0 MB"
    out = io.StringIO()
    TtyProgress(out).close()
    assert out.getvalue() == ""


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "g.pcap"
    subprocess.run([sys.executable, str(REPO / "bench" / "gen_capture.py"), "--size-mb", "12", "--seed", "3",
                    "-o", str(path)], check=True, capture_output=True, timeout=120)
    return path


def test_the_reader_offset(capture):
    reader = CaptureReader(capture)
    size = capture.stat().st_size
    assert reader.size == size
    seen = []
    for n, _ in enumerate(reader, 1):
        if n % PROGRESS_EVERY == 0:
            seen.append(reader.offset)
    assert n > 2 * PROGRESS_EVERY
    assert seen == sorted(seen) and 0 < seen[0] <= size
    assert reader.offset == size          # closed at the end: the whole file


def run_replay(capture, out, stderr_tty: bool):
    argv = [sys.executable, "-m", "sensor.cli", "replay", str(capture), "-o", str(out)]
    if not stderr_tty:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120).stderr
    master, slave = os.openpty()
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=slave, timeout=120)
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_replay_shows_progress_on_a_tty_only(capture, tmp_path):
    text = run_replay(capture, tmp_path / "a.json", stderr_tty=True)
    first = text.index("\r")
    progress, rest = text[first:].rsplit("\r\x1b[K", 1)   # erased before the summary
    assert f"{capture.name}: {PROGRESS_EVERY} packets" in progress or " packets, " in progress, text
    assert "%" in progress and "MB/s" in progress
    assert rest.startswith(f"{capture}: ") and "packets" in rest and "\x1b" not in rest
    plain = run_replay(capture, tmp_path / "b.json", stderr_tty=False)
    assert "\r" not in plain and "\x1b" not in plain
    assert plain.startswith(f"{capture}: ")
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()

"""Where the public test captures are: tests/data/pcaps/ (copied from the
project's shared captures, with their sources and expected outputs in
tests/data/pcaps/README.md), so a clone anywhere is self-contained."""

from pathlib import Path

PCAPS_DIR = Path(__file__).resolve().parents[1] / "data" / "pcaps"

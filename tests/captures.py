"""Where the public test captures are: tests/pcaps/ (copied from the
project's shared captures, with their sources and expected outputs in
tests/pcaps/README.md), so a clone anywhere is self-contained."""

from pathlib import Path

PCAPS_DIR = Path(__file__).resolve().parent / "pcaps"

"""Where the public test captures are: tests/data/pcaps/ (copied from the
project's shared captures, with their sources and expected outputs in
tests/data/pcaps/README.md), so a clone anywhere is self-contained."""

from pathlib import Path

PCAPS_DIR = Path(__file__).resolve().parents[1] / "data" / "pcaps"


def captures_in(folder: Path) -> list[str]:
    """Capture files directly in ``folder`` and in its by_content/ (SMTP on
    other ports, made by ``support.content_captures``), not those under expected/."""
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.suffix in (".pcap", ".pcapng")]
    sub = folder / "by_content"
    if sub.is_dir():
        found += [f"by_content/{p.name}" for p in sub.iterdir() if p.suffix in (".pcap", ".pcapng")]
    return sorted(found)

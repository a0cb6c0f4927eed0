"""The lab's MIME capture (tests/data/pcaps/lab__mime.pcap: swaks --attach
and a message of nested entities, to Postfix) replayed without the lab: each
entity's name, type and hashes are those of the octets sent (rebuilt by
support.mime_samples), the URLs and the shipped rule's alerts are right.
Its records are also a golden file (tests/offline/test_golden_pcaps.py)."""

from __future__ import annotations

from support.mime_samples import check_samples, records_of


def test_the_lab_mime_capture_gives_the_entities_sent(pcaps_dir):
    check_samples(records_of(pcaps_dir / "lab__mime.pcap"))

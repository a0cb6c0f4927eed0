"""Outputs: the records written in the formats other tools ingest as they are
(``zeek``: Zeek's logs, one file per log in a directory)."""

"""Replay captures in this process and print their records as one JSON document.

    PYTHONPATH=tests python -m support.replay_records CAPTURE...

For the test that compares the compiled modules with the pure-Python ones
(tests/offline/test_compiled_modules.py): it runs this twice in fresh
processes, once with ``SMTP_SENSOR_PURE=1``, since a process imports each
module once.  The document: ``{"status": sensor.compiled.status(),
"records": {capture: [record JSON text, ...]}, "split": {capture: [...]}}``,
"split" holding the records of ``replay --workers 2`` (``sensor.inputs.workers``,
its splitter ``sensor.inputs.split`` among the compiled modules), sorted;
each record is the text
``json.dumps`` makes of it, key order and float digits included, so equal
documents mean byte-identical records.  Replayed as the golden test does
(``uid_seed=0``, SMTP found by content, the default config).
"""

from __future__ import annotations

import io
import json
import sys

from sensor import compiled
from sensor.assembly import Userland
from sensor.config import Config
from sensor.inputs.replay import replay
from sensor.inputs.workers import replay_workers
from sensor.records.sinks import JsonLinesSink, ListSink


def records_text(path: str) -> list[str]:
    sink = ListSink()
    replay(path, Userland(Config(), sink, uid_seed=0, by_content=True))
    return [json.dumps(r, ensure_ascii=False) for r in sink]


def split_records_text(path: str, workers: int = 2) -> list[str]:
    out = io.StringIO()
    replay_workers(path, lambda sink: Userland(Config(), sink, uid_seed=0, by_content=True), workers,
                   JsonLinesSink(out))
    return sorted(json.dumps(json.loads(line), ensure_ascii=False) for line in out.getvalue().splitlines())


def main(argv: list[str]) -> int:
    records = {path: records_text(path) for path in argv}
    split = {path: split_records_text(path) for path in argv}
    json.dump({"status": compiled.status(), "records": records, "split": split}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The verdict-to-kernel latency as the sensor reports it
(``smtp_sensor_verdict_to_kernel_seconds``): `smtp-sensor run` with the
shipped rules in the netns lab, N sessions from a banned sender domain
(spam_filter.mail_from drops each at its MAIL FROM), then the histograms of
`smtp-sensor status` (``verdicts``).

    .venv/bin/python bench/bench_verdict_latency.py [--sessions 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sensor.kernel import abi  # noqa: E402
from sensor.lab.network import Lab  # noqa: E402
from support.lab_sensor import REPO, SensorProcess  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            tempfile.TemporaryDirectory(dir="/sys/fs/bpf", prefix="ss-bench-latency-") as pins, Lab() as lab:
        tmp = Path(tmp)
        lab.start_server(journal=tmp / "journal.jsonl")
        sensor = SensorProcess(lab, tmp / "records.json", Path(pins) / f"v{abi.ABI_VERSION}", tmp / "c.sock",
                               "--rules", str(REPO / "rules"))
        try:
            sensor.wait_log(lambda e: e.get("event") == "running", timeout=120)
            for i in range(args.sessions):
                lab.swaks("--to", "rcpt@lab.example", "--from", f"s{i}@spam.example", "--timeout", "3")
            print(json.dumps(sensor.cli("status")["verdicts"], indent=2))
        finally:
            sensor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

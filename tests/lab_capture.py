"""A packet capture on a lab interface (dumpcap inside the namespace), for
tests that compare what the live sensor logged with a replay of the wire."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path


class Capture:
    def __init__(self, lab, ns: str, ifname: str, path: Path):
        self.path = path
        dumpcap = shutil.which("dumpcap")
        if dumpcap is None:
            raise RuntimeError("dumpcap is missing (the tshark package brings it; ./run setup installs it)")
        self.proc = subprocess.Popen(lab.exec_argv(ns, dumpcap, "-q", "-P", "-i", ifname, "-w", str(path)),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        # dumpcap writes the file header once it captures
        while not (path.exists() and path.stat().st_size >= 24):
            if self.proc.poll() is not None:
                raise RuntimeError(f"dumpcap failed: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dumpcap did not start within 10 s")
            time.sleep(0.02)
        time.sleep(0.2)    # the socket is bound before the header is written; give it a moment

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path

"""Shared fixtures, and the marker of each test folder. The folders follow the
layout: unit/ (no root), offline/ (captures replayed), kernel/
(BPF_PROG_TEST_RUN), lab/ (network namespaces, real servers and clients),
cli/ (the command line and control socket), deploy/ (shipped files);
helpers in support/, captures and golden files in data/. Prerequisites
(root, bcc, kernel headers, netns tools) are checked by the fixtures here,
through support.prereqs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support.captures import PCAPS_DIR
from support.prereqs import missing

#: folder under tests/ -> the marker its tests get (``pytest -m "not lab"``)
FOLDER_MARKERS = {"unit": "unit", "offline": "offline", "kernel": "kernel", "lab": "lab",
                  "cli": "cli", "deploy": "deploy"}


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).resolve().parent
    for item in items:
        try:
            folder = Path(item.fspath).resolve().relative_to(root).parts[0]
        except ValueError:
            continue
        marker = FOLDER_MARKERS.get(folder)
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def kernel_prereqs():
    if os.geteuid() != 0:
        missing("root (BPF and netns tests need it)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        missing("bcc (the distro package python3-bpfcc, seen through a --system-site-packages venv)")
    from sensor.errors import SensorError
    from sensor.kernel.datapath import check_kernel_headers
    try:
        check_kernel_headers()
    except SensorError as exc:
        missing(str(exc))


@pytest.fixture(scope="session")
def lab_prereqs(kernel_prereqs):
    for tool in ("ip", "swaks"):
        if not shutil.which(tool):
            missing(f"{tool} (installed by ./run setup)")
    if not Path("/proc/self/ns/net").exists():
        missing("network namespaces")


@pytest.fixture(scope="session")
def test_pin_root():
    """A pin folder of the tests' own, never the production one."""
    root = Path(f"/sys/fs/bpf/smtp-sensor-test-{os.getpid()}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pcaps_dir() -> Path:
    """The public captures folder (``tests/data/pcaps``, in the repository)."""
    return PCAPS_DIR


@pytest.fixture(scope="module")
def lab(lab_prereqs, tmp_path_factory):
    """The usual lab of a test module: client and server namespaces, aiosmtpd on
    port 25 writing what it accepted to ``lab.journal``.  A module that needs
    another (Postfix, more client addresses) defines its own ``lab``."""
    from sensor.lab.network import Lab

    journal = tmp_path_factory.mktemp("lab") / "journal.jsonl"
    with Lab() as lab:
        lab.journal = journal
        lab.start_server(journal=journal)
        yield lab


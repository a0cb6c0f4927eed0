"""Shared fixtures. Prerequisites (root, bcc, kernel headers, netns tools)
are checked here: when one is missing a test SKIPS on a developer machine
but FAILS in CI (CI=true), with a message naming what is missing."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

from captures import PCAPS_DIR  # noqa: E402,F401 - the public captures, in the repository


def require_module(name: str):
    """Import ``name`` (an installed dependency, e.g. of the test extra):
    skipped without it on a developer machine, a failure in CI."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name} (./run setup installs .[test])")


def missing(what: str) -> None:
    message = f"prerequisite missing: {what}"
    if IN_CI:
        pytest.fail(message + " (CI=true: tests must run, not skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kernel_prereqs():
    if os.geteuid() != 0:
        missing("root (BPF and netns tests need it)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        missing("bcc (the distro package python3-bpfcc, seen through a --system-site-packages venv)")
    from sensor.datapath import check_kernel_headers
    from sensor.errors import SensorError
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


@functools.cache
def _swaks_speaks_ipv6() -> bool:
    return subprocess.run(["perl", "-MIO::Socket::INET6", "-e", "1"], capture_output=True, check=False).returncode == 0


def require_swaks_ipv6() -> None:
    """For a swaks session over IPv6: swaks connects over IPv6 only with the
    Perl module IO::Socket::INET6 (else '*** IPv6 not available', exit 10)."""
    if not _swaks_speaks_ipv6():
        missing("IO::Socket::INET6 for swaks over IPv6 (libio-socket-inet6-perl, installed by ./run setup)")


@pytest.fixture(scope="session")
def test_pin_root():
    """A pin folder of the tests' own, never the production one."""
    root = Path(f"/sys/fs/bpf/smtp-sensor-test-{os.getpid()}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pcaps_dir() -> Path:
    """The public captures folder (``tests/pcaps``, in the repository)."""
    return PCAPS_DIR

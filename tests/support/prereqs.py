"""Prerequisites of the tests: when one is missing a test SKIPS on a
developer machine but FAILS in CI (CI=true), with a message naming it."""

from __future__ import annotations

import functools
import os
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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


@functools.cache
def _swaks_speaks_ipv6() -> bool:
    return subprocess.run(["perl", "-MIO::Socket::INET6", "-e", "1"], capture_output=True, check=False).returncode == 0


def require_swaks_ipv6() -> None:
    """For a swaks session over IPv6: swaks connects over IPv6 only with the
    Perl module IO::Socket::INET6 (else '*** IPv6 not available', exit 10)."""
    if not _swaks_speaks_ipv6():
        missing("IO::Socket::INET6 for swaks over IPv6 (libio-socket-inet6-perl, installed by ./run setup)")

"""Prerequisites of the tests: when one is missing a test SKIPS on a
developer machine but FAILS in CI (CI=true), with a message naming it."""

from __future__ import annotations

import os

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

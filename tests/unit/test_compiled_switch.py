"""Which of a per-packet module's two forms runs (sensor/compiled.py): the
extension module only when it was built from the source that is there now,
and never with SMTP_SENSOR_PURE set."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json

import pytest

from sensor import compiled

pytestmark = pytest.mark.unit

MODULES = ("pkg.stream.fast", "pkg.slow")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path):
    (tmp_path / "stream").mkdir()
    (tmp_path / "stream" / "fast.py").write_text("X = 1\n")
    (tmp_path / "stream" / ("fast" + SUFFIX)).write_bytes(b"\x7fELF")
    (tmp_path / "slow.py").write_text("Y = 2\n")
    digest = hashlib.sha256(b"X = 1\n").hexdigest()
    (tmp_path / compiled.HASHES_FILE).write_text(json.dumps({"pkg.stream.fast": digest}))
    return tmp_path


def test_a_module_built_from_its_current_source_runs_compiled_and_one_not_built_runs_pure(package):
    assert compiled.reasons(MODULES, str(package), {}) == {"pkg.stream.fast": "", "pkg.slow": "not built"}


def test_an_edited_source_runs_pure_until_it_is_built_again(package):
    (package / "stream" / "fast.py").write_text("X = 3\n")
    why = compiled.reasons(MODULES, str(package), {})["pkg.stream.fast"]
    assert why.startswith("source changed since the build")


def test_a_build_without_recorded_hashes_is_not_trusted(package):
    (package / compiled.HASHES_FILE).write_text("[not, json")
    assert compiled.reasons(MODULES, str(package), {})["pkg.stream.fast"].startswith("source changed")


@pytest.mark.parametrize("value, pure", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_environment_switch_forces_pure_python(package, value, pure):
    why = compiled.reasons(MODULES, str(package), {compiled.PURE_ENV: value})["pkg.stream.fast"]
    assert why == (f"{compiled.PURE_ENV} is set" if pure else "")

"""One Python floor everywhere (3.10: Ubuntu 22.04's python3; Debian 12 has
3.11): pyproject.toml, the README and ./run say the same, and TOML is read in
one place, by the standard library's tomllib or, on 3.10, the tomli package."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import sensor.config
from sensor.config import tomllib

REPO = Path(__file__).resolve().parents[2]
FLOOR = (3, 10)
FLOOR_TEXT = "3.10"


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_requires_the_floor_and_tomli_below_3_11():
    project = pyproject()["project"]
    assert project["requires-python"] == f">={FLOOR_TEXT}"
    assert 'tomli>=1.1; python_version < "3.11"' in project["dependencies"]


def test_the_readme_and_run_state_the_same_floor():
    assert f"Python {FLOOR_TEXT} or later" in (REPO / "README.md").read_text()
    run = (REPO / "run").read_text()
    assert f"sys.version_info < {FLOOR}" in run and f"needs Python {FLOOR_TEXT} or later" in run


def test_toml_is_read_through_sensor_config_alone():
    """No other module of the product imports a TOML parser of its own."""
    importers = []
    for path in sorted((REPO / "sensor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(re.fullmatch(r"toml(lib|i)(\..*)?", name) for name in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert importers == ["sensor/config.py", "sensor/config.py"]   # tomllib, or tomli as tomllib


def test_on_python_3_10_the_tomli_package_reads_toml(monkeypatch):
    """The branch the floor needs, taken with a stand-in tomli (this
    interpreter is newer): sensor.config's tomllib is then tomli."""
    tomli = types.ModuleType("tomli")
    tomli.loads, tomli.TOMLDecodeError = tomllib.loads, tomllib.TOMLDecodeError
    monkeypatch.setitem(sys.modules, "tomli", tomli)
    monkeypatch.setattr(sys, "version_info", (3, 10, 12, "final", 0))
    spec = importlib.util.spec_from_file_location("sensor_config_on_3_10", sensor.config.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)   # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    assert module.tomllib is tomli
    assert module.loads('[sensor]\nports = [25, 2525]\n').sensor.ports == (25, 2525)

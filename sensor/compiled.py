"""The per-packet modules compiled with Cython, and the switch back to pure Python.

``setup.py`` compiles the modules in ``MODULES`` as they are (Cython's pure-Python
mode: the same source, no ``.pyx``) into extension modules beside them, when a C
compiler, the Python headers and Cython are there; otherwise the install goes on
with the pure-Python modules.  Python's import system prefers an extension module
to the ``.py`` of the same name, so a built checkout runs the compiled code.

The ``.py`` is used instead, for each module, when

* ``SMTP_SENSOR_PURE`` is set to anything but ``""`` or ``0`` (both in one
  checkout: the test that compares their records, benchmarks), or
* the source changed since the build: the build records each source's SHA-256 in
  ``_compiled.json`` beside the extension modules; an edited ``.py`` is what runs
  until ``./run setup`` (or ``pip install``) builds it again.

``install()`` (called by ``sensor/__init__.py`` before any submodule is imported)
puts a finder first on ``sys.meta_path`` that hands out the ``.py`` in those
cases; ``status()`` says, per module, which one runs and why.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys

__all__ = ["MODULES", "PURE_ENV", "HASHES_FILE", "forced_pure", "install", "reasons", "status", "source_digest"]

#: compiled when the build can: the per-packet path of replay and live
MODULES = (
    "sensor.inputs.pcapfile",      # the record loop
    "sensor.inputs.replay",        # the replay loop
    "sensor.inputs.split",         # replay --workers: the owner of every frame read
    "sensor.stream.packet",        # frame decode
    "sensor.stream.reassembly",    # Reassembler.feed, TcpFlow
    "sensor.pipeline",             # Pipeline.feed_frame
    "sensor.smtp.connection",      # receive_client, the dispatch
    "sensor.smtp.replies",
    "sensor.smtp.pending",
    "sensor.smtp.transaction",
    "sensor.smtp.lines",           # line framing
    "sensor.smtp.dotdata",         # the DATA scan
    "sensor.smtp.message",         # message content
    "sensor.smtp.events",          # the events made per command, reply and chunk
    "sensor.smtp.headers",
    "sensor.smtp.address",
    "sensor.stream.flowid",
    "sensor.records.smtp",         # one record per transaction
    "sensor.rules.enforce",        # the gate asked per segment
)
PURE_ENV = "SMTP_SENSOR_PURE"
HASHES_FILE = "_compiled.json"     # in the package folder: module -> SHA-256 of the source built

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_EXT_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def forced_pure(environ=os.environ) -> bool:
    return environ.get(PURE_ENV, "") not in ("", "0")


def source_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _source_path(name: str, package_dir: str = _PACKAGE_DIR) -> str:
    return os.path.join(package_dir, *name.split(".")[1:]) + ".py"


def _is_built(name: str, package_dir: str) -> bool:
    stem = _source_path(name, package_dir)[:-3]
    return any(os.path.exists(stem + suffix) for suffix in _EXT_SUFFIXES)


def _recorded(package_dir: str) -> dict:
    try:
        with open(os.path.join(package_dir, HASHES_FILE), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def reasons(modules=MODULES, package_dir: str = _PACKAGE_DIR, environ=os.environ) -> dict[str, str]:
    """Module -> why its ``.py`` runs ("" when its extension module runs)."""
    recorded = _recorded(package_dir)
    forced = forced_pure(environ)
    why = {}
    for name in modules:
        if not _is_built(name, package_dir):
            why[name] = "not built"
        elif forced:
            why[name] = f"{PURE_ENV} is set"
        elif recorded.get(name) != source_digest(_source_path(name, package_dir)):
            why[name] = "source changed since the build (./run setup builds it again)"
        else:
            why[name] = ""
    return why


class _PureFinder:
    """A meta path finder: the ``.py`` of the modules in ``pure`` (the rest as usual)."""

    def __init__(self, pure: frozenset):
        self.pure = pure

    def find_spec(self, name, path=None, target=None):
        if name not in self.pure:
            return None
        source = _source_path(name)
        loader = importlib.machinery.SourceFileLoader(name, source)
        return importlib.util.spec_from_file_location(name, source, loader=loader)


_reasons_at_install: dict[str, str] = {}


def install() -> None:
    """Make the modules that must run as pure Python import from their ``.py``."""
    global _reasons_at_install
    _reasons_at_install = reasons()
    # a module that was not built imports its .py anyway
    pure = frozenset(name for name, why in _reasons_at_install.items() if why and why != "not built")
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PureFinder)]
    if pure:
        sys.meta_path.insert(0, _PureFinder(pure))


def status() -> dict[str, str]:
    """Module -> "compiled", or "pure: <why>", for the modules as imported
    (one not imported yet: as it would be)."""
    known = _reasons_at_install or reasons()
    out = {}
    for name in MODULES:
        mod = sys.modules.get(name)
        if mod is not None:
            compiled = (getattr(mod, "__file__", "") or "").endswith(_EXT_SUFFIXES)
            why = known.get(name) or "imported from its .py"
        else:
            why = known[name]
            compiled = not why
        out[name] = "compiled" if compiled else f"pure: {why}"
    return out

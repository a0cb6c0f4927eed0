"""The build's one dynamic part: the per-packet modules compiled with Cython.

Everything else is in pyproject.toml.  The modules named in sensor/compiled.py
are compiled as they are (Cython's pure-Python mode) when Cython, a C compiler
and the Python headers are there.  When one is missing, or a module does not
compile, the install goes on with the pure-Python module and says so in one
line (as markupsafe and PyYAML do with their speedups); it never fails for it.
``SMTP_SENSOR_PURE=1`` at build time builds nothing.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
_compiled = runpy.run_path(os.path.join(HERE, "sensor", "compiled.py"))   # without importing the package
MODULES = _compiled["MODULES"]
PURE_ENV = _compiled["PURE_ENV"]
HASHES_FILE = _compiled["HASHES_FILE"]
source_digest = _compiled["source_digest"]

# The compiled code must behave as the .py does: annotations are not types
# (Cython would otherwise reject an argument of another type), no C integer
# overflow, Python's division and exceptions.
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
    "embedsignature": True,
}


def say(message: str) -> None:
    print(f"smtp-sensor: {message}", file=sys.stderr)


def source_of(name: str) -> str:
    return os.path.join(*name.split(".")) + ".py"


def extensions():
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        say(f"{PURE_ENV} is set: the pure-Python modules only")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        say("Cython is not installed: the pure-Python modules only (pip install cython, then reinstall)")
        return []
    from setuptools import Extension
    exts = [Extension(name, [source_of(name)]) for name in MODULES]
    try:
        return cythonize(exts, compiler_directives=DIRECTIVES, quiet=True)
    except Exception as e:  # noqa: BLE001  (Cython's CompileError and any other: fall back)
        say(f"Cython could not translate the modules ({e}): the pure-Python modules only")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python per module, and records the
    SHA-256 of each source it built (sensor/compiled.py checks it at import)."""

    def run(self):
        self._built = {}
        self._failed = {}
        try:
            super().run()
        except Exception as e:  # noqa: BLE001  (no compiler: DistutilsPlatformError, ...)
            say(f"cannot build C extensions ({e}): the pure-Python modules only")
        else:
            if self._failed:
                first = next(iter(self._failed.values()))
                say(f"{len(self._failed)} of {len(self.extensions)} modules not compiled ({first}; "
                    "gcc and python3-dev build them): their pure-Python code is used")
        self._write_hashes()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001  (CompileError, LinkError, a missing Python.h)
            self._failed[ext.name] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return
        self._built[ext.name] = source_digest(os.path.join(HERE, source_of(ext.name)))

    def _write_hashes(self):
        if not self.extensions:
            return
        folder = os.path.dirname(self.get_ext_fullpath(MODULES[0].split(".")[0] + ".x"))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, HASHES_FILE), "w", encoding="utf-8") as f:
            json.dump(self._built, f, indent=1, sort_keys=True)
            f.write("\n")
        if self._built:
            say(f"compiled {len(self._built)} of {len(self.extensions)} modules with Cython")


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

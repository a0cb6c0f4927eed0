"""Load the rule files of a directory, and reload them when they change.

Every ``*.py`` file of the directory (not starting with ``_`` or ``.``) is
imported under its own module name (``smtp_sensor_rules.set<n>.<stem>``, one
namespace per RuleSet, so two sets may hold files of the same name); the rules
it declares with ``@rule`` are collected during the import.  ``rules.toml`` in
the same directory holds the rules' settings (``config()``), one table per file.

A reload imports first and swaps only on success: a syntax error, an exception
at import (whatever it is: SystemExit and KeyboardInterrupt too), an import
over its time budget (``[limits.rules] import_ms``: the module's code is
interrupted as a rule call is, see sensor.rules.budget) or a duplicate rule id
keeps the last good version of that file and reports one clear error naming
the file and line.  A rule the engine disabled for its calls over budget
stays out of ``by_hook`` until its file is loaded again.  Changes are found by stat
polling (mtime, size, inode), which also works on Vagrant shared folders where
inotify misses the host's edits.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from sensor.config import tomllib
from sensor.errors import SensorError, Shutdown
from sensor.rules import api
from sensor.rules.budget import GUARD, RuleLimits
from sensor.rules.counters import RuleSetCounters

__all__ = ["RuleSet", "LoadError", "CONFIG_FILE", "MODULE_PREFIX"]

CONFIG_FILE = "rules.toml"
MODULE_PREFIX = "smtp_sensor_rules"

_namespaces = itertools.count(1)


class LoadError(SensorError):
    """The rules directory cannot be used at all (missing, not a directory)."""


def _signature(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class RuleFile:
    path: Path
    signature: tuple
    rules: list = field(default_factory=list)
    module: object = None


class RuleSet:
    """The rules of one directory: the last good version of every file."""

    def __init__(self, directory, logger=None, limits: RuleLimits | None = None, guard=GUARD):
        self.directory = Path(directory)
        self.limits = limits or RuleLimits()
        self.guard = guard
        if not self.directory.is_dir():
            what = "does not exist" if not self.directory.exists() else "is not a directory"
            raise LoadError(f"rules directory {self.directory} {what}: create it or point --rules at one")
        self.logger = logger
        # a module namespace of this set's own: two sets in one process (tests,
        # two sensors) must not replace or unload each other's modules
        self._namespace = f"{MODULE_PREFIX}.set{next(_namespaces)}"
        self.files: dict[Path, RuleFile] = {}
        self.errors: dict[Path, str] = {}        # file -> the error that kept its last good version
        self._failed: dict[Path, tuple] = {}     # file -> signature that failed (not retried until it changes)
        self._blocked: dict[Path, str] = {}      # file refused for a rule id another file holds -> that id
        self._config_sig = None
        self.config: dict = {}
        self.generation = 0
        self.reloads = 0
        self.counters = RuleSetCounters(self)
        self.by_hook: dict[str, list] = {h.name: [] for h in api.hooks.ALL}
        self.reload(force=True)

    # ------------------------------------------------------------ queries
    @property
    def rules(self) -> list:
        return [r for f in sorted(self.files) for r in self.files[f].rules]

    def for_hook(self, hook) -> list:
        return self.by_hook[hook.name if isinstance(hook, api.Hook) else hook]

    # ------------------------------------------------------------ loading
    def poll(self) -> bool:
        """Reload what changed on disk; returns True if anything was swapped."""
        return self.reload(force=False)

    def reload(self, force: bool = False) -> bool:
        if not self.directory.is_dir():
            # a directory gone for a moment (an unmounted shared folder, a
            # deploy swapping it) is not every file deleted: keep every rule
            # and rules.toml
            message = (f"rules directory {self.directory} does not exist any more or is not a "
                       "directory; keeping the loaded rules")
            if self.errors.get(self.directory) != message:
                self.counters.reload_errors += 1
                self.errors[self.directory] = message
                self._log("error", "rules directory missing", error=message)
            return False
        self.errors.pop(self.directory, None)
        changed = self._load_config(force)
        present = {p for p in self.directory.glob("*.py") if not p.name.startswith(("_", "."))}
        # files that failed and were deleted go too, and their errors with them
        for path in sorted((set(self.files) | set(self._failed)) - present):
            if path in self.files:
                self._log("info", "rule file removed", file=str(path))
                changed = True
            self._forget(path)
        for path in sorted(present):
            sig = _signature(path)
            if sig is None:
                continue
            loaded = self.files.get(path)
            if not force and loaded is not None and loaded.signature == sig:
                continue
            if not force and self._failed.get(path) == sig:
                continue
            if self._load_file(path, sig):
                changed = True
        if changed and self._blocked:
            # a file refused for a duplicate id loads, unchanged, once the
            # file that held the id lets go of it (a rule moved between files)
            taken = {r.id for rf in self.files.values() for r in rf.rules}
            for path, rule_id in sorted(self._blocked.items()):
                sig = _signature(path)
                if rule_id not in taken and sig is not None and self._load_file(path, sig):
                    taken.update(r.id for r in self.files[path].rules)
        if changed:
            self._index()
            self.generation += 1
        self.reloads += 1
        return changed

    def _load_config(self, force: bool) -> bool:
        path = self.directory / CONFIG_FILE
        sig = _signature(path)
        if not force and sig == self._config_sig:
            return False
        self._config_sig = sig
        if sig is None:
            new = {}
        else:
            try:
                new = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
                self.counters.reload_errors += 1
                self.errors[path] = f"{path}: {exc}; keeping the previous settings"
                self._log("error", "rules config not loaded", error=self.errors[path])
                return False
        # a fixed file after an error is reported as loaded even when it holds
        # the settings kept all along: otherwise the error would look current
        recovered = self.errors.pop(path, None) is not None
        if new == self.config and not force and not recovered:
            return False
        self.config = new
        api._config.clear()
        api._config.update(new)
        self._log("info", "rules config loaded", file=str(path), sections=sorted(new))
        return True

    def _module_name(self, path: Path) -> str:
        return f"{self._namespace}.{path.stem}"

    def _load_file(self, path: Path, sig) -> bool:
        name = self._module_name(path)
        collected: list = []
        previous = sys.modules.get(name)
        token = api._collecting.set(collected)
        guard, call = self.guard, 0
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            module.__dict__[api.RULESET_GLOBAL] = self     # config() reads this set's rules.toml
            module.__dict__[api.STEM_GLOBAL] = path.stem   # config() section, default rule ids
            # in sys.modules while it runs, as an import would have it:
            # dataclasses, typing.get_type_hints, pickle... look the module up
            # while it is being executed
            sys.modules[name] = module
            # compiled from the source, not through exec_module: the bytecode
            # cache (__pycache__) is keyed on the source's mtime in whole
            # seconds and its size, so an edit of the same size within the
            # second of the last load ran the old code
            code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
            call = guard.arm(self.limits.import_ms / 1000.0, self.limits.memory_pages)
            exec(code, module.__dict__)
        except Shutdown:
            raise
        except BaseException as exc:   # any failure of user code at import, or its budget
            guard.disarm(call)
            self._restore_module(name, previous)
            self._failed[path] = sig
            self._blocked.pop(path, None)
            self._fail(path, _describe(exc, path))
            return False
        finally:
            guard.disarm(call)
            api._collecting.reset(token)
        taken = {r.id: f for f, rf in self.files.items() if f != path for r in rf.rules}
        ids = [r.id for r in collected]
        dup = next((i for i in ids if ids.count(i) > 1 or i in taken), None)
        if dup is not None:
            self._restore_module(name, previous)
            where = taken.get(dup, path)
            self._failed[path] = sig
            if dup in taken:
                self._blocked[path] = dup
            self._fail(path, f"{path}: rule id {dup!r} is already used by {where}")
            return False
        for r in collected:
            r.file = str(path)
        self.files[path] = RuleFile(path, sig, collected, module)
        self._failed.pop(path, None)
        self._blocked.pop(path, None)
        self.errors.pop(path, None)
        self._log("info", "rule file loaded", file=str(path), rules=[r.id for r in collected])
        return True

    @staticmethod
    def _restore_module(name: str, previous) -> None:
        if previous is not None:
            sys.modules[name] = previous          # the last good version
        else:
            sys.modules.pop(name, None)

    def _fail(self, path: Path, message: str) -> None:
        self.counters.reload_errors += 1
        kept = " ; keeping the previous version" if path in self.files else " ; not loaded"
        self.errors[path] = message + kept
        self._log("error", "rule file not loaded", error=self.errors[path])

    def _forget(self, path: Path) -> None:
        self.files.pop(path, None)
        self.errors.pop(path, None)
        self._failed.pop(path, None)
        self._blocked.pop(path, None)
        sys.modules.pop(self._module_name(path), None)

    def _index(self) -> None:
        by_hook = {h.name: [] for h in api.hooks.ALL}
        for r in self.rules:
            if r.disabled is None:
                by_hook[r.hook.name].append(r)
        self.by_hook = by_hook

    def _log(self, level, message, **kw) -> None:
        if self.logger is not None:
            getattr(self.logger, level)(message, **kw)


def _describe(exc: BaseException, path: Path) -> str:
    """``file:line: Kind: message`` for an exception raised importing ``path``."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename or path}:{exc.lineno}: SyntaxError: {exc.msg}"
    line = 0
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {type(exc).__name__}: {exc}"

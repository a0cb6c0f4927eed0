"""``reload`` (SIGHUP, ``smtp-sensor reload``): a changed configuration
applied to the running sensor, nothing rebuilt, so no flow and no statistic
is dropped.

    plan = plan_reload(running, new)      # which keys changed, and can they change live
    plan.refusal                          # None, or one line naming what needs a restart
    apply_reload(sensor, plan)            # each live change, to the part that holds it

What changes live (``LIVE``): the SMTP ports (the kernel's ``ss_ports`` and
the userland's orientation: flows already followed on a port dropped from
the set are followed to their end), ``[spam_stats]`` thresholds and lists
(the hosts counted so far are kept and judged by the new values from the
next evaluation), ``[limits.rules]`` (the next rule call's budget), the
snapshot interval and the stop timeout.  Every other
key is built into something that holds state (the window's shape, the
pipeline's limits, the programs' attachment, the commit hold, the pinned
maps) and needs a restart: a reload that changes one is refused as a whole,
in one line naming the keys, and the running configuration stays.

Outputs: where records go is ``OUTPUT_KEYS``; a reload that changes them
asks ``sensor.reload_outputs(old, new)``, the hook that opens the new
outputs (``sensor.service.loop.Sensor.reload_outputs``), first: one that
cannot be opened refuses the reload (nothing else applied, the old outputs
stay).  A sensor whose caller gave it its sink (``OUTPUTS_RELOAD`` false)
needs a restart for them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sensor.config import Config, load
from sensor.errors import SensorError

__all__ = ["reload_sensor", "plan_reload", "apply_reload", "ReloadPlan", "LIVE", "OUTPUT_KEYS", "changed_keys"]

_SPAM_LIVE = ("threshold", "percent", "check_interval", "reject_codes", "local_mail", "local_networks",
              "suppress_for", "max_hosts", "max_recipients", "max_samples", "allow", "ban")
_RULES_LIVE = ("budget_ms", "max_budget_ms", "import_ms", "strikes", "strike_window", "memory_mb",
               "watchdog_s")
#: the keys a reload applies to the running sensor (dotted: table.key)
LIVE = frozenset({"sensor.ports", "sensor.snapshot_interval", "sensor.stop_timeout", "enforce.hold_max_ms",
                  *(f"spam_stats.{k}" for k in _SPAM_LIVE),
                  *(f"limits.rules.{k}" for k in _RULES_LIVE)})
#: where records go: the outputs' hook decides (sensor.outputs, ``[[output]]``)
OUTPUT_KEYS = frozenset({"sensor.output", "output", "outputs"})


def reload_sensor(sensor) -> dict:
    """Read the running ``sensor``'s configuration again (``options.load_config``,
    else the file it came from) and apply what changed, or refuse it; then
    re-read the rules.  Returns ``config_changed`` (the keys applied),
    ``config_error`` (the one line of a refusal or of a file that does not
    load: the running configuration stays) and, with rules, ``rules_changed``."""
    why = sensor.reload_requested if isinstance(sensor.reload_requested, str) else "control socket"
    sensor.reload_requested = False
    result: dict = {"config_changed": [], "config_error": None}
    loader = sensor.options.load_config
    source = sensor.config.source
    if loader is None and source is not None:
        loader = lambda: load(source)          # noqa: E731
    if loader is not None:
        try:
            plan = plan_reload(sensor.config, loader(), outputs_live=sensor.OUTPUTS_RELOAD)
        except SensorError as exc:
            result["config_error"] = f"configuration not reloaded: {exc}"
        else:
            if plan.refusal is not None:
                result["config_error"] = plan.refusal
            else:
                try:
                    apply_reload(sensor, plan)
                except SensorError as exc:       # the new outputs could not be opened: nothing applied
                    result["config_error"] = f"configuration not reloaded: {exc}; the running configuration stays"
                else:
                    result["config_changed"] = list(plan.changed)
    if result["config_error"]:
        sensor.log.error(result["config_error"], reason=why)
    elif result["config_changed"]:
        sensor.log.info("configuration reloaded", reason=why, changed=result["config_changed"])
    if sensor.engine is not None:
        sensor.reload_requested = why              # reload_rules says why in its line
        result["rules_changed"] = sensor.reload_rules(force=True)
    return result


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """The dotted names of the fields that differ between two config
    dataclasses (nested tables walked; ``source``, the file's path, left out)."""
    out = []
    for f in dataclasses.fields(old):
        if f.name == "source":
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        name = prefix + f.name
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
            out += changed_keys(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


@dataclass(frozen=True)
class ReloadPlan:
    running: Config
    new: Config
    changed: tuple[str, ...]        #: every key that differs
    restart: tuple[str, ...]        #: of them, those the running sensor cannot take

    @property
    def refusal(self) -> str | None:
        """One line saying which keys need a restart, or None."""
        if not self.restart:
            return None
        keys = ", ".join(_shown(k) for k in self.restart)
        verb = "needs" if len(self.restart) == 1 else "need"
        return (f"configuration not reloaded: {keys} {verb} a restart (systemctl restart smtp-sensor); "
                "the running configuration stays")

    def touches(self, prefix: str) -> bool:
        return any(k == prefix or k.startswith(prefix + ".") for k in self.changed)


def _shown(key: str) -> str:
    """``spam_stats.window`` -> ``[spam_stats] window``, as the docs name keys."""
    table, _, name = key.rpartition(".")
    return f"[{table}] {name}" if table else name


def plan_reload(running: Config, new: Config, outputs_live: bool = False) -> ReloadPlan:
    """What a reload from ``running`` to ``new`` would change; ``outputs_live``:
    the outputs' hook can reopen them."""
    changed = tuple(changed_keys(running, new))
    restart = tuple(k for k in changed
                    if k not in LIVE and not (k in OUTPUT_KEYS and outputs_live))
    return ReloadPlan(running, new, changed, restart)


def apply_reload(sensor, plan: ReloadPlan) -> None:
    """Apply a plan without refusal to the running ``sensor``
    (``sensor.service.loop.Sensor``), then make its configuration the new one."""
    assert plan.refusal is None, plan.refusal
    new = plan.new
    if any(k in OUTPUT_KEYS for k in plan.changed):     # first: the one step that can fail
        sensor.reload_outputs(plan.running, new)
    if "sensor.ports" in plan.changed:
        _set_ports(sensor, new.sensor.ports)
    if "enforce.hold_max_ms" in plan.changed:
        _set_hold_max_ms(sensor, new.enforce.hold_max_ms)
    if plan.touches("spam_stats") and sensor.reject_stats is not None:
        sensor.reject_stats.reconfigure(new.spam_stats)
        sensor.actor.config = new.spam_stats
    if plan.touches("limits.rules") and sensor.engine is not None:
        sensor.engine.set_limits(new.limits.rules)
        sensor.rearm_watchdog(new.limits.rules.watchdog_s)
    sensor.config = new


def _set_ports(sensor, ports) -> None:
    """The kernel's port set first (it decides what is pushed), then who is
    the server in the userland: the reassembly's orientation, the probe by
    content's complement, the gate's ban ports."""
    ports = tuple(ports)
    dp = sensor.datapath
    if dp is not None and dp.maps is not None:
        dp.maps.set_ports(ports)
        dp.config.ports = ports
    pipeline = sensor.pipeline
    if pipeline is not None:
        wanted = frozenset(ports)
        pipeline.ports = wanted
        pipeline.reassembler.ports = wanted
        if pipeline.content_reassembler is not None:
            pipeline.content_reassembler.ports = wanted
    enforcer = sensor.enforcer
    if enforcer is not None:
        enforcer.verdicts.ports = frozenset(ports)


def _set_hold_max_ms(sensor, ms: int) -> None:
    """The kernel's release timeout of a held segment (its config map: every
    worker writes the same value) and the userland's view of it (late releases)."""
    dp = sensor.datapath
    if dp is not None and dp.maps is not None:
        cfg = dp.config
        cfg.hold_max_ms = ms
        dp.maps.set_config(push=cfg.push, enforce=cfg.enforce, snaplen=cfg.snaplen, hold=cfg.hold, hold_max_ms=ms)
    hold = sensor.feed.hold if sensor.feed is not None else None
    if hold is not None:
        hold.hold_max_ns = ms * 1_000_000

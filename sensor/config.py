"""The sensor's configuration: a TOML file, validated before anything starts.

    config = load("/etc/smtp-sensor/sensor.toml")   # or Config() for the defaults
    config.sensor.interfaces, config.limits.smtp, config.spam_stats.threshold

Tables (``docs/config.example.toml`` documents every key):

* ``[sensor]``: interfaces, namespace, ports, XDP mode, pin folder, rules
  folder, output, state file and snapshot interval.
* ``[limits.smtp]`` / ``[limits.reassembly]`` / ``[limits.defrag]`` / ``[limits.rules]``: overrides of
  the fields of :class:`sensor.smtp.SmtpLimits`, :class:`sensor.stream.reassembly.ReassemblyLimits`,
  :class:`sensor.stream.defrag.DefragLimits` and :class:`sensor.rules.budget.RuleLimits` (what rule
  code may cost), by name.
* ``[stream]``: how the receiving host treats what it is sent (IP fragments,
  checksums, urgent data, overlapping segments): ``defrag_policy`` and
  :class:`sensor.stream.reassembly.ReceiverPolicy`.
* ``[mime]`` and ``[limits.mime]``: the MIME parser (:mod:`sensor.mime`), what it
  extracts, and the fields of :class:`sensor.smtp.limits.MimeLimits`.
* ``[spam_stats]`` and ``[spam_stats.ban]``: every constant of the Bro reject
  statistics script (``shared/seeds/004_7a4976e4f34d1696.txt``) and ours (see
  :mod:`sensor.spamstats`).
* ``[cluster]``: statistics and bans shared by several sensors through Redis
  (:mod:`sensor.cluster`), off by default.

Every mistake is a :class:`ConfigError` (a :class:`SensorError`): one line
naming the file, the table and the key, e.g.
``sensor.toml: [spam_stats] percent: must be an integer 0..100, got 130``.
Unknown tables and keys are errors (with a "did you mean"), never ignored.
The section dataclasses validate themselves the same way when built in code
(``SpamStatsConfig(threshold=5)``), so a test or the lab cannot build a
configuration the file would refuse.  Durations are seconds, as a number or
a string such as ``"90s"``, ``"60m"``, ``"1h"``, ``"1h30m"``, ``"60 mins"``.
Relative paths in a file are relative to the file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from sensor.errors import SensorError
from sensor.kernel import abi
from sensor.rules.budget import RuleLimits
from sensor.smtp.limits import MimeLimits, SmtpLimits
from sensor.stream.defrag import POLICIES as DEFRAG_POLICIES
from sensor.stream.defrag import DefragLimits
from sensor.stream.reassembly import (CHECKSUM_MODES, OVERLAP_POLICIES, URGENT_MODES, ReassemblyLimits,
                                      ReceiverPolicy)

# The one TOML reader of the product (this config, the rules' rules.toml):
# the standard library's from Python 3.11, the tomli package before (the same
# parser and API; pyproject.toml requires it there).
if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = [
    "Config", "SensorConfig", "OutputConfig", "LimitsConfig", "SpamStatsConfig", "StreamConfig", "MimeConfig",
    "ConfigError",
    "load", "loads", "from_dict", "parse_duration", "NOTICE_TYPES",
    "POSSIBLE_SPAM", "POSSIBLE_INTERNAL_SPAM", "STRANGE_REJECT_BEHAVIOR",
]

#: the seed's notice types (``redef enum Notice += {...}``)
POSSIBLE_SPAM = "SMTP_PossibleSpam"
POSSIBLE_INTERNAL_SPAM = "SMTP_PossibleInternalSpam"
STRANGE_REJECT_BEHAVIOR = "SMTP_StrangeRejectBehavior"
NOTICE_TYPES = (POSSIBLE_SPAM, POSSIBLE_INTERNAL_SPAM, STRANGE_REJECT_BEHAVIOR)

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/smtp-sensor") / f"v{abi.ABI_VERSION}"
XDP_MODES = ("auto", "native", "generic")
WINDOWS = ("fixed", "sliding")
IFNAMSIZ = 16
WORKERS_MAX = abi.WORKERS_MAX


class ConfigError(SensorError):
    """A configuration mistake: ``source: [table] key: problem`` on one line."""

    def __init__(self, table: str | None, key: str | None, problem: str, source: str | None = None):
        self.table, self.key, self.problem, self.source = table, key, problem, source
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.source:
            where.append(f"{self.source}:")
        if self.table:
            where.append(f"[{self.table}]")
        if self.key:
            where.append(f"{self.key}:")
        return " ".join(where + [self.problem])

    def located(self, source: str) -> "ConfigError":
        return ConfigError(self.table, self.key, self.problem, source)


class _Bad(Exception):
    """A value's problem, before we know which key it belongs to."""


# ---------------------------------------------------------------- value checks

def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"         # as TOML spells it
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value, lo=None, hi=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"must be an integer{_range(lo, hi)}, got {_show(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _Bad(f"must be an integer{_range(lo, hi)}, got {value}")
    return value


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    return ""


def _number(value, lo=0.0, positive=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(f"must be a number, got {_show(value)}")
    if value < lo or (positive and value <= 0):
        raise _Bad(f"must be {'> 0' if positive else f'>= {lo:g}'}, got {value}")
    return float(value)


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_show(value)}")
    return value


def _str(value, choices=None, empty=False) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_show(value)}")
    if choices is not None and value not in choices:
        raise _Bad(f"must be one of {', '.join(choices)}; got {value!r}")
    if not empty and not value.strip():
        raise _Bad("must not be empty")
    return value


def _path(value) -> Path:
    if isinstance(value, Path):
        return value
    return Path(_str(value))


def _optional(check):
    def inner(value, *args, **kw):
        return None if value is None else check(value, *args, **kw)
    return inner


def _list(value, what: str) -> list:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise _Bad(f"must be a list of {what}, got {_show(value)}")
    return list(value)


_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
          "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)\s*")
_DURATION_HINT = 'a number of seconds or a string like "30s", "60m", "1h", "1h30m"'


def parse_duration(value, *, positive=False) -> float:
    """Seconds from a number or a string such as ``"60m"``, ``"1h30m"``, ``"60 mins"``.

    Raises ValueError with a one-line reason."""
    try:
        return _duration(value, positive=positive)
    except _Bad as exc:
        raise ValueError(str(exc)) from None


def _duration(value, positive=False) -> float:
    if isinstance(value, str):
        pos, total, text = 0, 0.0, value
        if not text.strip():
            raise _Bad(f"must be {_DURATION_HINT}, got {_show(value)}")
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos or m.group(2).lower() not in _UNITS:
                raise _Bad(f"must be {_DURATION_HINT}, got {_show(value)}")
            total += float(m.group(1)) * _UNITS[m.group(2).lower()]
            pos = m.end()
        if pos != len(text):
            raise _Bad(f"must be {_DURATION_HINT}, got {_show(value)}")
        value = total
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(f"must be {_DURATION_HINT}, got {_show(value)}")
    if value < 0 or (positive and value == 0):
        raise _Bad(f"must be {'> 0' if positive else '>= 0'} seconds, got {_show(value)}")
    return float(value)


def _networks(value) -> tuple:
    out = []
    for item in _list(value, 'CIDR prefixes such as "192.0.2.0/24"'):
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise _Bad(f'must be a list of CIDR prefixes such as "192.0.2.0/24", got {_show(item)}')
        try:
            # Zeek's subnet literals: host bits are cleared (10.1.2.3/8 is 10.0.0.0/8)
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise _Bad(f"{item!r} is not a CIDR prefix (e.g. 192.0.2.0/24, 2001:db8::/32, 192.0.2.7)") from None
    return tuple(dict.fromkeys(out))


def _ports(value) -> tuple:
    ports = tuple(_int(p, 1, 65535) for p in _list(value, "ports 1..65535"))
    if not ports:
        raise _Bad("must list at least one port")
    return tuple(dict.fromkeys(ports))


def _interfaces(value) -> tuple:
    names = []
    for name in _list(value, "interface names"):
        name = _str(name)
        if len(name) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
            raise _Bad(f"{name!r} is not an interface name (at most {IFNAMSIZ - 1} characters, no '/' or spaces)")
        names.append(name)
    return tuple(dict.fromkeys(names))


def _reject_codes(value) -> frozenset:
    codes = frozenset(_int(c, 200, 599) for c in _list(value, "reply codes 200..599"))
    if not codes:
        raise _Bad("must list at least one reply code")
    return codes


def _bans(value) -> MappingProxyType:
    if not isinstance(value, (dict, MappingProxyType)):
        raise _Bad(f"must be a table of notice type = TTL, got {_show(value)}")
    out = dict(_DEFAULT_BANS)
    for note, ttl in value.items():
        if note not in NOTICE_TYPES:
            raise ConfigError("spam_stats.ban", None, _unknown(note, NOTICE_TYPES))
        try:
            out[note] = _duration(ttl)
        except _Bad as exc:
            raise ConfigError("spam_stats.ban", note, f"{exc} (0 turns the ban off)") from None
    return MappingProxyType(out)


def _unknown(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(known)})"
    return f'unknown key "{key}"{hint}'


# ---------------------------------------------------------------- sections

def _validate(obj, table: str, checks: dict) -> None:
    """Run each field through its check, storing the normalised value."""
    for name, check in checks.items():
        try:
            object.__setattr__(obj, name, check(getattr(obj, name)))
        except _Bad as exc:
            raise ConfigError(table, name, str(exc)) from None


@dataclass(frozen=True)
class SensorConfig:
    """``[sensor]``: what to attach to and where things go."""

    #: interfaces to attach to (XDP ingress, TC egress); empty: none configured
    interfaces: tuple[str, ...] = ()
    #: network namespace the interfaces live in (None: the sensor's own)
    netns: str | None = None
    #: SMTP server ports, filtered in the kernel and used to orient flows
    ports: tuple[int, ...] = (25, 587)
    #: XDP attach mode
    xdp_mode: str = "auto"
    #: folder under /sys/fs/bpf holding the pinned ban and drop maps
    pin_dir: Path = DEFAULT_PIN_DIR
    #: rules folder (None: no rules)
    rules: Path | None = None
    #: where records go: a file path (appended to), or "-" for stdout
    output: str = "-"
    #: snapshot of the reject statistics and bans (None: nothing persisted)
    state_file: Path | None = None
    #: snapshot of every source ban the kernel holds, restored at start (None: the pins only)
    ban_file: Path | None = None
    #: seconds between snapshots (one is also written at shutdown): what a SIGKILL loses at most
    snapshot_interval: float = 5.0
    #: seconds the shutdown may spend dissecting what is left (the ring, the open flows)
    stop_timeout: float = 1.0
    #: drop and ban in the kernel; false: monitor only (a SPAN port): verdicts are logged, never applied
    enforce: bool = True
    #: worker processes, each with its own event ring (flow-sharded by client address); 0: one per CPU
    workers: int = 0

    def __post_init__(self):
        _validate(self, "sensor", {
            "interfaces": _interfaces,
            "netns": _optional(_str),
            "ports": _ports,
            "xdp_mode": lambda v: _str(v, XDP_MODES),
            "pin_dir": _path,
            "rules": _optional(_path),
            "output": lambda v: str(v) if isinstance(v, Path) else _str(v),
            "state_file": _optional(_path),
            "ban_file": _optional(_path),
            "snapshot_interval": lambda v: _duration(v, positive=True),
            "stop_timeout": lambda v: _duration(v, positive=True),
            "enforce": _bool,
            "workers": lambda v: _int(v, 0, WORKERS_MAX),
        })

    @property
    def worker_count(self) -> int:
        """The workers to run: ``workers``, or one per CPU when it is 0."""
        return self.workers or min(os.cpu_count() or 1, WORKERS_MAX)

    @property
    def output_path(self) -> Path | None:
        """The output file, or None for stdout."""
        return None if self.output == "-" else Path(self.output)


def _limits_check(cls, table: str, label: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def check(value):
        if isinstance(value, cls):
            return value
        if not isinstance(value, (dict, MappingProxyType)):
            raise _Bad(f"must be a table of {label} fields, got {_show(value)}")
        changes = {}
        for name, v in value.items():
            if name not in fields:
                raise ConfigError(table, None, _unknown(name, fields))
            default = fields[name].default
            try:
                if isinstance(default, bool):
                    changes[name] = _bool(v)
                elif isinstance(default, int):
                    changes[name] = _int(v, 1)
                else:
                    changes[name] = _number(v, positive=name in _POSITIVE_LIMITS)
            except _Bad as exc:
                raise ConfigError(table, name, str(exc)) from None
        return cls(**changes)
    return check


# float limits for which 0 makes no sense (others, such as delays, or a
# memory limit where 0 is "none", may be 0)
_POSITIVE_LIMITS = {"idle_timeout", "budget_ms", "max_budget_ms", "import_ms", "strike_window", "timeout"}


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits.smtp]``, ``[limits.reassembly]``, ``[limits.defrag]`` and ``[limits.rules]``:
    named limits, overridden by name."""

    smtp: SmtpLimits = field(default_factory=SmtpLimits)
    reassembly: ReassemblyLimits = field(default_factory=ReassemblyLimits)
    defrag: DefragLimits = field(default_factory=DefragLimits)
    rules: RuleLimits = field(default_factory=RuleLimits)
    mime: MimeLimits = field(default_factory=MimeLimits)

    def __post_init__(self):
        _validate(self, "limits", {
            "mime": _limits_check(MimeLimits, "limits.mime", "sensor.smtp.limits.MimeLimits"),
            "smtp": _limits_check(SmtpLimits, "limits.smtp", "sensor.smtp.SmtpLimits"),
            "reassembly": _limits_check(ReassemblyLimits, "limits.reassembly", "sensor.stream.reassembly.ReassemblyLimits"),
            "defrag": _limits_check(DefragLimits, "limits.defrag", "sensor.stream.defrag.DefragLimits"),
            "rules": _limits_check(RuleLimits, "limits.rules", "sensor.rules.budget.RuleLimits"),
        })


_DEFAULT_BANS = MappingProxyType({
    POSSIBLE_SPAM: 3600.0,
    POSSIBLE_INTERNAL_SPAM: 3600.0,
    STRANGE_REJECT_BEHAVIOR: 0.0,     # a known mail server: tell, never cut it off by default
})


@dataclass(frozen=True)
class SpamStatsConfig:
    """``[spam_stats]``: the seed's constants and ours (see :mod:`sensor.spamstats`)."""

    #: count and check at all
    enabled: bool = True
    #: seed ``spam_threshold``: connections in a window before a host is judged
    threshold: int = 300
    #: seed ``spam_percent``: rejected share (integer percent, rounded down) that raises a notice
    percent: int = 30
    #: seed ``spam_inspect_period``: window length, seconds
    period: float = 3600.0
    #: seconds between periodic checks (None: ``period``, as in the seed)
    check_interval: float | None = None
    #: seed ``smtp_reject_codes``
    reject_codes: frozenset = frozenset({550, 551, 553, 554})
    #: seed ``local_mail``: known mail servers (SMTP_StrangeRejectBehavior)
    local_mail: tuple = ()
    #: Zeek's ``Site::local_nets`` (``is_local_addr``): SMTP_PossibleInternalSpam
    local_networks: tuple = ()
    #: "fixed": a window of ``period`` from a host's first sighting (the seed's
    #: create_expire); "sliding": the last ``period``, in ``sliding_buckets`` steps
    window: str = "fixed"
    #: buckets of a sliding window (its resolution is period / sliding_buckets)
    sliding_buckets: int = 12
    #: one notice per host and type within this many seconds (None: ``period``)
    suppress_for: float | None = None
    #: hosts tracked at once; past it one of the least active is evaluated and evicted
    max_hosts: int = 100_000
    #: recipients sampled per host (and per connection) for the notice; more are counted, not kept
    max_recipients: int = 10
    #: distinct reject replies sampled per host for the notice
    max_samples: int = 5
    #: hosts never banned (they still get notices)
    allow: tuple = ()
    #: ``[spam_stats.ban]``: notice type -> ban TTL in seconds (0: no ban)
    ban: MappingProxyType = field(default_factory=lambda: _DEFAULT_BANS)

    def __post_init__(self):
        _validate(self, "spam_stats", {
            "enabled": _bool,
            "threshold": lambda v: _int(v, 1),
            "percent": lambda v: _int(v, 0, 100),
            "period": lambda v: _duration(v, positive=True),
            "check_interval": _optional(lambda v: _duration(v, positive=True)),
            "reject_codes": _reject_codes,
            "local_mail": _networks,
            "local_networks": _networks,
            "window": lambda v: _str(v, WINDOWS),
            "sliding_buckets": lambda v: _int(v, 1, 3600),
            "suppress_for": _optional(_duration),
            "max_hosts": lambda v: _int(v, 1),
            "max_recipients": lambda v: _int(v, 0),
            "max_samples": lambda v: _int(v, 0),
            "allow": _networks,
            "ban": _bans,
        })

    @property
    def check_every(self) -> float:
        """Seconds between periodic checks: ``check_interval``, else ``period`` (the seed)."""
        return self.period if self.check_interval is None else self.check_interval

    @property
    def suppression(self) -> float:
        """Seconds a notice suppresses the next one: ``suppress_for``, else ``period``."""
        return self.period if self.suppress_for is None else self.suppress_for

    def ban_ttl(self, note: str) -> float:
        """Seconds a notice of this type bans its host for (0: no ban)."""
        return self.ban.get(note, 0.0)


@dataclass(frozen=True)
class StreamConfig:
    """``[stream]``: how the sensor models the receiving host's view of the traffic."""

    #: how overlapping IP fragments are resolved (sensor.stream.defrag): "linux"
    #: discards the datagram as Linux does; "first", "last", "bsd", "windows",
    #: "solaris" as Suricata's defrag policies of those names
    defrag_policy: str = "linux"
    #: "auto", "yes" or "no" (Suricata's checksum-validation): segments with a
    #: wrong TCP checksum are ignored, as the receiving stack discards them
    checksum_validation: str = "auto"
    #: "linux": the urgent byte leaves the stream (Linux's default); "inline": it stays
    urgent: str = "linux"
    #: which copy of overlapping TCP bytes the target keeps: linux, bsd, windows, first, last
    overlap_policy: str = "linux"

    def __post_init__(self):
        _validate(self, "stream", {
            "defrag_policy": lambda v: _str(v, DEFRAG_POLICIES),
            "checksum_validation": lambda v: _str(v, CHECKSUM_MODES),
            "urgent": lambda v: _str(v, URGENT_MODES),
            "overlap_policy": lambda v: _str(v, OVERLAP_POLICIES),
        })

    @property
    def receiver(self) -> ReceiverPolicy:
        """The TCP part, for the reassembly."""
        return ReceiverPolicy(self.checksum_validation, self.urgent, self.overlap_policy)


HOLD_MODES = ("commit", "off")


@dataclass(frozen=True)
class EnforceConfig:
    """``[enforce]``: how verdicts are made to hold in the kernel."""

    #: "commit": the kernel holds a client segment that can complete a message
    #: (end of DATA) until userland has judged it, so a verdict stops the
    #: message before the MTA commits it; "off": verdicts act on what follows
    hold: str = "commit"
    #: milliseconds after which the kernel lets a held segment pass by itself
    #: (fail open: a slow or stopped control plane delays mail, never loses it)
    hold_max_ms: int = 400
    #: put a released segment into the stack at once instead of waiting for
    #: the client to resend it (Linux 5.18+; off: the client's retransmission)
    inject: bool = True

    def __post_init__(self):
        _validate(self, "enforce", {
            "hold": lambda v: _str(v, HOLD_MODES),
            "hold_max_ms": lambda v: _int(v, 1, 4000),
            "inject": _bool,
        })


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")


def _schemes(value) -> tuple:
    out = []
    for item in _list(value, 'URL schemes such as "http"'):
        item = _str(item)
        if item.endswith("://"):
            item = item[:-3]
        if not _URL_SCHEME.match(item):
            raise _Bad(f"{item!r} is not a URL scheme (letters, digits, + - .; such as \"https\")")
        out.append(item.lower())
    return tuple(dict.fromkeys(out))


_HASH_NAMES = ("md5", "sha1", "sha256")


def _hashes(value) -> tuple:
    out = []
    for item in _list(value, 'hash names ("md5", "sha1", "sha256")'):
        if item not in _HASH_NAMES:
            raise _Bad(f"must list hash names among {', '.join(_HASH_NAMES)}; got {item!r}")
        out.append(item)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class MimeConfig:
    """``[mime]``: the MIME parser (``sensor.mime``) and what it extracts."""

    #: parse messages into entities: attachments, hashes, URLs, files records
    #: and the MIME anomalies (off: the smtp record has none of them)
    enabled: bool = True
    #: look for URLs in the text entities (Suricata's extract-urls)
    extract_urls: bool = True
    #: the schemes looked for, each followed by "://" (Suricata's
    #: extract-urls-schemes, whose default is http only)
    extract_urls_schemes: tuple = ("http",)
    #: keep the scheme in the smtp record's urls (Suricata's log-url-scheme;
    #: rules always get the whole URL)
    log_url_scheme: bool = False
    #: the md5 of each message's body as sent, in the smtp record's body_md5
    #: (Suricata's body-md5, off by default there too: one more pass over
    #: every octet, about 2 ms per MB)
    body_md5: bool = False
    #: the hashes of each entity's decoded octets in its files record and
    #: Attachment (Zeek's hash-all-files: all three); fewer cost less
    hashes: tuple = ("md5", "sha1", "sha256")

    def __post_init__(self):
        _validate(self, "mime", {
            "hashes": _hashes,
            "body_md5": _bool,
            "enabled": _bool,
            "extract_urls": _bool,
            "extract_urls_schemes": _schemes,
            "log_url_scheme": _bool,
        })


CLUSTER_MODES = ("single", "cluster")


def _redis_url(value) -> str:
    url = _str(value)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise _Bad(f"must be a redis://, rediss:// (TLS) or unix:// URL, got {_show(value)}")
    return url


def _sensor_name(value) -> str:
    name = _str(value)
    if len(name) > 64 or not re.fullmatch(r"[A-Za-z0-9_.@-]+", name):
        raise _Bad(f"must be 1..64 letters, digits or _ . @ -, got {_show(value)}")
    return name


def _default_sensor_name() -> str:
    import socket
    return re.sub(r"[^A-Za-z0-9_.@-]", "-", socket.gethostname())[:64] or "sensor"


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: several sensors sharing reject statistics and bans through
    Redis (see :mod:`sensor.cluster`).  Off by default: one sensor alone."""

    #: share statistics and bans at all
    enabled: bool = False
    #: the Redis server: redis://[user@]host:port/db, rediss:// for TLS, unix:///path
    url: str = "redis://127.0.0.1:6379/0"
    #: "single": one Redis server (or a primary); "cluster": a Redis Cluster,
    #: ``url`` being any one of its nodes (redis.cluster.RedisCluster finds the others)
    mode: str = "single"
    #: the password (AUTH); prefer ``password_file``
    password: str | None = None
    #: a file holding the password (its first line)
    password_file: Path | None = None
    #: rediss://: the CA bundle that signs the server's certificate (None: the system's)
    tls_ca_file: Path | None = None
    #: rediss://: a client certificate and its key, for servers that ask for one
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: rediss://: check the server's certificate and name
    tls_verify: bool = True
    #: this sensor's name in the shared records (bans say who made them); None: the host name
    sensor_name: str | None = None
    #: prefix of every key this product writes (several fleets can share one Redis)
    key_prefix: str = "smtp-sensor:"
    #: seconds a Redis command may take before the server counts as unreachable
    timeout: float = 1.0
    #: counts, claims and bans waiting for Redis at most (past it: counted, dropped)
    max_pending: int = 100_000
    #: a ban from another sensor lasts this many seconds at most, whatever it says
    max_remote_ban: float = 86400.0

    def __post_init__(self):
        _validate(self, "cluster", {
            "enabled": _bool,
            "url": _redis_url,
            "mode": lambda v: _str(v, CLUSTER_MODES),
            "password": _optional(lambda v: _str(v)),
            "password_file": _optional(_path),
            "tls_ca_file": _optional(_path),
            "tls_cert_file": _optional(_path),
            "tls_key_file": _optional(_path),
            "tls_verify": _bool,
            "sensor_name": _optional(_sensor_name),
            "key_prefix": lambda v: _str(v, empty=True),
            "timeout": lambda v: _duration(v, positive=True),
            "max_pending": lambda v: _int(v, 1),
            "max_remote_ban": lambda v: _duration(v, positive=True),
        })
        if self.password is not None and self.password_file is not None:
            raise ConfigError("cluster", "password", "give password or password_file, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("cluster", "tls_cert_file", "give tls_cert_file and tls_key_file together")

    @property
    def name(self) -> str:
        """This sensor's name: ``sensor_name``, else the host name."""
        return self.sensor_name if self.sensor_name is not None else _default_sensor_name()

    def secret(self) -> str | None:
        """The password: ``password``, or the first line of ``password_file``."""
        if self.password_file is None:
            return self.password
        try:
            lines = self.password_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("cluster", "password_file",
                              f"cannot read {self.password_file}: {getattr(exc, 'strerror', None) or exc}") from None
        if not lines or not lines[0]:
            raise ConfigError("cluster", "password_file", f"{self.password_file} is empty")
        return lines[0]

OUTPUT_TYPES = ("native", "eve", "zeek")
#: the keys of ``[[output]]`` that say where it writes (exactly one per table)
OUTPUT_DESTINATIONS = ("path", "directory", "stdout", "syslog", "socket")
#: what ``event_types`` may name: the native record types, and EVE's name of ``files``
RECORD_TYPES = ("smtp", "files", "fileinfo", "anomaly", "alert", "drop", "notice")
ZEEK_FORMATS = ("tsv", "json")
SOCKET_TYPES = ("dgram", "stream")
SYSLOG_FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
                     "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7")


def _event_types(value) -> tuple:
    out = []
    for item in _list(value, "record types"):
        if item not in RECORD_TYPES:
            raise _Bad(_unknown(str(item), RECORD_TYPES).replace("key", "event type", 1))
        out.append(item)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class OutputConfig:
    """``[[output]]``: one output (``sensor.outputs``): its type, where it
    writes (one of ``path``, ``directory``, ``stdout``, ``syslog``,
    ``socket``) and which records."""

    #: "native" (the records as they are), "eve" (Suricata's EVE JSON), "zeek" (Zeek's logs)
    type: str = "native"
    #: a file, appended to (native, eve)
    path: Path | None = None
    #: a folder: Zeek's logs in it, or records.json (native) / eve.json (eve)
    directory: Path | None = None
    #: standard output (native, eve)
    stdout: bool = False
    #: the local syslog, one message a record (native, eve)
    syslog: bool = False
    #: a Unix socket to send each record to (native, eve)
    socket: Path | None = None
    #: the record types written (smtp, files, anomaly, alert, drop, notice; eve's "fileinfo"
    #: is "files"); empty: all
    event_types: tuple = ()
    #: zeek: "tsv" (Zeek's ASCII logs) or "json" (LogAscii::use_json)
    format: str = "tsv"
    #: zeek: seconds between rotations (unset: only on SIGUSR1)
    rotate_interval: float | None = None
    #: socket: "dgram" (one datagram a record) or "stream"
    socket_type: str = "dgram"
    #: syslog: the facility
    facility: str = "local5"
    #: eve: write Suricata's in_iface (live, with one interface); its schema has no such key
    in_iface: bool = False

    def __post_init__(self):
        _validate(self, "output", {
            "in_iface": _bool,
            "type": lambda v: _str(v, OUTPUT_TYPES),
            "path": _optional(_path),
            "directory": _optional(_path),
            "stdout": _bool,
            "syslog": _bool,
            "socket": _optional(_path),
            "event_types": _event_types,
            "format": lambda v: _str(v, ZEEK_FORMATS),
            "rotate_interval": _optional(lambda v: _duration(v, positive=True)),
            "socket_type": lambda v: _str(v, SOCKET_TYPES),
            "facility": lambda v: _str(v, SYSLOG_FACILITIES),
        })
        given = [k for k in OUTPUT_DESTINATIONS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ConfigError("output", None, f"give exactly one of {', '.join(OUTPUT_DESTINATIONS)}"
                              + (f", not {' and '.join(given)}" if given else ""))
        if self.type == "zeek" and given != ["directory"]:
            raise ConfigError("output", given[0], 'type = "zeek" writes one file per log: give a directory')

    @property
    def destination(self) -> str:
        """Which destination key it has."""
        return next(k for k in OUTPUT_DESTINATIONS if getattr(self, k) not in (None, False))


def _outputs(value) -> tuple:
    if isinstance(value, (dict, MappingProxyType)) or not isinstance(value, (list, tuple)):
        raise ConfigError(None, "output", "must be an array of tables ([[output]]), one per output")
    fields = [f.name for f in dataclasses.fields(OutputConfig)]
    out, value = [], list(value)
    for n, table in enumerate(value, 1):
        if isinstance(table, OutputConfig):
            out.append(table)
            continue
        try:
            if not isinstance(table, dict):
                raise ConfigError("output", None, f"must be a table, got {_show(table)}")
            for k in table:
                if k not in fields:
                    raise ConfigError("output", None, _unknown(k, fields))
            out.append(OutputConfig(**table))
        except ConfigError as exc:       # which of the [[output]] tables: "[output #2]"
            raise ConfigError(f"output #{n}" if len(value) > 1 else "output", exc.key, exc.problem) from None
    return tuple(out)


@dataclass(frozen=True)
class Config:
    sensor: SensorConfig = field(default_factory=SensorConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    spam_stats: SpamStatsConfig = field(default_factory=SpamStatsConfig)
    enforce: EnforceConfig = field(default_factory=EnforceConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    mime: MimeConfig = field(default_factory=MimeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    #: ``[[output]]`` tables (empty: one native output to ``[sensor] output``)
    outputs: tuple = ()
    #: the file it was read from (None: defaults or built in code)
    source: Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "outputs", _outputs(self.outputs))

    @property
    def holds_commits(self) -> bool:
        """Whether the kernel holds commits: ``hold = "commit"``, enforcing,
        and something that can drop a flow (rules, or the statistics' bans)."""
        return (self.enforce.hold == "commit" and self.sensor.enforce
                and (self.sensor.rules is not None or self.spam_stats.enabled))


_SECTIONS = {"sensor": SensorConfig, "limits": LimitsConfig, "spam_stats": SpamStatsConfig,
             "enforce": EnforceConfig, "stream": StreamConfig,
             "mime": MimeConfig, "cluster": ClusterConfig}


# ---------------------------------------------------------------- loading

def load(path) -> Config:
    """Read and validate a TOML config file; every problem is a one-line ConfigError."""
    return loads(read_text(path), source=Path(path))


def read_text(path) -> str:
    """A config file's text (``loads`` it); a file that cannot be read is a one-line ConfigError."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(None, None, f"cannot read the config: {exc.strerror or exc}", str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(None, None, f"not UTF-8 text (byte {exc.start})", str(path)) from None


def loads(text: str, source=None) -> Config:
    """Parse TOML text (``source``: the name errors give, and the folder relative paths start from)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, None, f"not valid TOML: {exc}", str(source) if source else None) from None
    return from_dict(data, source)


def from_dict(data: dict, source=None) -> Config:
    """A Config from already parsed TOML (a dict of tables)."""
    name = str(source) if source is not None else None
    try:
        return _from_dict(data, Path(source) if source is not None else None)
    except ConfigError as exc:
        raise exc.located(name) if name else exc from None


def _from_dict(data: dict, source: Path | None) -> Config:
    sections = {}
    for key, value in data.items():
        if key == "output":
            sections["outputs"] = value
            continue
        if key not in _SECTIONS:
            raise ConfigError(None, None, _unknown(key, _SECTIONS).replace("key", "table", 1))
        if not isinstance(value, dict):
            raise ConfigError(None, key, f"must be a table ([{key}]), got {_show(value)}")
        cls = _SECTIONS[key]
        known = [f.name for f in dataclasses.fields(cls)]
        for k in value:
            if k not in known:
                raise ConfigError(key, None, _unknown(k, known))
        sections[key] = cls(**value)
    config = Config(**sections, source=source)
    if source is not None:
        config = dataclasses.replace(config, sensor=_relative_to(config.sensor, source.parent),
                                     cluster=_files_relative_to(config.cluster, source.parent),
                                     outputs=tuple(_output_relative_to(o, source.parent) for o in config.outputs))
    return config


def _output_relative_to(output: OutputConfig, base: Path) -> OutputConfig:
    changes = {name: base / getattr(output, name) for name in ("path", "directory", "socket")
               if getattr(output, name) is not None and not getattr(output, name).is_absolute()}
    return dataclasses.replace(output, **changes) if changes else output


def _relative_to(sensor: SensorConfig, base: Path) -> SensorConfig:
    changes = {}
    for name in ("pin_dir", "rules", "state_file", "ban_file"):
        value = getattr(sensor, name)
        if value is not None and not value.is_absolute():
            changes[name] = base / value
    if sensor.output != "-" and not Path(sensor.output).is_absolute():
        changes["output"] = str(base / sensor.output)
    return dataclasses.replace(sensor, **changes) if changes else sensor


def _files_relative_to(cluster: ClusterConfig, base: Path) -> ClusterConfig:
    changes = {name: base / value for name in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
               if (value := getattr(cluster, name)) is not None and not value.is_absolute()}
    return dataclasses.replace(cluster, **changes) if changes else cluster

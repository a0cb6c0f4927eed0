"""Counters: declared once with a help text each, cheap to increment, read by one walk.

A component declares what it counts::

    class PipelineCounters(Counters):
        frames = counter("frames dissected")
        not_segments = counter("frames not dissected, by reason", by="reason")

and keeps one instance (``self.counters = PipelineCounters()``).  On the hot
path a counter is a plain ``__slots__`` attribute, ``counters.frames += 1``:
the cheapest increment CPython has.  ``by``: the counter is a dict, label
value -> count.  ``read``: a value computed when it is read, ``read(owner)``
(``owner`` given to the constructor), for what the component already holds
(a length, a kernel reading); ``gauge`` declares a value that goes up and
down; ``histogram`` a distribution (a ``Histogram``: ``observe(value)``).

Whoever shows counters walks ``Group``s (a counters object and where it goes)
and reads each through ``as_dict()`` (``as_tree``: the status, the stats log
line) or ``readings()`` (the Prometheus families, ``sensor.service.metrics``):
no counter is listed a second time.  A field's metric name is the class's
``METRIC_PREFIX`` + its name unless it names its own (``metric``); ``labels``
are constant labels of its samples, so counters of several components can
share one family (``bans{by="rules"}``, ``bans{by="manual"}``).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, NamedTuple

__all__ = ["Counters", "Field", "Group", "Histogram", "counter", "gauge", "histogram", "as_tree", "add_counts",
           "COMBINE"]


class Field:
    """One declared counter or gauge (the class attribute, until the class is made)."""

    __slots__ = ("name", "help", "kind", "by", "metric", "labels", "read", "buckets", "combine")

    def __init__(self, help: str, kind: str, *, by: str | None = None, metric: str | None = None,
                 labels: dict | None = None, read: Callable | None = None, buckets: tuple = (),
                 combine: str = "sum"):
        self.name = ""                       # set by the class that declares it
        self.help = help
        self.kind = kind                     # "counter", "gauge" or "histogram"
        self.by = by
        self.metric = metric
        self.labels = dict(labels or {})
        self.read = read
        self.buckets = tuple(buckets)        # a histogram's upper bounds, ascending
        self.combine = combine               # how the values of several workers make one: COMBINE

    def __repr__(self):
        return f"<{self.kind} {self.name}>"


def counter(help: str, *, by: str | None = None, metric: str | None = None,
            labels: dict | None = None, read: Callable | None = None) -> Field:
    """A count that only goes up (a dict of counts with ``by``)."""
    return Field(help, "counter", by=by, metric=metric, labels=labels, read=read)


#: how a gauge's values in several worker processes make the sensor's: their
#: sum (what each counts of its own hosts), the largest (the same value in
#: every worker, an age, the fullest ring) or the smallest (1 while all are up)
COMBINE = ("sum", "max", "min")


def gauge(help: str, *, metric: str | None = None, labels: dict | None = None,
          read: Callable | None = None, combine: str = "sum") -> Field:
    """A value that goes up and down (``read`` it, or set it); ``combine``:
    how several workers' values make one (``COMBINE``; counters are summed)."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    return Field(help, "gauge", metric=metric, labels=labels, read=read, combine=combine)


def histogram(help: str, buckets: tuple, *, metric: str | None = None, labels: dict | None = None) -> Field:
    """A distribution of observed values, counted in ``buckets`` (upper
    bounds, ascending; +Inf is implied), with their sum and count."""
    return Field(help, "histogram", metric=metric, labels=labels, buckets=tuple(sorted(buckets)))


class Histogram:
    """The value of a ``histogram`` field: counts per bucket (not
    cumulative), their sum and count.  ``observe`` is a bisect and three adds."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), Prometheus's buckets, +Inf last."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts):
            total += n
            out.append((bound, total))
        return out

    def as_dict(self) -> dict:
        return {"count": self.count, "sum": round(self.sum, 9),
                "buckets": dict(self.cumulative())}


class _Declared(type):
    """Turns the ``Field`` class attributes into slots (those with ``read``:
    properties) and ``FIELDS``, name -> Field in declaration order, inherited
    ones first."""

    def __new__(mcs, name, bases, ns):
        fields: dict[str, Field] = {}
        for base in bases:
            fields.update(getattr(base, "FIELDS", {}))
        own = {k: v for k, v in ns.items() if isinstance(v, Field)}
        for key, field in own.items():
            field.name = key
            fields[key] = field
            if field.read is None:
                del ns[key]
            else:
                ns[key] = property(lambda self, read=field.read: read(self._owner), doc=field.help)
        ns["__slots__"] = tuple(ns.get("__slots__", ())) + tuple(k for k, f in own.items() if f.read is None)
        ns["FIELDS"] = fields
        return super().__new__(mcs, name, bases, ns)


class Counters(metaclass=_Declared):
    """Base of every component's counters: subclasses declare ``counter()`` and ``gauge()`` fields."""

    __slots__ = ("_owner",)
    #: the metric name of a field that does not name its own: this + its name
    METRIC_PREFIX = ""

    def __init__(self, owner=None):
        self._owner = owner
        for field in self.FIELDS.values():
            if field.read is None:
                setattr(self, field.name, Histogram(field.buckets) if field.kind == "histogram"
                        else {} if field.by else 0)

    def readings(self):
        """(field, value) of every field; a ``by`` field's value is a dict."""
        for field in self.FIELDS.values():
            yield field, getattr(self, field.name)

    def as_dict(self) -> dict:
        return {f.name: dict(v) if f.by else v.as_dict() if isinstance(v, Histogram) else v
                for f, v in self.readings()}

    def update(self, values) -> "Counters":
        """Set the stored fields named in ``values`` (a mapping; other names are
        ignored): a snapshot restored, a reading taken elsewhere (the kernel's)."""
        for name, value in values.items():
            field = self.FIELDS.get(name)
            if field is not None and field.read is None and field.kind != "histogram":
                setattr(self, name, dict(value) if field.by else value)
        return self

    @classmethod
    def metric_name(cls, field: Field) -> str:
        return field.metric or cls.METRIC_PREFIX + field.name

    def __repr__(self):
        return f"<{type(self).__name__} {self.as_dict()}>"


class Group(NamedTuple):
    """One counters object in a walk: where its values go in a status tree
    (``path``: () the top level, ("pipeline",) a key of it; None: not in the
    tree) and the labels every one of its metrics carries (e.g. a rule id)."""

    path: tuple | None
    counters: Counters
    labels: tuple = ()          # ((name, value), ...)


def as_tree(groups) -> dict:
    """The values of ``groups`` as nested dicts, by their paths (groups on the
    same path share its dict)."""
    tree: dict = {}
    for group in groups:
        if group.path is None:
            continue
        node = tree
        for key in group.path:
            node = node.setdefault(key, {})
        node.update(group.counters.as_dict())
    return tree


def add_counts(total: dict, more: dict) -> dict:
    """Add the counts of ``more`` into ``total`` (both ``as_dict()`` shapes:
    numbers, and dicts of them, nested); returns ``total``."""
    for key, value in more.items():
        if isinstance(value, dict):
            add_counts(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total

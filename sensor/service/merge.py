"""The answers of several workers as one: what the supervisor's control
socket says for all of them (sensor.service.supervisor).

Counters are summed (each worker counts its own clients' traffic, so the sums
are the sensor's); rows (flows, hosts) are concatenated and sorted as one
worker sorts them; lists of the same shape (the rules, which every worker
loads alike) are merged element by element.
"""

from __future__ import annotations

__all__ = ["sum_trees", "merge_flows", "merge_stats", "merge_bans", "merge_reload"]

#: keys of a worker's status that are not summed: the first worker's value is kept
FIRST_ONLY = frozenset({"pid", "interfaces", "ports", "metrics", "hook", "file", "id", "rev", "disabled"})
#: keys whose largest value is the sensor's (ages, times)
LARGEST = frozenset({"uptime", "last_reload_age"})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sum_trees(trees: list, key: str | None = None):
    """The trees (dicts of numbers, dicts, lists) as one: numbers summed (or
    the largest, for LARGEST keys), dicts merged key by key, lists of one
    length element by element; anything else: the first tree's value."""
    present = [t for t in trees if t is not None]
    if not present:
        return None
    first = present[0]
    if key in FIRST_ONLY:
        return first
    if all(_number(t) for t in present):
        return max(present) if key in LARGEST else _round(sum(present))
    if all(isinstance(t, dict) for t in present):
        keys = list(dict.fromkeys(k for t in present for k in t))
        return {k: sum_trees([t.get(k) for t in present], k) for k in keys}
    if all(isinstance(t, list) for t in present) and len({len(t) for t in present}) == 1:
        return [sum_trees(list(items), key) for items in zip(*present)]
    return first


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


def merge_flows(answers: dict[int, list], limit: int) -> list:
    """Every worker's open flows, each row with its worker, oldest first."""
    rows = [{**row, "worker": worker} for worker, flows in sorted(answers.items()) for row in flows]
    rows.sort(key=lambda r: -r.get("age", 0))
    return rows[:limit]


def merge_stats(answers: dict[int, dict], limit: int) -> dict:
    """The reject statistics of disjoint hosts: rows concatenated and sorted
    as one worker sorts them, counts summed."""
    reports = [answers[w] for w in sorted(answers)]
    hosts = [{**row, "worker": w} for w in sorted(answers) for row in answers[w]["hosts"]]
    hosts.sort(key=lambda r: (-r["total"], r["host"]))
    return {"hosts": hosts[:limit], "tracked": sum(r["tracked"] for r in reports),
            "thresholds": reports[0]["thresholds"], "counters": sum_trees([r["counters"] for r in reports])}


def merge_bans(answers: dict[int, list]) -> list:
    """The kernel's bans (one table, the same from every worker), each with
    the note the worker that made it keeps."""
    rows: dict[str, dict] = {}
    for worker in sorted(answers):
        for row in answers[worker]:
            seen = rows.setdefault(row["target"], row)
            if "note" in row and "note" not in seen:
                seen["note"] = row["note"]
    return list(rows.values())


def merge_reload(answers: dict[int, dict]) -> dict:
    first = answers[min(answers)]
    errors = {}
    for answer in answers.values():
        errors.update(answer.get("errors", {}))
    out = {"changed": any(a.get("changed") for a in answers.values()), "rules": first.get("rules", []),
           "errors": errors, "workers": len(answers)}
    if "config_changed" in first:
        out["config_changed"] = first["config_changed"]
    return out

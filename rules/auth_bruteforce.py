"""Brute force and password spraying on the submission port: failed AUTH.

Two alerts, settings in rules.toml ([auth_bruteforce]):

* ``auth_bruteforce.connection``: one connection with ``per_connection``
  failed AUTH exchanges (default 3): a client trying password after password;
  one alert per connection.
* ``auth_bruteforce.client``: one client address with ``per_client`` failed
  exchanges (default 10) within ``window`` seconds (default 600), however many
  connections they came in: spraying one password over many accounts, one
  try per connection, looks like this.  One alert per client per window.

A failure is an exchange whose credentials the server refused (outcome
``failure``, 535, or ``temporary``, 454: ``sensor.smtp.auth``); a cancelled
or refused exchange (504 unknown mechanism) is not.  Only connections to
``ports`` (default [587]) count.  The time is the events' (capture time in a
replay).  In the manner of Zeek's ssh detect-bruteforcing: per source, a
threshold per window, a few samples in the alert, an ignore list of subnets
(``ignore``), bounded state (``max_clients`` tracked, the oldest forgotten).
``ban_seconds`` above 0 also bans the client that far (default 0: alert only).
Credentials never appear: the AUTH events hold none.
"""

import ipaddress
from collections import OrderedDict, deque

from sensor.rules import alert, config, hooks, rule

# client address -> deque of (ts, connection uid) of its failures in the window
_failures: "OrderedDict[str, deque]" = OrderedDict()
# client address -> ts of its last alert (one per window)
_alerted: dict = {}


def _settings():
    c = config()
    return (int(c.get("per_connection", 3)), int(c.get("per_client", 10)),
            float(c.get("window", 600)), frozenset(int(p) for p in c.get("ports", [587])),
            int(c.get("max_clients", 10000)), float(c.get("ban_seconds", 0)), c.get("ignore", []))


def _ignored(addr: str, nets) -> bool:
    if not nets:
        return False
    ip = ipaddress.ip_address(addr)
    return any(ip in ipaddress.ip_network(n, strict=False) for n in nets)


@rule(hooks.auth, id="auth_bruteforce.connection", rev=1)
def failures_in_one_connection(flow, auth):
    per_connection, _pc, _w, ports, _m, ban_seconds, ignore = _settings()
    if flow.resp_p not in ports or flow.auth is None or auth.outcome not in ("failure", "temporary"):
        return
    if flow.auth.failures == per_connection and not _ignored(flow.orig_h, ignore):
        alert(description=f"{flow.auth.failures} failed AUTH {auth.mechanism} exchanges in one "
              f"connection (brute force)", severity="high", confidence="high",
              method="AUTH final replies", auth_failures=flow.auth.failures,
              auth_mechanism=auth.mechanism, auth_code=auth.code)
        if ban_seconds > 0:
            flow.ban_source(ttl=ban_seconds)


@rule(hooks.auth, id="auth_bruteforce.client", rev=1)
def failures_of_one_client(flow, auth):
    _pc, per_client, window, ports, max_clients, ban_seconds, ignore = _settings()
    if flow.resp_p not in ports or auth.outcome not in ("failure", "temporary"):
        return
    client = flow.orig_h
    if _ignored(client, ignore):
        return
    now = auth.ts
    seen = _failures.pop(client, None)
    if seen is None:
        seen = deque()
        while len(_failures) >= max_clients:
            old, _ = _failures.popitem(last=False)
            _alerted.pop(old, None)
    _failures[client] = seen                       # most recent last
    seen.append((now, flow.uid))
    while seen and seen[0][0] <= now - window:
        seen.popleft()
    last = _alerted.get(client)
    if len(seen) >= per_client and (last is None or now - last >= window):
        _alerted[client] = now
        connections = list(dict.fromkeys(uid for _, uid in seen))
        alert(description=f"{len(seen)} failed AUTH exchanges from {client} in "
              f"{len(connections)} connections within {window:g} s (brute force or password "
              f"spraying)", severity="high", confidence="medium", method="AUTH final replies per client",
              sources=[client], auth_failures=len(seen), connections=len(connections),
              samples=connections[:5])
        if ban_seconds > 0:
            flow.ban_source(ttl=ban_seconds)

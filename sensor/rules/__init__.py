"""Haka-style Python rules: hooks on the dissector's events, alerts, and
verdicts enforced in the kernel.  A rule file imports what it needs from here::

    from sensor.rules import rule, hooks, alert, config, search

``open_private(path, "ab")`` opens a file a rule writes (a dump), created 0600.

See docs/rules.md for every hook, argument and action.
"""

from sensor.files import open_private
from sensor.rules.api import MATCH_LIMIT, SEVERITIES, Hook, Rule, RuleError, alert, config, hooks, rule, search

__all__ = ["rule", "hooks", "alert", "config", "search", "open_private", "Hook", "Rule", "RuleError",
           "MATCH_LIMIT", "SEVERITIES"]

"""Haka-style Python rules: hooks on the dissector's events, alerts, and
verdicts enforced in the kernel.  A rule file imports what it needs from here::

    from sensor.rules import rule, hooks, alert, config, search

See docs/rules.md for every hook, argument and action.
"""

from sensor.rules.api import MATCH_LIMIT, SEVERITIES, Hook, Rule, RuleError, alert, config, hooks, rule, search

__all__ = ["rule", "hooks", "alert", "config", "search", "Hook", "Rule", "RuleError",
           "MATCH_LIMIT", "SEVERITIES"]

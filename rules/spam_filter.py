"""Spam filter (the Haka seed's first rule, without its bugs).

A MAIL FROM whose address is malformed raises "malformed email address"; one
from a banned domain raises "forbidden mail domain"; both drop the connection
in the kernel.  Every other sender passes, and the null sender <> is legal.
Banned domains come from rules.toml ([spam_filter] banned_domains), matched
case-insensitively; subdomains too when match_subdomains is true.
"""

from sensor.rules import alert, config, hooks, rule


@rule(hooks.command, id="spam_filter.mail_from", rev=2)
def spam_filter(flow, command):
    if command.verb != "MAIL":
        return
    sender = flow.transaction.mailfrom
    if sender == "":                                   # <>: bounces are legal
        return
    local, at, domain = (sender or "").rpartition("@")
    if not at or not local or not domain:
        alert(description="malformed email address", severity="low", method="MAIL FROM syntax")
        return flow.drop()
    if banned(domain.lower().rstrip("."), config()):
        alert(description="forbidden mail domain", severity="low", method="sender domain list")
        flow.drop()


def banned(domain, settings):
    domains = {d.lower().rstrip(".") for d in settings.get("banned_domains", ())}
    if domain in domains:
        return True
    if settings.get("match_subdomains", True):
        return any(domain.endswith("." + d) for d in domains)
    return False

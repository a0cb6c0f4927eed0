"""Recipient harvesting: many rejected RCPTs in one connection (a dictionary
attack, or a spammer guessing addresses).  Threshold in rules.toml
([rcpt_rejects] max_rejected, default 5); one alert per connection.
"""

from sensor.rules import alert, config, hooks, rule


@rule(hooks.response, id="rcpt_rejects.harvest", rev=1)
def rejected_recipients(flow, reply):
    if reply.command != "RCPT" or reply.code < 500:
        return
    flow.scratch["rcpt_rejects"] = rejected = flow.scratch.get("rcpt_rejects", 0) + 1
    if rejected == config().get("max_rejected", 5):
        alert(description=f"{rejected} recipients rejected in one connection",
              severity="medium", confidence="medium", method="RCPT reply codes")

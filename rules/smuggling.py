"""SMTP smuggling (CVE-2023-51764/51765/51766 and kin): a message whose
content holds an end-of-data marker that some server reads differently
(<LF>.<LF>, <LF>.<CR><LF>, <CR>.<CR> ...) carries a second, hidden message.
Alert and drop the connection when the first such marker is met: an MTA
that honours it commits the outer message there, and the commit hold keeps
the segment that carries it until this verdict.
"""

from sensor.rules import alert, hooks, rule


@rule(hooks.lenient_terminator, id="smuggling.terminator", rev=2)
def smuggled_terminator(flow, seen):
    alert(description="SMTP smuggling attempt: non-standard end-of-data " + seen.label,
          severity="high", confidence="high", method="DATA framing",
          ref=["CVE-2023-51764", "CVE-2023-51765", "CVE-2023-51766"])
    flow.drop()

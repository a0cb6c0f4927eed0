"""SMTP smuggling (CVE-2023-51764/51765/51766 and kin): a message whose
content holds an end-of-data marker that some server reads differently
(<LF>.<LF>, <LF>.<CR><LF>, <CR>.<CR> ...) carries a second, hidden message.
Alert and drop the connection before the smuggled commands are acted on.
"""

from sensor.rules import alert, hooks, rule


@rule(hooks.message_end, id="smuggling.terminator", rev=1)
def smuggled_terminator(flow, end):
    if end.smuggled_terminators:
        alert(description="SMTP smuggling attempt: non-standard end-of-data "
                          + ", ".join(end.smuggled_terminators),
              severity="high", confidence="high", method="DATA framing",
              ref=["CVE-2023-51764", "CVE-2023-51765", "CVE-2023-51766"])
        flow.drop()

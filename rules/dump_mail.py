"""Dump mail content (the Haka seed's second rule): the message content,
streamed as it arrives, written between delimiters.  Memory stays one chunk.

Where it goes: [dump_mail] path in rules.toml (a file, appended to), else the
sensor's standard output.  Off unless [dump_mail] enabled = true.  A new
dump file is created 0600: it holds whole messages.
"""

import sys

from sensor.rules import config, hooks, open_private, rule


@rule(hooks.mail_content, id="dump_mail.content", rev=1, streamed=True)
async def dump_mail(flow, content):
    settings = config()
    if not settings.get("enabled", False):
        return
    path = settings.get("path")
    out = open_private(path, "ab") if path else sys.stdout.buffer
    try:
        out.write(b"== Mail Content ==\n")
        async for chunk in content:
            out.write(chunk)
        out.write(b"== End Mail Content ==\n")
        out.flush()
    finally:
        if path:
            out.close()

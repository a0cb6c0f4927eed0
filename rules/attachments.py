"""Executable attachments: alert (and, if configured, drop the connection)
when a message carries a program, a script, a macro-enabled Office document,
or an archive holding one.

Judged by the name the sender gave (the last extension, so ``invoice.pdf.exe``
counts), by the content's magic numbers (``mime_type``: a PE or ELF binary
whatever it is called), and for zip archives (OOXML documents are zip
archives) by the names inside (``members``; ``word/vbaProject.bin`` is a
macro project).  The verdict comes when the entity ends, before the end of
the message, so with the commit hold a drop stops the message before the MTA
commits it.  Settings in ``rules.toml``, table ``[attachments]``.
"""

from sensor.rules import alert, config, hooks, rule

#: programs and scripts Windows runs on a double click, and their kin
EXECUTABLE = frozenset((
    "exe", "scr", "com", "pif", "cpl", "msi", "msp", "dll", "sys", "bat", "cmd", "ps1", "psm1",
    "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta", "jar", "lnk", "reg", "inf", "scf", "iso",
    "img", "vhd", "vhdx", "appx", "msix", "application", "gadget", "chm", "elf", "sh",
))
#: Office formats that carry macros
MACRO = frozenset(("docm", "dotm", "xlsm", "xltm", "xlam", "xlsb", "pptm", "potm", "ppam", "ppsm",
                   "sldm"))
#: content types that are programs whatever the name says
EXECUTABLE_TYPES = frozenset(("application/x-dosexec", "application/x-executable",
                              "application/x-mach-o-executable", "application/x-ms-shortcut"))


def _ext(name) -> str:
    name = (name or "").strip().rstrip(". ").lower()
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1] if "." in base else ""


def reasons(att, extra=()) -> list:
    """Why ``att`` (a sensor.mime.Attachment) is executable; empty if it is not."""
    found = []
    ext = _ext(att.filename)
    if ext in EXECUTABLE or ext in extra:
        found.append(f"name .{ext}")
    elif ext in MACRO:
        found.append(f"macro-enabled Office .{ext}")
    if att.mime_type in EXECUTABLE_TYPES:
        found.append(f"content {att.mime_type}")
    for member in att.members or ():
        mext = _ext(member)
        if mext in EXECUTABLE or mext in extra:
            found.append(f"archive member {member}")
            break
        if member.lower().endswith("vbaproject.bin"):
            found.append(f"macro project {member}")
            break
    return found


@rule(hooks.attachment, id="attachments.executable", rev=1)
def executable_attachment(flow, att):
    cfg = config()
    why = reasons(att, frozenset(e.lower().lstrip(".") for e in cfg.get("extra_extensions", ())))
    if not why:
        return
    found = {"fuid": att.fuid, "sha256": att.sha256, "filename": att.filename, "mime_type": att.mime_type}
    alert(description=f"executable attachment {att.filename or '(unnamed)'}: {'; '.join(why)}",
          severity="high", confidence="high" if att.mime_type in EXECUTABLE_TYPES else "medium",
          method="attachment name, magic and archive listing",
          **{k: v for k, v in found.items() if v is not None})
    if cfg.get("drop", False):
        flow.drop()

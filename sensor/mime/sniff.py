"""The content type of an entity from its first octets (magic numbers), as
Zeek's file analysis gives ``mime_type`` (its signature names where it has
one); the declared Content-Type is a separate field, never trusted for this.

A small table of the types that matter for mail security, not libmagic:
executables, archives, Office formats, PDF, images, HTML and plain text.
"""

from __future__ import annotations

__all__ = ["sniff"]

_MAGIC = (
    (b"MZ", "application/x-dosexec"),
    (b"\x7fELF", "application/x-executable"),
    (b"\xca\xfe\xba\xbe", "application/x-mach-o-executable"),
    (b"%PDF-", "application/pdf"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/vnd.ms-office"),   # OLE2 compound file
    (b"Rar!\x1a\x07", "application/x-rar"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"\x1f\x8b", "application/x-gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"MSCF", "application/vnd.ms-cab-compressed"),
    (b"{\\rtf", "text/rtf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"L\x00\x00\x00\x01\x14\x02\x00", "application/x-ms-shortcut"),     # .lnk
)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_OOXML = ((b"word/", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
          (b"xl/", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
          (b"ppt/", "application/vnd.openxmlformats-officedocument.presentationml.presentation"))
_HTML = (b"<!doctype html", b"<html", b"<head", b"<body", b"<meta", b"<table", b"<div", b"<p>")
_TEXT_CONTROLS = bytes(c for c in range(32) if c not in (9, 10, 12, 13)) + b"\x7f"


def sniff(head: bytes) -> str | None:
    if not head:
        return None
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(_ZIP):
        for marker, name in _OOXML:
            if marker in head:
                return name
        return "application/zip"
    start = head.lstrip()[:64].lower()
    if start.startswith(_HTML):
        return "text/html"
    if start.startswith(b"<?xml"):
        return "application/xml"
    if len(head.translate(None, _TEXT_CONTROLS)) != len(head):
        return None
    return "text/plain"          # any charset: no control characters

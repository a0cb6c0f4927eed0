"""Events of the MIME parser: frozen, slotted dataclasses like the SMTP ones.

``ts`` is the timestamp of the content that completed the event (never a clock
read); ``trans_depth`` the transaction of the message, as for ``MailContent``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sensor.smtp.events import Event

__all__ = ["EntityStart", "EntityData", "Attachment", "Url", "MimeSummary"]


@dataclass(frozen=True, slots=True)
class EntityStart(Event):
    """A leaf entity's headers ended: its body (an ``Attachment`` once it
    ends) follows as ``EntityData``."""
    fuid: str
    index: int
    depth: int
    content_type: str
    filename: str | None
    disposition: str | None
    transfer_encoding: str
    trans_depth: int = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class EntityData(Event):
    """Decoded octets of the entity ``fuid``, in order (pieces of any size)."""
    fuid: str
    data: bytes
    offset: int                   #: of ``data`` in the decoded entity
    trans_depth: int = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class Attachment(Event):
    """One MIME entity with a body (a leaf: not a multipart, not a
    message/rfc822 wrapper), when its body has ended.  Every such entity is
    one, inline text bodies included, as every one is a file in Zeek's
    files.log; ``filename`` says whether the sender named it."""
    fuid: str                     #: Zeek-style file id ("F" + 17 characters), links the ``files`` record
    index: int                    #: 1-based order of the entity in the message
    depth: int                    #: nesting: 0 for the body of a message that is not multipart
    content_type: str             #: declared type, lower case ("text/plain" when none was declared)
    filename: str | None          #: Content-Disposition filename, else Content-Type name; RFC 2231/2047 decoded
    disposition: str | None       #: "attachment", "inline", ... as declared (lower case)
    transfer_encoding: str        #: "base64", "quoted-printable", or "7bit"/"8bit"/"binary"/other as declared
    size: int                     #: decoded octets
    md5: str | None               #: of the decoded octets; None when not in ``[mime] hashes``
    sha1: str | None
    sha256: str | None
    mime_type: str | None         #: from the content's first octets (magic), None when not recognised
    head: bytes = b""             #: the first MimeLimits.head decoded octets
    members: tuple[str, ...] | None = None   #: names inside a zip archive (OOXML included), when listed
    complete: bool = True         #: False when the message ended inside this entity's body
    trans_depth: int = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class Url(Event):
    """A URL found in the decoded text of a text entity, with its scheme."""
    url: str
    fuid: str                     #: the entity it was found in
    trans_depth: int = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class MimeSummary(Event):
    """What the MIME parser found in one message, at its end (feeds the
    ``smtp`` record; not shown to rules)."""
    fuids: tuple[str, ...]
    attachments: tuple[str, ...]  #: file names in entity order (Suricata's email.attachment)
    urls: tuple[str, ...]         #: as logged: Suricata's order (last found first), scheme as configured
    body_md5: str | None          #: Suricata's email.body_md5
    subject_md5: str | None       #: Suricata's email.subject_md5
    trans_depth: int = field(kw_only=True)

"""MIME: the entities of a message, their hashes, names and URLs, streamed.

* :mod:`.parser`: :class:`MimeParser`, the streaming splitter (read its
  docstring first: why not ``email.feedparser``, what is read how);
* :mod:`.decode`: incremental base64 and quoted-printable decoders;
* :mod:`.params`: Content-Type / Content-Disposition parameters (``email``);
* :mod:`.sniff`: the content type from magic numbers; :mod:`.archive`: zip listings;
* :mod:`.urls`: URLs as Suricata extracts them;
* :mod:`.events`: ``EntityStart``, ``EntityData``, ``Attachment``, ``Url``, ``MimeSummary``;
* :mod:`.stage`: the pipeline's MIME step: one parser per message, fuids.

Limits: ``sensor.smtp.limits.MimeLimits``; anomalies: Suricata's MIME event
names in ``sensor.smtp.anomalies``.
"""

from sensor.mime.events import Attachment, EntityData, EntityStart, MimeSummary, Url
from sensor.mime.parser import MimeParser

__all__ = ["MimeParser", "EntityStart", "EntityData", "Attachment", "Url", "MimeSummary"]

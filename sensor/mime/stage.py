"""The pipeline's MIME step: one :class:`MimeParser` per message of a session.

``MimeStage(config, limits)`` is built once; ``parser(uid, trans_depth)``
makes the parser of one message.  File ids follow Zeek's shape (``F`` and 17
base-62 characters, as ``unique_id("F")`` gives) but are derived from the
connection's uid, the transaction and the entity's position, not drawn at
random: the same capture replayed gives the same fuids, so the ``files``
records and the ``smtp`` record's ``fuids`` can be compared run to run.
"""

from __future__ import annotations

import hashlib

from sensor.mime.parser import MimeParser
from sensor.mime.urls import UrlFinder

__all__ = ["MimeStage", "fuid"]

_B62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TO_B62 = bytes(_B62[b % 62] for b in range(256))   # an octet to a base-62 digit (near uniform)


def fuid(uid: str, trans_depth: int, index: int) -> str:
    """The fuid of the ``index``-th entity of transaction ``trans_depth`` of connection ``uid``."""
    digest = hashlib.blake2b(f"{uid}/{trans_depth}/{index}".encode(), digest_size=17).digest()
    return "F" + digest.translate(_TO_B62).decode("ascii")


class MimeStage:
    __slots__ = ("limits", "url_rx", "log_url_scheme", "body_md5", "hashes", "wants_entity_data")

    def __init__(self, config, limits) -> None:
        self.limits = limits
        self.url_rx = (UrlFinder.compile(config.extract_urls_schemes)
                       if config.extract_urls and config.extract_urls_schemes else None)
        self.log_url_scheme = config.log_url_scheme
        self.body_md5 = config.body_md5
        self.hashes = config.hashes
        #: asked at each message's start: whether anyone reads decoded
        #: content (EntityData events; the rule engine's streamed attachment
        #: rules); None: no one, and none is made
        self.wants_entity_data = None

    def parser(self, uid: str, trans_depth: int) -> MimeParser:
        return MimeParser(self.limits, trans_depth=trans_depth,
                          fuid_of=lambda index: fuid(uid, trans_depth, index),
                          url_rx=self.url_rx, log_url_scheme=self.log_url_scheme,
                          body_md5=self.body_md5, hashes=self.hashes,
                          entity_data=self.wants_entity_data is not None and self.wants_entity_data())

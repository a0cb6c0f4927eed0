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

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def fuid(uid: str, trans_depth: int, index: int) -> str:
    """The fuid of the ``index``-th entity of transaction ``trans_depth`` of connection ``uid``."""
    n = int.from_bytes(hashlib.blake2b(f"{uid}/{trans_depth}/{index}".encode(), digest_size=13).digest(), "big")
    out = []
    for _ in range(17):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "F" + "".join(out)


class MimeStage:
    __slots__ = ("limits", "url_rx", "log_url_scheme")

    def __init__(self, config, limits) -> None:
        self.limits = limits
        self.url_rx = (UrlFinder.compile(config.extract_urls_schemes)
                       if config.extract_urls and config.extract_urls_schemes else None)
        self.log_url_scheme = config.log_url_scheme

    def parser(self, uid: str, trans_depth: int) -> MimeParser:
        return MimeParser(self.limits, trans_depth=trans_depth,
                          fuid_of=lambda index: fuid(uid, trans_depth, index),
                          url_rx=self.url_rx, log_url_scheme=self.log_url_scheme)

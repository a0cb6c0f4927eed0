"""The connection fields every flow record shares (``schemas/common.json``):
Zeek's ``uid`` and ``id`` fields plus the Community ID, in that order, in the
``smtp``, ``anomaly`` and ``drop`` records."""

from __future__ import annotations

__all__ = ["conn_fields"]


def conn_fields(flow) -> dict:
    """The connection part of a flow record: ``flow`` is anything with
    ``uid``, ``orig_h``, ``orig_p``, ``resp_h``, ``resp_p`` and ``community_id``."""
    return {
        "uid": flow.uid,
        "id.orig_h": flow.orig_h,
        "id.orig_p": flow.orig_p,
        "id.resp_h": flow.resp_h,
        "id.resp_p": flow.resp_p,
        "community_id": flow.community_id,
    }

"""Netlink sockets inside a named network namespace."""

from __future__ import annotations

import contextlib
import os

from .errors import SensorError

NETNS_RUN_DIR = "/run/netns"


@contextlib.contextmanager
def iproute(netns: str | None = None):
    """pyroute2 IPRoute in the root namespace or in a named one.

    A named namespace is opened here and handed to pyroute2 as an fd: given a
    name, pyroute2 creates the namespace when it does not see it, and under
    load it was seen to open a fresh empty namespace instead of ours."""
    from pyroute2 import IPRoute

    if netns is None:
        with IPRoute() as ipr:
            yield ipr
        return
    try:
        fd = os.open(os.path.join(NETNS_RUN_DIR, netns), os.O_RDONLY)
    except OSError as exc:
        raise SensorError(f"cannot open network namespace {netns!r}: {exc.strerror} "
                          f"(see 'ip netns list')") from None
    try:
        with IPRoute(netns=fd) as ipr:
            yield ipr
    finally:
        os.close(fd)

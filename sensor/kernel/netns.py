"""Netlink sockets inside a named network namespace."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket

from sensor.errors import SensorError

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0

_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netlink_socket(netns: str) -> socket.socket:
    """A NETLINK_ROUTE socket living in the named namespace."""
    return socket_in(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


def socket_in(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A socket made inside the named network namespace.

    The calling thread enters the namespace (setns), creates the socket and
    comes back: a socket stays in the namespace it was created in.  No child
    process, no timeout, nothing created by mistake."""
    with enter_netns(netns):
        return socket.socket(family, kind, proto)


@contextlib.contextmanager
def enter_netns(netns: str | None):
    """The calling thread inside the named network namespace for the block
    (None: stays where it is), back in its own after it, whatever happens."""
    if netns is None:
        yield
        return
    try:
        target = os.open(os.path.join(NETNS_RUN_DIR, netns), os.O_RDONLY)
    except OSError as exc:
        raise SensorError(f"cannot open network namespace {netns!r}: {exc.strerror} "
                          f"(see 'ip netns list')") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            _setns(target)
        except OSError as exc:
            raise SensorError(f"cannot enter network namespace {netns!r}: {exc.strerror} "
                              "(needs CAP_SYS_ADMIN)") from None
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


@contextlib.contextmanager
def iproute(netns: str | None = None):
    """pyroute2 IPRoute in the root namespace or in a named one.

    For a named namespace the socket is made here (``netlink_socket``) and
    handed to pyroute2: given a name or an fd, pyroute2 forks a helper process
    with a timeout, and under load it was seen to open a fresh empty namespace
    instead of ours."""
    from pyroute2 import IPRoute

    if netns is None:
        with IPRoute() as ipr:
            yield ipr
        return
    with IPRoute(use_socket=netlink_socket(netns)) as ipr:
        yield ipr

"""Put a released frame into the host's stack at once, as if it had just arrived.

A held segment reaches the MTA when the client retransmits it: with one
segment in flight, Linux's tail-loss probe comes about 200 ms + 2·srtt later.
Userland has the held frame's bytes (the event carried them), so once it has
released the segment it hands that same frame to the stack itself: the
kernel's BPF_PROG_TEST_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES,
Linux 5.18) runs a program that only says XDP_PASS (``ss_xdp_inject`` in
bpf/datapath.c) on the frame, as received on the interface it was held on,
and passes it up the stack: the MTA host's TCP takes it, a gateway forwards
it. The attached XDP program does not see it again. The client's later
retransmission is a duplicate, which TCP ignores.

No packet socket is involved; the frame is exactly the one the kernel held.
Where the kernel cannot do it (older than 5.18), the first failure turns
injection off (counted): holds then end with the client's retransmission.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os

from sensor.kernel import bpfsys
from sensor.kernel.netns import enter_netns

__all__ = ["Injector"]

#: errors that say the kernel has no live-frames mode
_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else 524}


class Injector:
    """``inject(frame, ifindex)``: the frame into the stack of interface
    ``ifindex`` (of namespace ``netns``, None: ours)."""

    def __init__(self, prog_fd: int, netns: str | None = None):
        self.prog_fd = prog_fd
        self.netns = netns
        self.supported = True
        self.injected = 0
        self.errors = 0

    def inject(self, frame: bytes, ifindex: int) -> bool:
        if not self.supported:
            return False
        data = ct.create_string_buffer(frame, len(frame))
        ctx = bpfsys.XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex)
        attr = bpfsys.bpf_attr(bpfsys.TestRunAttr(
            prog_fd=self.prog_fd, data_size_in=len(frame), data_in=ct.addressof(data),
            ctx_size_in=ct.sizeof(ctx), ctx_in=ct.addressof(ctx), repeat=1,
            flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES))
        try:
            with enter_netns(self.netns):
                bpfsys.bpf(bpfsys.BPF_PROG_TEST_RUN, attr)
        except OSError as exc:
            self.errors += 1
            if exc.errno in _UNSUPPORTED and not self.injected:
                self.supported = False
            return False
        self.injected += 1
        return True

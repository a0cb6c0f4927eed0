"""Which worker a packet belongs to: a hash of its client's address.

The workers of one sensor split the traffic by the address of the client, the
side that is not on an SMTP port: all of a host's connections, its flows and
its reject statistics then live in one worker, and no state is shared on the
hot path.  The datapath computes the same function (``ss_shard`` in
``bpf/smtp_sensor.h``) to choose a worker's event ring; replay uses this one
to split a capture.  A test keeps the two equal.

The hash is 32-bit FNV-1a over the address octets in network order (4 for
IPv4, 16 for IPv6): a few instructions per octet in BPF, no tables, and well
spread over consecutive addresses.  When both ports are SMTP ports the client
is the lower (address, port) pair, so both directions of a flow agree.

An IP fragment after the first carries no ports: it belongs to the worker of
its source or of its destination, whichever is the client, and it is given to
both (``fragment_workers``); each worker's defragmenter keeps only datagrams
whose flow is its own.
"""

from __future__ import annotations

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193


def fnv1a32(data: bytes) -> int:
    h = FNV_OFFSET
    for octet in data:
        h = ((h ^ octet) * FNV_PRIME) & 0xFFFFFFFF
    return h


def client_address(src: bytes, sport: int, dst: bytes, dport: int, ports) -> bytes:
    """The client's packed address of a segment ``src:sport -> dst:dport``."""
    s_smtp = sport in ports
    d_smtp = dport in ports
    if d_smtp and not s_smtp:
        return src
    if s_smtp and not d_smtp:
        return dst
    # both or neither on an SMTP port: the lower endpoint, the same both ways
    return min((src, sport), (dst, dport))[0]


def worker_of_address(address: bytes, workers: int) -> int:
    return fnv1a32(address) % workers if workers > 1 else 0


def worker_of(src: bytes, sport: int, dst: bytes, dport: int, ports, workers: int) -> int:
    """The worker (0 … workers-1) that owns the segment's flow and client host."""
    if workers <= 1:
        return 0
    return fnv1a32(client_address(src, sport, dst, dport, ports)) % workers


def fragment_workers(src: bytes, dst: bytes, workers: int) -> frozenset[int]:
    """The workers a port-less IP fragment goes to: its source's and its destination's."""
    return frozenset((worker_of_address(src, workers), worker_of_address(dst, workers)))

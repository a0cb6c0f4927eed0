"""A set of IP prefixes, each with a value, looked up by address at a cost
that does not grow with the number of prefixes.

One hash table per (IP version, prefix length) of the network numbers held:
an address is masked and looked up once per prefix length in use (at most 33
for IPv4, 129 for IPv6; a ban list of /32s and a few /24s is two lookups),
longest first, so the value found is the longest prefix's, as the kernel's
LPM tries give it.  A list of ``ipaddress`` networks costs one comparison per
prefix instead (docs/benchmarks.md, section 9).

Written here rather than taken from a library: the standard library has no
prefix set, and the radix trees on PyPI (py-radix, pytricia) are C extensions;
this is a few dict lookups with no build step.  Addresses may be given packed
(4 or 16 bytes, as a Segment carries them), as text or as ``ipaddress``
objects; prefixes as text or ``ipaddress`` networks (host bits are ignored).
"""

from __future__ import annotations

import ipaddress

__all__ = ["PrefixSet"]

_BITS = {4: 32, 6: 128}


def _network(prefix) -> tuple[int, int, int]:
    """(version, prefix length, network number) of ``prefix``."""
    net = prefix if isinstance(prefix, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else \
        ipaddress.ip_network(prefix, strict=False)
    return net.version, net.prefixlen, int(net.network_address)


def _address(address) -> tuple[int, int]:
    """(version, number) of ``address``."""
    if isinstance(address, (bytes, bytearray)):
        return (4 if len(address) == 4 else 6), int.from_bytes(address, "big")
    if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        address = ipaddress.ip_address(address)
    return address.version, int(address)


class PrefixSet:
    """Prefixes with a value each (``add``, ``remove``), matched by ``lookup``."""

    __slots__ = ("_tables", "_lengths", "_size")

    def __init__(self, prefixes=()) -> None:
        #: (version, length) -> {network number: value}
        self._tables: dict[tuple[int, int], dict[int, object]] = {}
        #: version -> the lengths in use, longest first, each with its mask and table
        self._lengths: dict[int, list[tuple[int, int, dict]]] = {4: [], 6: []}
        self._size = 0
        for prefix in prefixes:
            self.add(prefix)

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def add(self, prefix, value=True) -> None:
        """Hold ``prefix`` with ``value`` (replacing the value it had)."""
        version, length, number = _network(prefix)
        table = self._tables.get((version, length))
        if table is None:
            table = self._tables[(version, length)] = {}
            self._index(version)
        if number not in table:
            self._size += 1
        table[number] = value

    def remove(self, prefix) -> bool:
        """Stop holding ``prefix``; False if it was not held."""
        version, length, number = _network(prefix)
        table = self._tables.get((version, length))
        if table is None or number not in table:
            return False
        del table[number]
        self._size -= 1
        if not table:
            del self._tables[(version, length)]
            self._index(version)
        return True

    def lookup(self, address, default=None):
        """The value of the longest prefix holding ``address``, or ``default``."""
        version, number = _address(address)
        for mask, table in self._lengths[version]:
            value = table.get(number & mask, _MISSING)
            if value is not _MISSING:
                return value
        return default

    def __contains__(self, address) -> bool:
        return self.lookup(address, _MISSING) is not _MISSING

    def items(self):
        """(``ipaddress`` network, value) of every prefix held."""
        for (version, length), table in self._tables.items():
            cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
            for number, value in table.items():
                yield cls((number, length)), value

    def _index(self, version: int) -> None:
        bits = _BITS[version]
        lengths = sorted((length for v, length in self._tables if v == version), reverse=True)
        self._lengths[version] = [(((1 << length) - 1) << (bits - length), self._tables[(version, length)])
                                  for length in lengths]


_MISSING = object()

"""The ban snapshot (sensor.service.bansnapshot): every ban the kernel holds,
written 0600 and atomically, restored after a reboot (the kernel's tries
empty) with the time each had left and its note; expired bans skipped,
bans the kernel still holds left alone, a corrupt file set aside."""

from __future__ import annotations

import os
import stat
from time import monotonic_ns

import msgpack
import pytest

from sensor.kernel import abi
from sensor.kernel.maps import Entry, deadline
from sensor.rules.enforce import KernelEnforcer
from sensor.service.bansnapshot import read_bans, write_bans

pytestmark = pytest.mark.unit


class FakeBanMaps:
    """The ban half of KernelMaps, in a dict (a reboot: a new one)."""

    def __init__(self):
        self.entries: dict[str, Entry] = {}

    def ban(self, network, ttl=None, reason=abi.Reason.MANUAL):
        self.entries[network] = Entry(network, reason, deadline(ttl), 0, 0)

    def unban(self, network):
        return self.entries.pop(network, None) is not None

    def bans(self):
        return list(self.entries.values())


def test_bans_by_hand_and_by_rules_survive_a_reboot(tmp_path):
    path = tmp_path / "bans.msgpack"
    before = KernelEnforcer(FakeBanMaps())
    before.ban("192.0.2.66/32", ttl=None, now=0.0, reason=abi.Reason.MANUAL, note="ticket 42")
    before.ban("2001:db8:66::/48", ttl=600, now=0.0, reason=abi.Reason.RULE)
    before.ban("198.51.100.0/24", ttl=3600, now=0.0, reason=abi.Reason.SPAM_STATS)
    assert write_bans(path, before) == 3
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    after = KernelEnforcer(FakeBanMaps())                        # the tries are empty after a boot
    restored = read_bans(path, after)
    assert restored.ok and restored.bans == 3
    got = {e.target: (e, note) for e, note in after.bans()}
    assert got["192.0.2.66/32"][0].reason == abi.Reason.MANUAL and got["192.0.2.66/32"][1] == "ticket 42"
    assert got["192.0.2.66/32"][0].expires_ns == 0                # no expiry stays none
    rule = got["2001:db8:66::/48"][0]
    assert rule.reason == abi.Reason.RULE and 590 < rule.ttl_left() <= 600
    assert got["198.51.100.0/24"][0].reason == abi.Reason.SPAM_STATS
    assert after.verdicts.banned("192.0.2.66")          # the gate knows it too


def test_a_ban_expired_while_the_host_was_down_is_not_restored(tmp_path):
    path = tmp_path / "bans.msgpack"
    before = KernelEnforcer(FakeBanMaps())
    before.ban("192.0.2.66/32", ttl=60, now=0.0)
    before.ban("192.0.2.67/32", ttl=7200, now=0.0)
    write_bans(path, before)
    after = KernelEnforcer(FakeBanMaps())
    import time
    restored = read_bans(path, after, wall=time.time() + 3600)    # an hour later
    assert restored.bans == 1
    assert [e.target for e, _ in after.bans()] == ["192.0.2.67/32"]


def test_a_ban_the_kernel_still_holds_is_left_as_the_kernel_has_it(tmp_path):
    path = tmp_path / "bans.msgpack"
    before = KernelEnforcer(FakeBanMaps())
    before.ban("192.0.2.66/32", ttl=60, now=0.0)
    write_bans(path, before)
    before.ban("192.0.2.66/32", ttl=9000, now=0.0)                # renewed since; the pins survived
    restored = read_bans(path, before)
    assert restored.ok and restored.bans == 0
    assert before.maps.entries["192.0.2.66/32"].ttl_left() > 8000


def test_an_expired_entry_not_yet_swept_is_not_written(tmp_path):
    maps = FakeBanMaps()
    maps.entries["192.0.2.66/32"] = Entry("192.0.2.66/32", abi.Reason.RULE, monotonic_ns() - 1, 0, 0)
    assert write_bans(tmp_path / "bans.msgpack", KernelEnforcer(maps)) == 0


@pytest.mark.parametrize("content", [
    b"\xc1garbage",
    msgpack.packb({"format": "smtp-sensor/spam-stats", "version": 1, "saved_at": 0, "bans": []}),
    msgpack.packb({"format": "smtp-sensor/bans", "version": 1, "saved_at": 0,
                   "bans": [["192.0.2.300/32", "RULE", None, None]]}),
    msgpack.packb({"format": "smtp-sensor/bans", "version": 1, "saved_at": 0,
                   "bans": [["192.0.2.1/32", "NO_SUCH_REASON", None, None]]}),
    msgpack.packb({"format": "smtp-sensor/bans", "version": 1, "saved_at": 0,
                   "bans": [["192.0.2.1/32", "RULE", None, None], ["192.0.2.2/32", "RULE", None, "soon"]]}),
])
def test_a_corrupt_snapshot_is_set_aside_and_nothing_is_banned(tmp_path, content):
    path = tmp_path / "bans.msgpack"
    path.write_bytes(content)
    enforcer = KernelEnforcer(FakeBanMaps())
    restored = read_bans(path, enforcer)
    assert not restored.ok and "ban snapshot" in restored.message and "\n" not in restored.message
    assert not path.exists() and restored.set_aside.exists()
    assert enforcer.bans() == []


def test_no_snapshot_yet_is_a_fresh_start(tmp_path):
    restored = read_bans(tmp_path / "none.msgpack", KernelEnforcer(FakeBanMaps()))
    assert restored.ok and restored.bans == 0

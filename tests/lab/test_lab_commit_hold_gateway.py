"""The commit hold on a gateway: the sensor (`smtp-sensor run`, the shipped
rules) on the client-facing interface of a router namespace that forwards
between the client's link and the server's (sensor.lab.gateway), aiosmtpd
behind it.  The same sessions as tests/lab/test_lab_commit_hold.py's
one-write ones: a banned sender's message is never committed, a legitimate
one is delivered after its hold."""

from __future__ import annotations

import subprocess

import pytest

from sensor.kernel import abi
from sensor.lab.gateway import GATEWAY_SERVER_V4
from support.lab_hold import journal_messages, pipelined_banned, pipelined_legitimate, start_sensor
from support.lab_session import gateway_with_server

SIZES = {"one segment": 600, "2 KB": 2048, "32 KB": 32 * 1024}


@pytest.fixture(scope="module")
def gateway(lab_prereqs, tmp_path_factory):
    yield from gateway_with_server(tmp_path_factory, "hold-gateway")


@pytest.fixture(scope="module")
def sensor(gateway, test_pin_root, tmp_path_factory):
    proc = start_sensor(gateway, tmp_path_factory.mktemp("hold-gateway-sensor"),
                        test_pin_root / "hold-gateway" / f"v{abi.ABI_VERSION}",
                        interface=gateway.router_if, netns=gateway.router_ns)
    try:
        yield proc
    finally:
        proc.stop()


def test_the_client_reaches_the_server_through_the_router_only(gateway):
    """Three namespaces, two links: the server's address is not on the client's."""
    route = subprocess.run(gateway.exec_argv(gateway.client_ns, "ip", "route", "get", GATEWAY_SERVER_V4),
                           capture_output=True, text=True, check=True).stdout
    assert "via 192.0.2.1" in route, route
    result = gateway.swaks("--from", "gw-plain@allowed.example", "--to", "user@lab.example",
                           server=GATEWAY_SERVER_V4, timeout=20)
    assert result.returncode == 0, result.stdout[-1500:]
    assert len(journal_messages(gateway, "gw-plain@allowed.example")) == 1


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_banned_sender_through_the_gateway_commits_nothing(gateway, sensor, size):
    for run in range(2):
        pipelined_banned(gateway, sensor, 25, f"gw{size}-{run}@spam.example", size, server=GATEWAY_SERVER_V4)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_legitimate_sender_through_the_gateway_is_delivered(gateway, sensor, size):
    pipelined_legitimate(gateway, sensor, 25, f"gw{size}@allowed.example", size, server=GATEWAY_SERVER_V4)

"""bpf/smtp_sensor.h and its Python mirror sensor/kernel/abi.py agree: every struct's
size and field offsets, every constant, and no name on one side only."""

from __future__ import annotations

import ctypes as ct
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.kernel import abi

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "smtp_sensor.h"


def header_constant_names() -> set[str]:
    text = HEADER.read_text()
    defines = set(re.findall(r"^#define\s+(SS_[A-Z0-9_]+)\s+\S", text, re.M))
    enum_members = set(re.findall(r"^\s+(SS_[A-Z0-9_]+)\s*=", text, re.M))
    return (defines | enum_members) - {"SMTP_SENSOR_H"}


def header_struct_names() -> set[str]:
    return set(re.findall(r"^struct\s+(ss_[a-z0-9_]+)\s*\{", HEADER.read_text(), re.M))


def static_asserts() -> str:
    lines = ['#include <stddef.h>', f'#include "{HEADER}"']
    for name, value in abi.CONSTANTS.items():
        lines.append(f'_Static_assert({name} == {value}, "{name} is {value} in sensor/kernel/abi.py");')
    for cname, struct in abi.STRUCTS.items():
        size = ct.sizeof(struct)
        lines.append(f'_Static_assert(sizeof(struct {cname}) == {size}, '
                     f'"sizeof(struct {cname}) is {size} in sensor/kernel/abi.py");')
        for field, *_ in struct._fields_:
            offset = getattr(struct, field).offset
            lines.append(f'_Static_assert(offsetof(struct {cname}, {field}) == {offset}, '
                         f'"{cname}.{field} is at {offset} in sensor/kernel/abi.py");')
    return "\n".join(lines) + "\n"


def test_every_header_constant_is_mirrored_and_nothing_else():
    assert header_constant_names() == set(abi.CONSTANTS)


def test_every_header_struct_is_mirrored_and_nothing_else():
    assert header_struct_names() == set(abi.STRUCTS)


def test_header_compiles_against_the_mirror_layouts(tmp_path):
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.fail("no C compiler (gcc) to check the header with: ./run setup installs it")
    source = tmp_path / "mirror_check.c"
    source.write_text(static_asserts())
    result = subprocess.run([compiler, "-fsyntax-only", "-std=c11", str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_wrong_mirror_value_is_caught(tmp_path, monkeypatch):
    """The check above can fail: a mirror that lies does not compile."""
    monkeypatch.setitem(abi.CONSTANTS, "SS_CNT_PUSHED", 99)
    source = tmp_path / "mirror_lie.c"
    source.write_text(static_asserts())
    result = subprocess.run([shutil.which("gcc") or "cc", "-fsyntax-only", "-std=c11", str(source)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "SS_CNT_PUSHED is 99" in result.stderr


def test_event_decoding_trusts_the_captured_length_not_the_padded_record():
    header = abi.EventHeader(version=abi.ABI_VERSION, cap_len=5, payload_off=0, payload_len=5)
    record = bytes(header) + b"HELLO" + b"\0\0\0"  # the ring pads records to their size class
    event = abi.decode_event(record)
    assert event.frame == b"HELLO" and event.payload == b"HELLO"


def test_event_of_another_version_or_short_record_is_refused():
    header = abi.EventHeader(version=abi.ABI_VERSION + 1)
    with pytest.raises(abi.EventFormatError, match="version"):
        abi.decode_event(bytes(header))
    with pytest.raises(abi.EventFormatError, match="shorter"):
        abi.decode_event(b"\x01\x00")
    header = abi.EventHeader(version=abi.ABI_VERSION, cap_len=100)
    with pytest.raises(abi.EventFormatError, match="claims"):
        abi.decode_event(bytes(header) + b"x")

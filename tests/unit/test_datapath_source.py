"""What bcc compiles, as `smtp-sensor run --ebpf` prints it: the -D build
parameters and bpf/datapath.c with the headers of bpf/ expanded. That bcc
compiles the very same programs is checked in tests/kernel/test_datapath_testrun.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sensor.errors import SensorError
from sensor.kernel.datapath import (BPF_DIR, PROGRAMS, TAIL_SLOTS, Datapath, DatapathConfig, define_line,
                                     expand_includes)

HEADERS = ("smtp_sensor.h", "parsing.h", "shard.h")


@pytest.fixture
def datapath(tmp_path):
    return Datapath(DatapathConfig(pin_dir=tmp_path / "pins" / "v1", ring_pages=512, workers=3))


def test_the_listing_defines_every_d_flag_in_the_order_bcc_gets_them(datapath, tmp_path):
    flags = [f for f in datapath.cflags() if f.startswith("-D")]
    assert flags == [f'-DSS_PIN_DIR="{tmp_path}/pins/v1"', "-DSS_RING_PAGES=512", "-DSS_WORKERS=3"]
    listing = datapath.listing()
    head = listing[:listing.index("#line 1 ")].splitlines()
    assert [line for line in head if line.startswith("#define")] == [
        f'#define SS_PIN_DIR "{tmp_path}/pins/v1"', "#define SS_RING_PAGES 512", "#define SS_WORKERS 3"]
    assert f"// cflags: {' '.join(datapath.cflags())}" in head


def test_the_listing_ends_with_the_source_bcc_is_given(datapath):
    assert datapath.listing().endswith(datapath.source())


def test_every_header_is_expanded_once_where_it_is_first_included(datapath):
    source = datapath.source()
    assert re.search(r'^\s*#\s*include\s+"', source, re.M) is None
    for name in HEADERS:
        header = BPF_DIR / name
        assert source.count(f'#line 1 "{header}"') == 1
        for line in header.read_text().splitlines():
            if '#include "' not in line:
                assert line in source, f"{name}: {line!r} is not in what bcc compiles"
    assert source.index(f'#line 1 "{BPF_DIR / "smtp_sensor.h"}"') < source.index(f'#line 1 "{BPF_DIR / "parsing.h"}"')
    for line in (BPF_DIR / "datapath.c").read_text().splitlines():
        assert line in source or '#include "' in line


def test_line_markers_resume_the_including_file_after_the_header(tmp_path):
    (tmp_path / "a.h").write_text("int a;\n")
    (tmp_path / "main.c").write_text('int x;\n#include "a.h"\nint y;\n#include "a.h"\nint z;\n')
    assert expand_includes(tmp_path / "main.c") == (
        f'#line 1 "{tmp_path}/main.c"\nint x;\n/* #include "a.h" */\n#line 1 "{tmp_path}/a.h"\nint a;\n'
        f'#line 3 "{tmp_path}/main.c"\nint y;\n/* #include "a.h": expanded above */\nint z;\n')


def test_an_include_of_a_missing_header_is_one_clear_error(tmp_path):
    (tmp_path / "main.c").write_text('#include <linux/types.h>\n#include "nope.h"\n')
    with pytest.raises(SensorError, match=r"main.c:2 includes .*nope.h, which does not exist"):
        expand_includes(tmp_path / "main.c")


@pytest.mark.parametrize("flag, line", [("-DN=3", "#define N 3"), ('-DP="/a b"', '#define P "/a b"'),
                                        ("-DFLAG", "#define FLAG 1")])
def test_a_d_flag_becomes_the_define_the_compiler_makes_of_it(flag, line):
    assert define_line(flag) == line


def test_a_ring_size_that_is_not_a_power_of_two_is_refused():
    with pytest.raises(SensorError, match="power of two"):
        Datapath(DatapathConfig(pin_dir=Path("/nonexistent"), ring_pages=3)).listing()


@pytest.mark.parametrize("workers", [0, 65])
def test_a_number_of_workers_the_kernel_cannot_have_is_refused(tmp_path, workers):
    from sensor.errors import SensorError
    with pytest.raises(SensorError, match="workers must be between 1 and 64"):
        Datapath(DatapathConfig(pin_dir=tmp_path, workers=workers)).cflags()


def test_every_program_load_knows_is_a_program_of_datapath_c():
    source = (BPF_DIR / "datapath.c").read_text()
    defined = set(re.findall(r"^int (ss_[a-z0-9_]+)\((?:struct xdp_md|struct __sk_buff) \*", source, re.M))
    assert {name for name, _ in PROGRAMS} == defined


def test_the_tail_call_slots_userland_fills_are_the_slots_of_enum_ss_tail_slot():
    source = (BPF_DIR / "datapath.c").read_text()
    enum = re.search(r"enum ss_tail_slot \{(.*?)\};", source, re.S).group(1)
    slots = {int(n): prog for n, prog in re.findall(r"= (\d+),\s*/\* (ss_[a-z0-9_]+) \*/", enum)}
    assert [slots[n] for n in sorted(slots)] == list(TAIL_SLOTS)
    assert set(TAIL_SLOTS) <= {name for name, kind in PROGRAMS if kind == "SCHED_CLS"}

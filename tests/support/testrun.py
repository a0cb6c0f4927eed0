"""BPF_PROG_TEST_RUN: run a loaded program on one packet, as the kernel tests
and the benchmarks of bpf/ do (bench/ puts tests/ on its path for it)."""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass

from sensor.kernel import bpfsys

BPF_PROG_TEST_RUN = bpfsys.BPF_PROG_TEST_RUN
_TestRunAttr = bpfsys.TestRunAttr


@dataclass(frozen=True)
class RunResult:
    retval: int
    duration_ns: int  # mean per repetition, as the kernel reports it
    data_out: bytes


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1) -> RunResult:
    """Run a loaded program on one packet with BPF_PROG_TEST_RUN."""
    data_in = ct.create_string_buffer(data, len(data))
    out_size = len(data) + 512
    data_out = ct.create_string_buffer(out_size)
    attr = bpfsys.bpf_attr(_TestRunAttr(prog_fd=prog_fd, data_size_in=len(data), data_size_out=out_size,
                                        data_in=ct.addressof(data_in), data_out=ct.addressof(data_out),
                                        repeat=repeat))
    bpfsys.bpf(BPF_PROG_TEST_RUN, attr)
    result = _TestRunAttr.from_buffer_copy(bytes(attr[:ct.sizeof(_TestRunAttr)]))
    return RunResult(result.retval, result.duration, data_out.raw[:result.data_size_out])

"""The kernel side: the ABI shared with bpf/, bpf syscalls, the datapath, its maps and event ring."""

"""The kernel side: the ABI shared with bpf/, bpf syscalls, the datapath, its maps and event ring.

One packet's way in, in reading order: bpf/smtp_sensor.h (the ABI), bpf/parsing.h,
bpf/datapath.c, then ring.py (the event ring's reader) and abi.py (its Python
mirror, decoding each record). Verdicts go back through maps.py; datapath.py
compiles, loads and attaches the programs; bpfsys.py and netns.py are the
system calls bcc and pyroute2 do not offer.
"""

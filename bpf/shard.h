/* SPDX-License-Identifier: GPL-2.0 */
/* shard.h - which worker's event ring a packet goes to: sensor/shard.py's
 * function, computed the same way (tests/kernel/test_shard_rings.py keeps the
 * two equal).
 *
 * The worker is FNV-1a 32 of the client's address (the side that is not on
 * an SMTP port; with both on SMTP ports, the lower (address, port) end),
 * over its octets in network order (4 for IPv4, 16 for IPv6), modulo
 * SS_WORKERS. An IP fragment without ports goes to the workers of both of
 * its addresses (ss_shard's *other). With one worker, everything is worker 0
 * and nothing is computed.
 *
 * Needs ss_is_smtp_port() (datapath.c) and struct ss_pkt (parsing.h).
 */
#ifndef SS_SHARD_H
#define SS_SHARD_H

#include "smtp_sensor.h"
#include "parsing.h"

static __always_inline __u32 ss_fnv1a(const __u8 *addr, __u8 family)
{
	__u32 h = SS_FNV_OFFSET;

	if (family == SS_AF_INET) {
		/* the IPv4-mapped form ::ffff:a.b.c.d: the last 4 octets */
#pragma unroll
		for (int i = 12; i < 16; i++) {
			h ^= addr[i];
			h *= SS_FNV_PRIME;
		}
		return h;
	}
#pragma unroll
	for (int i = 0; i < 16; i++) {
		h ^= addr[i];
		h *= SS_FNV_PRIME;
	}
	return h;
}

/* Is the source the lower (address, port) end? Compared as four 32-bit
 * words in network order (IPv4-mapped addresses share their first 12
 * octets, so they compare as their 4 do). */
static __always_inline int ss_source_is_lower(struct ss_pkt *pkt)
{
	__u32 *s = (__u32 *)pkt->key.saddr, *d = (__u32 *)pkt->key.daddr;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 a = bpf_ntohl(s[i]), b = bpf_ntohl(d[i]);

		if (a != b)
			return a < b;
	}
	return pkt->key.sport <= pkt->key.dport;
}

/* The worker of the packet's flow; *other: a second worker the packet also
 * goes to (a fragment without ports), else the same. */
static __always_inline __u32 ss_shard(struct ss_pkt *pkt, __u32 *other)
{
	__u32 ws = ss_fnv1a(pkt->key.saddr, pkt->key.family) % SS_WORKERS;
	__u32 wd = ss_fnv1a(pkt->key.daddr, pkt->key.family) % SS_WORKERS;
	int from_client;

	if (pkt->frag && !pkt->ports_known) {
		*other = wd;
		return ws;
	}
	int s_smtp = ss_is_smtp_port(pkt->key.sport);
	int d_smtp = ss_is_smtp_port(pkt->key.dport);

	if (s_smtp != d_smtp)
		from_client = d_smtp;
	else
		from_client = ss_source_is_lower(pkt);
	*other = from_client ? ws : wd;
	return *other;
}

#if SS_WORKERS > 1
/* The packet's workers, from ss_shard_note() to ss_shard_take(), per CPU (a
 * program runs to its end on one CPU; a tail call notes them anew). */
struct ss_shard_note {
	__u32 worker;
	__u32 other;
};
BPF_PERCPU_ARRAY(ss_shard_scratch, struct ss_shard_note, 1);
#endif

/* The packet's workers are computed where few of the verifier's states
 * reach (after parsing) and kept in a map, not in a variable, until the
 * push: a variable live across the program, or computed at the push, makes
 * the verifier walk the rest of the program once per path through
 * ss_shard(), beyond its 1M instructions. Read back from the map, they are
 * one unknown number whatever the path. */
static __always_inline void ss_shard_note(struct ss_pkt *pkt)
{
#if SS_WORKERS > 1
	__u32 zero = 0, other, worker = ss_shard(pkt, &other);
	struct ss_shard_note *note = ss_shard_scratch.lookup(&zero);

	if (note) {
		note->worker = worker;
		note->other = other;
	}
#endif
}

/* The workers ss_shard_note() noted (0 with one worker). */
static __always_inline __u32 ss_shard_take(__u32 *other)
{
	*other = 0;
#if SS_WORKERS > 1
	__u32 zero = 0;
	struct ss_shard_note *note = ss_shard_scratch.lookup(&zero);

	if (note) {
		*other = *(volatile __u32 *)&note->other;
		return *(volatile __u32 *)&note->worker;
	}
#endif
	return 0;
}

#endif /* SS_SHARD_H */

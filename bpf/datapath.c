/* SPDX-License-Identifier: GPL-2.0 */
/* datapath.c - the kernel fast path: XDP on ingress, TC clsact on egress.
 *
 * One packet: parse (parsing.h) -> not SMTP? pass -> banned source? drop ->
 * dropped flow? drop -> bypassed flow? pass -> pure ACK? pass -> push the
 * metadata (smtp_sensor.h: struct ss_event_hdr) and the frame bytes into the
 * event ring -> pass. Every path returns a counter index from ss_process()
 * and leaves through ss_xdp_ingress()/ss_tc_egress(), which count it.
 *
 * The commit hold (SS_CFG_HOLD; hold.h): a client -> server segment on XDP
 * ingress that can complete a message is pushed but dropped until userland
 * releases it (or hold_max_ms pass); TCP retransmits it. So a verdict
 * userland reaches while judging the message comes before the MTA commits it.
 *
 * The event ring is a BPF ring buffer, one for all CPUs: a record is reserved,
 * filled in place and submitted, which costs a fraction of a perf buffer's
 * bpf_perf_event_output() per event (docs/benchmarks.md, section 1).
 *
 * Compiled by bcc at start (sensor/kernel/datapath.py; `smtp-sensor run
 * --ebpf` prints what it compiles). Build parameters arrive as -D cflags,
 * both required:
 *   SS_PIN_DIR     "/sys/fs/bpf/smtp-sensor/v1": where enforcement maps are pinned
 *   SS_RING_PAGES  size of the event ring in pages (a power of two)
 *
 * Read next: sensor/kernel/ring.py, the reader of the event ring.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "smtp_sensor.h"
#include "parsing.h"

#ifndef SS_PIN_DIR
#error "SS_PIN_DIR must be set (-DSS_PIN_DIR=\"/sys/fs/bpf/...\")"
#endif

#ifndef SS_RING_PAGES
#error "SS_RING_PAGES must be set (-DSS_RING_PAGES=2048)"
#endif

/* Records: struct ss_event_hdr followed by the frame bytes (padded). */
BPF_RINGBUF_OUTPUT(ss_events, SS_RING_PAGES);
BPF_PERCPU_ARRAY(ss_counters, __u64, SS_DIR__MAX * SS_CNT__MAX);
/* The SMTP port set: ss_ports[port] != 0. Changed by userland at run time. */
BPF_ARRAY(ss_ports, __u8, SS_PORT_MAX);
BPF_ARRAY(ss_config, struct ss_config, 1);
/* Slot 0: ss_tc_ehlo, set by userland after loading (sensor/kernel/datapath.py). */
BPF_PROG_ARRAY(ss_tail, 1);

/* Enforcement state, pinned so it outlives the control plane. */
BPF_TABLE_PINNED("lpm_trie", struct ss_lpm_v4, struct ss_verdict, ss_ban_v4, SS_BAN_MAX,
		 SS_PIN_DIR "/ss_ban_v4", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct ss_lpm_v6, struct ss_verdict, ss_ban_v6, SS_BAN_MAX,
		 SS_PIN_DIR "/ss_ban_v6", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ss_flow_key, struct ss_verdict, ss_flow_drop, SS_FLOW_MAX,
		 SS_PIN_DIR "/ss_flow_drop");
BPF_TABLE_PINNED("lru_hash", struct ss_flow_key, struct ss_verdict, ss_bypass, SS_FLOW_MAX,
		 SS_PIN_DIR "/ss_bypass");

static __always_inline void ss_count(int dir, int counter)
{
	__u32 idx = dir * SS_CNT__MAX + counter;
	__u64 *value = ss_counters.lookup(&idx);

	if (value)
		*value += 1;
}

/* A live entry (no expiry, or expiry in the future) counts the hit and says
 * so; an expired one is ignored until userland sweeps it. */
static __always_inline int ss_verdict_live(struct ss_verdict *v, __u32 wire_len, int dir)
{
	if (v->expires_ns && v->expires_ns <= bpf_ktime_get_ns()) {
		ss_count(dir, SS_CNT_EXPIRED);
		return 0;
	}
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, wire_len);
	return 1;
}

/* The remote end of the packet (ingress: its source; egress: its
 * destination) against the ban tries. */
static __always_inline int ss_banned(struct ss_pkt *pkt, __u32 wire_len, int dir)
{
	__u8 *remote = dir == SS_DIR_INGRESS ? pkt->key.saddr : pkt->key.daddr;
	struct ss_verdict *v;

	if (pkt->key.family == SS_AF_INET) {
		struct ss_lpm_v4 key = {.prefixlen = 32};

		__builtin_memcpy(key.addr, remote + 12, 4);
		v = ss_ban_v4.lookup(&key);
	} else {
		struct ss_lpm_v6 key = {.prefixlen = 128};

		__builtin_memcpy(key.addr, remote, 16);
		v = ss_ban_v6.lookup(&key);
	}
	return v && ss_verdict_live(v, wire_len, dir);
}

static __always_inline int ss_is_smtp_port(__u32 port)
{
	__u8 *member = ss_ports.lookup(&port);

	return member && *member;
}

/* len clamped to [1, max] where the verifier sees it (clang would otherwise
 * hand the helper an unclamped copy). */
static __always_inline __u64 ss_clamp(__u64 len, __u64 max)
{
	asm volatile("if %[v] <= %[m] goto +1\n\t%[v] = %[m]\n\tif %[v] != 0 goto +1\n\t%[v] = 1"
		     : [v] "+r"(len) : [m] "r"(max));
	return len;
}

#include "hold.h" /* the commit hold: needs ss_clamp() */

static __always_inline long ss_load_bytes(void *ctx, void *to, __u64 len, int dir)
{
	if (dir == SS_DIR_INGRESS)
		return bpf_xdp_load_bytes(ctx, 0, to, len);
	return bpf_skb_load_bytes(ctx, 0, to, len);
}

/* One ring record of a size class: the header, then up to `size` frame
 * bytes. bpf_ringbuf_reserve() needs a constant size, so a frame goes into the
 * smallest class that holds it and the record is padded (userland trusts
 * cap_len). Returns 0 when pushed, < 0 when the ring is full or the copy
 * failed. */
static __always_inline int ss_push(void *ctx, struct ss_event_hdr *ev, __u64 cap_len, const __u32 size,
				   int dir, __u64 wake)
{
	void *rec = ss_events.ringbuf_reserve(sizeof(*ev) + size);
	long err;

	/* One more try: besides a full ring, a reservation fails now and then
	 * under contention for the ring's lock (shared by all CPUs); a second
	 * try takes most of those (docs/benchmarks.md, section 1). */
	if (!rec)
		rec = ss_events.ringbuf_reserve(sizeof(*ev) + size);
	if (!rec)
		return -1;
	__builtin_memcpy(rec, ev, sizeof(*ev));
	err = ss_load_bytes(ctx, rec + sizeof(*ev), ss_clamp(cap_len, size), dir);
	if (err < 0) {
		ss_events.ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
		return -1;
	}
	ss_events.ringbuf_submit(rec, wake);
	return 0;
}

/* The headers of one frame into pkt: SS_PARSED_TCP for a TCP segment, else
 * the counter (enum ss_counter) it leaves with. */
#define SS_PARSED_TCP (-1)
static __always_inline int ss_parse(void *data, void *data_end, __u32 wire_len, struct ss_pkt *pkt)
{
	struct hdr_cursor nh = {.pos = data};
	int proto = parse_ethhdr(&nh, data_end);

	if (proto < 0)
		return SS_CNT_PARSE_ERROR;
	if (proto == bpf_htons(ETH_P_IP))
		proto = parse_ipv4(&nh, data, data_end, wire_len, pkt);
	else if (proto == bpf_htons(ETH_P_IPV6))
		proto = parse_ipv6(&nh, data, data_end, wire_len, pkt);
	else
		return SS_CNT_NOT_IP;
	if (proto == SS_PARSE_FRAGMENT)
		return SS_CNT_FRAGMENT;
	if (proto < 0)
		return SS_CNT_PARSE_ERROR;
	if (proto != IPPROTO_TCP)
		return SS_CNT_NOT_TCP;
	if (parse_tcphdr(&nh, data, data_end, pkt) < 0)
		return SS_CNT_PARSE_ERROR;
	return SS_PARSED_TCP;
}

/* Decide what to do with one frame; returns the enum ss_counter it leaves
 * with. Pushes the event itself when that is the verdict. ehlo: SS_EHLO_*,
 * whether ss_tc_ehlo has looked at (and maybe rewritten) this packet. */
static __always_inline int ss_process(void *ctx, void *data, void *data_end, __u32 wire_len,
				      __u32 ifindex, int dir, int ehlo)
{
	struct ss_pkt pkt = {}; /* zeroed: the key's padding is part of the hash */
	struct ss_config *cfg;
	struct ss_verdict *v;
	__u32 zero = 0, flags = 0, snaplen = SS_SNAPLEN_MAX, hold_max_ms = SS_HOLD_MAX_MS_DEFAULT, cap_len;
	__u8 hold = 0; /* SS_EVF_HELD / _RELEASED / _HOLD_TIMEOUT for a commit candidate */
	__u64 wake = 0; /* adaptive: wake the reader if it has read everything before */
	int proto, err;

	proto = ss_parse(data, data_end, wire_len, &pkt);
	if (proto != SS_PARSED_TCP)
		return proto;
	if (!ss_is_smtp_port(pkt.key.dport) && !ss_is_smtp_port(pkt.key.sport))
		return SS_CNT_NOT_SMTP;

	cfg = ss_config.lookup(&zero);
	if (cfg) {
		flags = cfg->flags;
		if (cfg->snaplen && cfg->snaplen < SS_SNAPLEN_MAX)
			snaplen = cfg->snaplen;
		if (cfg->hold_max_ms)
			hold_max_ms = cfg->hold_max_ms;
	}

	if (!(flags & SS_CFG_NO_ENFORCE)) {
		if (ss_banned(&pkt, wire_len, dir))
			return SS_CNT_DROP_BAN;
		v = ss_flow_drop.lookup(&pkt.key);
		if (v && ss_verdict_live(v, wire_len, dir))
			return SS_CNT_DROP_FLOW;
	}
	v = ss_bypass.lookup(&pkt.key);
	if (v && ss_verdict_live(v, wire_len, dir))
		return SS_CNT_BYPASSED;
	if (flags & SS_CFG_NO_PUSH)
		return SS_CNT_NO_PUSH;
	if (pkt.payload_len == 0 && !(pkt.tcp_flags & (SS_TCP_SYN | SS_TCP_FIN | SS_TCP_RST)))
		return SS_CNT_PURE_ACK;
	if ((flags & (SS_CFG_HOLD | SS_CFG_NO_ENFORCE)) == SS_CFG_HOLD) {
		if (dir == SS_DIR_INGRESS && ss_is_smtp_port(pkt.key.dport))
			hold = ss_hold_client(ctx, &pkt, hold_max_ms);
		else if (ss_is_smtp_port(pkt.key.sport)) {
			if (ehlo == SS_EHLO_REWRITTEN)
				ss_count(dir, SS_CNT_EHLO_REWRITTEN);
			else if (ss_hold_server(ctx, &pkt, dir) && ehlo == SS_EHLO_UNSEEN)
				ss_tail.call(ctx, 0); /* ss_tc_ehlo; if the call fails, on unchanged */
		}
	}

	struct ss_event_hdr ev = {};

	cap_len = wire_len;
	if (cap_len > snaplen) {
		cap_len = snaplen;
		ev.flags |= SS_EVF_CUT;
	}
	ev.flags |= hold;
	ev.version = SS_ABI_VERSION;
	ev.direction = dir;
	ev.ifindex = ifindex;
	ev.ts_ns = bpf_ktime_get_ns();
	ev.wire_len = wire_len;
	ev.cap_len = cap_len;
	__builtin_memcpy(ev.saddr, pkt.key.saddr, 16);
	__builtin_memcpy(ev.daddr, pkt.key.daddr, 16);
	ev.sport = pkt.key.sport;
	ev.dport = pkt.key.dport;
	ev.seq = pkt.seq;
	ev.ack = pkt.ack;
	ev.payload_off = pkt.payload_off;
	ev.l3_off = pkt.l3_off;
	ev.payload_len = pkt.payload_len;
	ev.family = pkt.key.family;
	ev.tcp_flags = pkt.tcp_flags;
	/* A wakeup costs the sending CPU an irq_work (a self-IPI). Batched:
	 * every SS_WAKE_BATCH-th record pushed on this CPU. */
	if (flags & SS_CFG_WAKE_BATCH) {
		__u32 idx = dir * SS_CNT__MAX + SS_CNT_PUSHED;
		__u64 *pushed = ss_counters.lookup(&idx);

		wake = pushed && *pushed % SS_WAKE_BATCH == SS_WAKE_BATCH - 1 ? BPF_RB_FORCE_WAKEUP
									     : BPF_RB_NO_WAKEUP;
	}
	if (cap_len <= 128)
		err = ss_push(ctx, &ev, cap_len, 128, dir, wake);
	else if (cap_len <= 256)
		err = ss_push(ctx, &ev, cap_len, 256, dir, wake);
	else if (cap_len <= 512)
		err = ss_push(ctx, &ev, cap_len, 512, dir, wake);
	else if (cap_len <= 1024)
		err = ss_push(ctx, &ev, cap_len, 1024, dir, wake);
	else if (cap_len <= 1536)
		err = ss_push(ctx, &ev, cap_len, 1536, dir, wake);
	else if (cap_len <= 2048)
		err = ss_push(ctx, &ev, cap_len, 2048, dir, wake);
	else if (cap_len <= 4096)
		err = ss_push(ctx, &ev, cap_len, 4096, dir, wake);
	else if (cap_len <= 9216)
		err = ss_push(ctx, &ev, cap_len, 9216, dir, wake);
	else if (cap_len <= 16384)
		err = ss_push(ctx, &ev, cap_len, 16384, dir, wake);
	else if (cap_len <= 32768)
		err = ss_push(ctx, &ev, cap_len, 32768, dir, wake);
	else
		err = ss_push(ctx, &ev, cap_len, SS_SNAPLEN_MAX, dir, wake);
	if (hold == SS_EVF_RELEASED)
		ss_count(dir, SS_CNT_RELEASED);
	else if (hold == SS_EVF_HOLD_TIMEOUT)
		ss_count(dir, SS_CNT_HOLD_TIMEOUT);
	/* held whether or not the push worked: without it, the retransmission
	 * is pushed (and held) instead */
	if (hold == SS_EVF_HELD)
		return SS_CNT_HELD;
	if (err < 0)
		return SS_CNT_PUSH_FAILED;
	if (ev.flags & SS_EVF_CUT)
		ss_count(dir, SS_CNT_CUT);
	return SS_CNT_PUSHED;
}

static __always_inline int ss_is_drop(int counter)
{
	return counter == SS_CNT_DROP_BAN || counter == SS_CNT_DROP_FLOW || counter == SS_CNT_HELD;
}

int ss_xdp_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int counter = ss_process(ctx, data, data_end, data_end - data, ctx->ingress_ifindex,
				 SS_DIR_INGRESS, SS_EHLO_UNSEEN);

	ss_count(SS_DIR_INGRESS, counter);
	return ss_is_drop(counter) ? XDP_DROP : XDP_PASS;
}

int ss_tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int counter = ss_process(skb, data, data_end, skb->len, skb->ifindex, SS_DIR_EGRESS, SS_EHLO_UNSEEN);

	ss_count(SS_DIR_EGRESS, counter);
	return ss_is_drop(counter) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Tail-called by ss_tc_egress for a segment that may be an EHLO reply with
 * CHUNKING: mask it (hold.h), then the rest of the egress path on the
 * rewritten packet. */
int ss_tc_ehlo(struct __sk_buff *skb)
{
	struct ss_pkt pkt = {};
	int ehlo, counter;

	ehlo = ss_parse((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, &pkt) == SS_PARSED_TCP &&
			       ss_tc_mask_chunking(skb, &pkt)
		       ? SS_EHLO_REWRITTEN
		       : SS_EHLO_SEEN;
	/* the store may have moved the packet: read its pointers anew */
	counter = ss_process(skb, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, skb->ifindex,
			     SS_DIR_EGRESS, ehlo);
	ss_count(SS_DIR_EGRESS, counter);
	return ss_is_drop(counter) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Only XDP_PASS: run by userland with BPF_PROG_TEST_RUN in live-frames mode
 * to put a released frame into the stack at once, as if it had just arrived
 * (sensor/kernel/inject.py), instead of waiting for the client to resend it. */
int ss_xdp_inject(struct xdp_md *ctx)
{
	return XDP_PASS;
}

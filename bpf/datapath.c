/* SPDX-License-Identifier: GPL-2.0 */
/* datapath.c - the kernel fast path: XDP on ingress, TC clsact on egress.
 *
 * One packet: parse (parsing.h) -> not SMTP? pass -> dropped flow? drop (or
 * reset) -> banned source? drop -> bypassed flow? pass -> pure ACK? pass -> push the
 * metadata (smtp_sensor.h: struct ss_event_hdr) and the frame bytes into the
 * event ring -> pass. Every path returns a counter index from ss_process()
 * and leaves through ss_xdp_ingress()/ss_tc_egress(), which count it.
 *
 * The commit hold (SS_CFG_HOLD; hold.h): a client -> server segment on XDP
 * ingress that can complete a message is pushed but dropped until userland
 * releases it (or hold_max_ms pass); TCP retransmits it. So a verdict
 * userland reaches while judging the message comes before the MTA commits it.
 *
 * Teardown (SS_VF_RESET in a flow drop entry; teardown.h): a packet of the
 * flow is not dropped silently but rewritten into the RST that one end
 * accepts from exactly that packet; ss_reset_how() chooses which, and a
 * client SYN after the server got its RST ends the drop (a new connection).
 * docs/architecture.md, "Teardown".
 *
 * The event ring is a BPF ring buffer, one for all CPUs: a record is reserved,
 * filled in place and submitted, which costs a fraction of a perf buffer's
 * bpf_perf_event_output() per event (docs/benchmarks.md, section 1). With
 * SS_WORKERS > 1 there is one ring per worker process, in the array of maps
 * ss_rings, and a packet goes into the ring of its client's worker
 * (shard.h; a fragment without ports into both of its addresses' rings).
 *
 * Compiled by bcc at start (sensor/kernel/datapath.py; `smtp-sensor run
 * --ebpf` prints what it compiles). Build parameters arrive as -D cflags,
 * all required:
 *   SS_PIN_DIR     "/sys/fs/bpf/smtp-sensor/v2": where enforcement maps are pinned
 *   SS_RING_PAGES  size of each event ring in pages (a power of two)
 *   SS_WORKERS     worker processes, each reading its own event ring (1 ... SS_WORKERS_MAX)
 *
 * Read next: sensor/kernel/ring.py, the reader of the event ring.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "smtp_sensor.h"
#include "parsing.h"
#include "teardown.h"

#ifndef SS_PIN_DIR
#error "SS_PIN_DIR must be set (-DSS_PIN_DIR=\"/sys/fs/bpf/...\")"
#endif

#ifndef SS_RING_PAGES
#error "SS_RING_PAGES must be set (-DSS_RING_PAGES=2048)"
#endif

#ifndef SS_WORKERS
#error "SS_WORKERS must be set (-DSS_WORKERS=1)"
#endif
#if SS_WORKERS < 1 || SS_WORKERS > SS_WORKERS_MAX
#error "SS_WORKERS must be between 1 and SS_WORKERS_MAX"
#endif

/* Records: struct ss_event_hdr followed by the frame bytes (padded). */
BPF_RINGBUF_OUTPUT(ss_events, SS_RING_PAGES);
#if SS_WORKERS > 1
/* Worker w's ring is ss_rings[w]: slot 0 holds ss_events, the others rings
 * of the same size made and put there by userland (sensor/kernel/datapath.py)
 * before anything is attached. */
BPF_ARRAY_OF_MAPS(ss_rings, "ss_events", SS_WORKERS);
#endif
BPF_PERCPU_ARRAY(ss_counters, __u64, SS_DIR__MAX * SS_CNT__MAX);
/* The SMTP port set: ss_ports[port] != 0. Changed by userland at run time. */
BPF_ARRAY(ss_ports, __u8, SS_PORT_MAX);
BPF_ARRAY(ss_config, struct ss_config, 1);
/* Events the ring refused, per direction of a flow (struct ss_loss), and
 * the ring's state (enum ss_ring_slot): SS_RING_PENDING, how many of those
 * no event has carried yet, so that while there are none a push costs no
 * lookup in ss_lost (an entry the LRU evicts before it is carried leaves it
 * above zero: pushes then look ss_lost up, which is slower, never wrong);
 * SS_RING_PRESSURE, set by a refusal, cleared by userland when it has read
 * the ring empty. */
BPF_TABLE("lru_hash", struct ss_flow_key, struct ss_loss, ss_lost, SS_FLOW_MAX);
/* Connections whose opening SYN was pushed (key: the client -> server
 * direction): under pressure, their events still go into the ring; those
 * of flows never seen opening (picked up mid-stream, or a flood of
 * segments without a handshake) do not. */
BPF_TABLE("lru_hash", struct ss_flow_key, __u8, ss_opened, SS_FLOW_MAX);
BPF_ARRAY(ss_ring_state, __u64, SS_RING__MAX - 1 + SS_WORKERS); /* a pressure slot per ring */
/* Verdicts per attached interface (smtp_sensor.h: struct ss_if_key). */
BPF_TABLE("percpu_hash", struct ss_if_key, struct ss_if_counters, ss_if_counters, SS_IF_MAX);
/* The egress path's tail calls (enum ss_tail_slot), set by userland after
 * loading (sensor/kernel/datapath.py). */
enum ss_tail_slot {
	SS_TAIL_EHLO = 0,       /* ss_tc_ehlo */
	SS_TAIL_AFTER_EHLO = 1, /* ss_tc_after_ehlo */
	SS_TAIL__MAX,
};
BPF_PROG_ARRAY(ss_tail, SS_TAIL__MAX);

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

_Static_assert((SS_CNT_VERDICT__MAX & (SS_CNT_VERDICT__MAX - 1)) == 0,
	       "the mask in ss_count_verdict needs a power of two");

/* A packet's exclusive verdict, per interface too unless it is a cheap pass. */
static __always_inline void ss_count_verdict(__u32 ifindex, int dir, int counter)
{
	ss_count(dir, counter);
	if (counter <= SS_CNT_NOT_SMTP || counter >= SS_CNT_VERDICT__MAX)
		return;
	struct ss_if_key key = {.ifindex = ifindex, .direction = dir};
	struct ss_if_counters *per_if = ss_if_counters.lookup(&key);

	if (per_if)
		per_if->verdicts[counter & (SS_CNT_VERDICT__MAX - 1)] += 1;
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
 * hand the helper an unclamped copy). The lower bound is an unsigned `> 0`:
 * the verifier of Debian 12's kernel (6.1) learns a minimum from it, not from
 * `!= 0`, and refuses a helper's size that may be 0. */
static __always_inline __u64 ss_clamp(__u64 len, __u64 max)
{
	asm volatile("if %[v] <= %[m] goto +1\n\t%[v] = %[m]\n\tif %[v] > 0 goto +1\n\t%[v] = 1"
		     : [v] "+r"(len) : [m] "r"(max));
	return len;
}

#include "hold.h" /* the commit hold: needs ss_clamp() */
#include "shard.h" /* the worker of a packet: needs ss_is_smtp_port() */

static __always_inline long ss_load_bytes(void *ctx, void *to, __u64 len, int dir)
{
	if (dir == SS_DIR_INGRESS)
		return bpf_xdp_load_bytes(ctx, 0, to, len);
	return bpf_skb_load_bytes(ctx, 0, to, len);
}

/* A record of `size` bytes in worker `worker`'s ring (ss_events with one
 * worker), or 0. The ring is looked up here, at each reservation, not once
 * for the push: a ring pointer live across the push's branches is one more
 * thing the verifier of 6.1 tells its states apart by. */
static __always_inline void *ss_reserve(__u32 worker, const __u32 size)
{
#if SS_WORKERS > 1
	void *ring = ss_rings.lookup(&worker);

	if (!ring)
		return 0;
	return bpf_ringbuf_reserve(ring, size, 0);
#else
	return ss_events.ringbuf_reserve(size);
#endif
}

/* One ring record of a size class: the header, then up to `size` frame
 * bytes. bpf_ringbuf_reserve() needs a constant size, so a frame goes into the
 * smallest class that holds it and the record is padded (userland trusts
 * cap_len). Returns 0 when pushed, < 0 when the ring is full or the copy
 * failed. */
static __always_inline int ss_push(void *ctx, struct ss_event_hdr *ev, __u64 cap_len, const __u32 size,
				   int dir, __u64 wake, __u32 worker)
{
	void *rec = ss_reserve(worker, sizeof(*ev) + size);
	long err;

	/* One more try: besides a full ring, a reservation fails now and then
	 * under contention for the ring's lock (shared by all CPUs); a second
	 * try takes most of those (docs/benchmarks.md, section 1). */
	if (!rec)
		rec = ss_reserve(worker, sizeof(*ev) + size);
	if (!rec)
		return -1;
	__builtin_memcpy(rec, ev, sizeof(*ev));
	err = ss_load_bytes(ctx, rec + sizeof(*ev), ss_clamp(cap_len, size), dir);
	if (err < 0) {
		bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
		return -1;
	}
	bpf_ringbuf_submit(rec, wake);
	return 0;
}

/* The ring refused the event of the direction `key`: one more for ss_lost. */
static __always_inline void ss_note_loss(struct ss_flow_key *key, __u8 tcp_flags)
{
	__u32 zero = SS_RING_PENDING;
	__u64 *pending;
	__u64 now = bpf_ktime_get_ns();
	__u32 syn = (tcp_flags & (SS_TCP_SYN | SS_TCP_ACK)) == SS_TCP_SYN ? SS_LOSS_SYN : 0;
	struct ss_loss *loss = ss_lost.lookup(key);

	if (loss) {
		__sync_fetch_and_add(&loss->events, 1);
		loss->last_ns = now;
		if (syn)
			loss->flags |= syn;
	} else {
		struct ss_loss fresh = {.events = 1, .last_ns = now, .flags = syn};

		if (ss_lost.update(key, &fresh))
			return;
	}
	pending = ss_ring_state.lookup(&zero);
	if (pending)
		__sync_fetch_and_add(pending, 1);
}

/* The event carried `lost` refused events of its direction: they are out of
 * ss_lost, and userland sees the direction again. */
static __always_inline void ss_loss_carried(struct ss_flow_key *key, __u32 lost)
{
	__u32 zero = SS_RING_PENDING;
	struct ss_loss *loss = ss_lost.lookup(key);
	__u64 *pending;

	if (!loss)
		return;
	loss->flags = 0;
	__sync_fetch_and_add(&loss->events, -(__s64)lost);
	pending = ss_ring_state.lookup(&zero);
	if (pending)
		__sync_fetch_and_add(pending, -(__s64)lost);
}

/* How many refused events of the direction `key` the next event carries.
 * Pointers into the maps are not kept across the push: the helpers after it
 * look them up again, which keeps the verifier's states few. */
static __always_inline __u32 ss_loss_to_carry(struct ss_flow_key *key)
{
	__u32 zero = SS_RING_PENDING;
	__u64 *pending = ss_ring_state.lookup(&zero);
	struct ss_loss *loss;

	if (!pending || !*pending)
		return 0;
	loss = ss_lost.lookup(key);
	if (!loss || !loss->events)
		return 0;
	return loss->events > 0xffffffffULL ? 0xffffffffU : (__u32)loss->events;
}

static __always_inline int ss_under_pressure(__u32 worker)
{
	__u32 slot = SS_RING_PRESSURE + worker;
	__u64 *pressure = ss_ring_state.lookup(&slot);

	return pressure && *pressure;
}

/* What a packet of a torn-down flow becomes (ss_reset_how). */
enum ss_reset_how {
	SS_RESET_DROP = 0,        /* dropped: nothing exact can be built from it */
	SS_RESET_PASS = 1,        /* passed unchanged */
	SS_RESET_NEW_CONN = 2,    /* a new connection: the drop entries are gone */
	SS_RESET_TO_RECEIVER = 3, /* rewritten into an RST to its receiver */
	SS_RESET_TO_SENDER = 4,   /* rewritten into an RST back to its sender */
};

static __always_inline void ss_reverse_key(struct ss_flow_key *rev, struct ss_flow_key *key)
{
	__builtin_memcpy(rev->saddr, key->daddr, 16);
	__builtin_memcpy(rev->daddr, key->saddr, 16);
	rev->sport = key->dport;
	rev->dport = key->sport;
	rev->family = key->family;
}

/* Under ring pressure, may this event go into the ring? SYN and FIN events
 * without payload, and every event of a connection whose opening SYN was
 * pushed; a lone RST or a segment of a flow never seen opening may not. */
static __always_inline int ss_pressure_pass(struct ss_pkt *pkt)
{
	struct ss_flow_key rev = {};

	if (!pkt->payload_len && (pkt->tcp_flags & (SS_TCP_SYN | SS_TCP_FIN)))
		return 1;
	if (ss_is_smtp_port(pkt->key.dport))
		return ss_opened.lookup(&pkt->key) != NULL;
	ss_reverse_key(&rev, &pkt->key);
	return ss_opened.lookup(&rev) != NULL;
}

/* The bookkeeping of one push (err < 0: refused; shed: refused under
 * pressure without trying). A refusal sets SS_RING_PRESSURE; a pushed
 * opening SYN makes its connection known (ss_opened). Not noted in ss_lost,
 * where they would crowd the losses that matter out of the LRU: what was
 * shed (segments of flows never seen opening: counted SS_CNT_SHED; userland
 * picks such a flow up mid-stream, partial, its missing bytes gaps), and a
 * lone RST (it ends a flow, which then ends by idle timeout, but carries
 * nothing a record holds). */
static __always_inline void ss_after_push(struct ss_pkt *pkt, __u32 lost, int err, int shed, int dir,
					  __u32 worker)
{
	if (err < 0) {
		__u32 slot = SS_RING_PRESSURE + worker;
		__u64 *pressure = ss_ring_state.lookup(&slot);

		if (pressure && !*pressure)
			*pressure = 1;
		if (shed)
			ss_count(dir, SS_CNT_SHED);
		else if (pkt->payload_len || !(pkt->tcp_flags & SS_TCP_RST))
			ss_note_loss(&pkt->key, pkt->tcp_flags);
		return;
	}
	if (lost)
		ss_loss_carried(&pkt->key, lost);
	if ((pkt->tcp_flags & (SS_TCP_SYN | SS_TCP_ACK)) == SS_TCP_SYN && ss_is_smtp_port(pkt->key.dport)) {
		__u8 one = 1;

		ss_opened.update(&pkt->key, &one);
	}
}

/* Push the event into worker `worker`'s ring, in the smallest size class
 * that holds cap_len, and do the push's bookkeeping (ss_after_push).
 * Returns what ss_push() does. */
static __always_inline int ss_push_to(void *ctx, struct ss_event_hdr *ev, struct ss_pkt *pkt, __u64 cap_len,
				      int dir, __u64 wake, __u32 worker, const int fragment)
{
#if SS_WORKERS > 1
	if (!ss_rings.lookup(&worker))
		return -1; /* not filled in by userland: nothing is attached before it is */
#endif
	/* Under pressure (the ring refused an event since userland last read
	 * it empty) only SYN and FIN events without payload and the events of
	 * connections seen opening are pushed (ss_pressure_pass): when userland
	 * falls behind, what room it frees goes to connections with a
	 * handshake, and to every connection's beginning and end, rather than
	 * to segments of flows nobody saw begin (a flood needs no handshake). */
	int err, shed = ss_under_pressure(worker) && !ss_pressure_pass(pkt);

	if (shed)
		err = -1;
	else if (fragment) {
		/* fewer classes (more padding) for the rare fragment, which may be
		 * pushed twice: the verifier walks each push once per state */
		if (cap_len <= 1536)
			err = ss_push(ctx, ev, cap_len, 1536, dir, wake, worker);
		else if (cap_len <= 9216)
			err = ss_push(ctx, ev, cap_len, 9216, dir, wake, worker);
		else
			err = ss_push(ctx, ev, cap_len, SS_SNAPLEN_MAX, dir, wake, worker);
	} else if (cap_len <= 128)
		err = ss_push(ctx, ev, cap_len, 128, dir, wake, worker);
	else if (cap_len <= 256)
		err = ss_push(ctx, ev, cap_len, 256, dir, wake, worker);
	else if (cap_len <= 512)
		err = ss_push(ctx, ev, cap_len, 512, dir, wake, worker);
	else if (cap_len <= 1024)
		err = ss_push(ctx, ev, cap_len, 1024, dir, wake, worker);
	else if (cap_len <= 1536)
		err = ss_push(ctx, ev, cap_len, 1536, dir, wake, worker);
	else if (cap_len <= 2048)
		err = ss_push(ctx, ev, cap_len, 2048, dir, wake, worker);
	else if (cap_len <= 4096)
		err = ss_push(ctx, ev, cap_len, 4096, dir, wake, worker);
	else if (cap_len <= 9216)
		err = ss_push(ctx, ev, cap_len, 9216, dir, wake, worker);
	else if (cap_len <= 16384)
		err = ss_push(ctx, ev, cap_len, 16384, dir, wake, worker);
	else if (cap_len <= 32768)
		err = ss_push(ctx, ev, cap_len, 32768, dir, wake, worker);
	else
		err = ss_push(ctx, ev, cap_len, SS_SNAPLEN_MAX, dir, wake, worker);
	ss_after_push(pkt, ev->lost, err, shed, dir, worker);
	return err;
}

/* The choice for one packet of a flow whose drop entry says SS_VF_RESET
 * (v: the entry of the packet's direction). The server must lose its socket
 * first, and only an RST at exactly its rcv_nxt does that:
 * - a packet from the server carries its rcv_nxt in its ACK field: it goes
 *   back to the server as the RST (exact), whatever came before;
 * - the client's first packet after the verdict (XDP) goes on to the server
 *   as the RST, with its own seq: the server's rcv_nxt, since nothing of the
 *   client's has passed since. A guess for the one case the server is silent
 *   (it has acknowledged everything and waits); where it is wrong the server
 *   answers with a challenge ACK, which is a server packet, above;
 * - the client's later packets go back to the client as its RST (exact):
 *   that it sends them at all says it has not had one yet;
 * - an RST passes (it ends what is being ended: the stack's own, or one of
 *   ours turned round into ingress that meets XDP again in generic mode);
 * - a client SYN: after the server had its exact RST (SS_VF_TORN on the
 *   server's direction) it is a new connection on the same ports, and the
 *   drop ends; before, it passes, and what the server answers (a challenge
 *   ACK from a live socket, a SYN-ACK from none) is a server packet, above.
 * Nothing of the client's payload reaches the server, and nothing of the
 * server's reaches the client. */
static __always_inline int ss_reset_how(struct ss_pkt *pkt, struct ss_verdict *v, int dir)
{
	int from_client = ss_is_smtp_port(pkt->key.dport);
	struct ss_flow_key rev = {};
	struct ss_verdict *back;
	__u32 other = 0;

	if (pkt->tcp_flags & SS_TCP_RST)
		return SS_RESET_PASS;
	if (!from_client)
		return pkt->tcp_flags & SS_TCP_ACK ? SS_RESET_TO_SENDER : SS_RESET_DROP;
	ss_reverse_key(&rev, &pkt->key);
	back = ss_flow_drop.lookup(&rev);
	if (back)
		other = back->flags;
	if ((pkt->tcp_flags & (SS_TCP_SYN | SS_TCP_ACK)) == SS_TCP_SYN) {
		if (!(other & SS_VF_TORN))
			return SS_RESET_PASS;
		ss_flow_drop.delete(&pkt->key);
		ss_flow_drop.delete(&rev);
		return SS_RESET_NEW_CONN;
	}
	if (!(pkt->tcp_flags & SS_TCP_ACK))
		return SS_RESET_DROP;
	if (dir == SS_DIR_INGRESS && !(other & SS_VF_TORN) && !(v->flags & SS_VF_GUESSED)) {
		v->flags |= SS_VF_GUESSED;
		return SS_RESET_TO_RECEIVER;
	}
	return SS_RESET_TO_SENDER;
}

/* A packet of a torn-down flow: rewritten, passed or dropped as
 * ss_reset_how() says. Returns 1 when it goes on as any packet (a new
 * connection), 0 when it is done; *action is then the program's return
 * value, or stays -1 (dropped). */
static __always_inline int ss_reset(void *ctx, struct ss_pkt *pkt, struct ss_verdict *v, int dir,
				    int *action)
{
	int how = ss_reset_how(pkt, v, dir);
	int from_server = !ss_is_smtp_port(pkt->key.dport);
	int act;

	if (how == SS_RESET_NEW_CONN) {
		ss_count(dir, SS_CNT_DROP_ENDED);
		return 1;
	}
	if (how == SS_RESET_PASS) {
		*action = dir == SS_DIR_INGRESS ? XDP_PASS : TC_ACT_OK;
		return 0;
	}
	if (how == SS_RESET_DROP)
		return 0;
	if (dir == SS_DIR_INGRESS)
		act = ss_rst_xdp(ctx, pkt, how == SS_RESET_TO_SENDER);
	else
		act = ss_rst_tc(ctx, pkt); /* TC sends RSTs to the sender only */
	if (act < 0)
		return 0;
	if (from_server)
		v->flags |= SS_VF_TORN; /* the server had its exact RST */
	ss_count(dir, SS_CNT_RESET);
	*action = act;
	return 0;
}

/* The headers of one frame into pkt: SS_PARSED_TCP for a TCP segment,
 * SS_PARSED_FRAG for an IP fragment of a TCP datagram (pkt->frag says which;
 * a first one has its ports if pkt->ports_known), else the counter (enum
 * ss_counter) it leaves with. */
#define SS_PARSED_TCP (-1)
#define SS_PARSED_FRAG (-2)
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
	if (proto == SS_PARSE_EXT_LIMIT)
		return SS_CNT_EXT_LIMIT;
	if (proto < 0)
		return SS_CNT_PARSE_ERROR;
	if (pkt->frag == SS_FRAG_LATER) {
		/* IPv6: the fragmentable part may begin with extension headers */
		if (proto == IPPROTO_TCP || (pkt->key.family == SS_AF_INET6 && ss_ipv6_ext(proto)))
			return SS_PARSED_FRAG;
		return SS_CNT_NOT_TCP;
	}
	if (proto != IPPROTO_TCP)
		return SS_CNT_NOT_TCP;
	if (pkt->frag == SS_FRAG_FIRST) {
		parse_tcp_ports(&nh, data_end, pkt);
		return SS_PARSED_FRAG;
	}
	if (parse_tcphdr(&nh, data, data_end, pkt) < 0)
		return SS_CNT_PARSE_ERROR;
	return SS_PARSED_TCP;
}

/* The event of a packet that is pushed (pkt: parsed; hold: SS_EVF_HELD /
 * _RELEASED / _HOLD_TIMEOUT or 0), into the ring of its worker (shard.h);
 * fragment: a compile-time 1 on the fragment path, the only one where a
 * packet may go to a second worker: elsewhere the verifier does not walk
 * that push at all. Returns the counter the packet leaves with. */
static __always_inline int ss_emit(void *ctx, struct ss_pkt *pkt, __u32 wire_len, __u32 ifindex, int dir,
				   __u32 snaplen, __u32 flags, __u8 hold, const int fragment)
{
	struct ss_event_hdr ev = {};
	__u32 cap_len = wire_len;
	__u64 wake = 0; /* adaptive: wake the reader if it has read everything before */
	int err;

	if (cap_len > snaplen) {
		cap_len = snaplen;
		ev.flags |= SS_EVF_CUT;
	}
	ev.flags |= hold;
	if (pkt->frag)
		ev.flags |= SS_EVF_FRAGMENT;
	ev.version = SS_ABI_VERSION;
	ev.direction = dir;
	ev.ifindex = ifindex;
	ev.ts_ns = bpf_ktime_get_ns();
	ev.wire_len = wire_len;
	ev.cap_len = cap_len;
	__builtin_memcpy(ev.saddr, pkt->key.saddr, 16);
	__builtin_memcpy(ev.daddr, pkt->key.daddr, 16);
	ev.sport = pkt->key.sport;
	ev.dport = pkt->key.dport;
	ev.seq = pkt->seq;
	ev.ack = pkt->ack;
	ev.payload_off = pkt->payload_off;
	ev.l3_off = pkt->l3_off;
	ev.payload_len = pkt->payload_len;
	ev.family = pkt->key.family;
	ev.tcp_flags = pkt->tcp_flags;
	/* events of this direction refused before: this one carries their count */
	ev.lost = ss_loss_to_carry(&pkt->key);
	/* A wakeup costs the sending CPU an irq_work (a self-IPI). Batched:
	 * every SS_WAKE_BATCH-th record pushed on this CPU. */
	if (flags & SS_CFG_WAKE_BATCH) {
		__u32 idx = dir * SS_CNT__MAX + SS_CNT_PUSHED;
		__u64 *pushed = ss_counters.lookup(&idx);

		wake = pushed && *pushed % SS_WAKE_BATCH == SS_WAKE_BATCH - 1 ? BPF_RB_FORCE_WAKEUP
									     : BPF_RB_NO_WAKEUP;
	}
	__u32 other, worker = ss_shard_take(&other);

	err = ss_push_to(ctx, &ev, pkt, cap_len, dir, wake, worker, fragment);
#if SS_WORKERS > 1
	if (fragment && other != worker) {
		ev.lost = 0; /* carried by the first push */
		if (ss_push_to(ctx, &ev, pkt, cap_len, dir, wake, other, fragment) < 0)
			err = -1;
	}
#endif
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
	if (pkt->frag)
		ss_count(dir, SS_CNT_FRAG_PUSHED);
	return SS_CNT_PUSHED;
}

/* Decide what to do with one frame; returns the enum ss_counter it leaves
 * with. Pushes the event itself when that is the verdict. ehlo: SS_EHLO_*,
 * whether ss_tc_ehlo has looked at (and maybe rewritten) this packet.
 * *action: the program's return value when the packet was rewritten into an
 * RST (teardown), else left -1 (the counter says drop or pass). */
static __always_inline int ss_process(void *ctx, void *data, void *data_end, __u32 wire_len,
				      __u32 ifindex, int dir, int ehlo, int *action)
{
	struct ss_pkt pkt = {}; /* zeroed: the key's padding is part of the hash */
	struct ss_config *cfg;
	struct ss_verdict *v;
	__u32 zero = 0, flags = 0, snaplen = SS_SNAPLEN_MAX, hold_max_ms = SS_HOLD_MAX_MS_DEFAULT;
	__u8 hold = 0; /* SS_EVF_HELD / _RELEASED / _HOLD_TIMEOUT for a commit candidate */
	int proto;

	proto = ss_parse(data, data_end, wire_len, &pkt);
	if (proto != SS_PARSED_TCP && proto != SS_PARSED_FRAG && proto != SS_CNT_EXT_LIMIT)
		return proto;
	/* a fragment without ports (a later one, or a first one too short to
	 * hold them) may belong to an SMTP flow: only its first tells */
	if ((proto == SS_PARSED_TCP || pkt.ports_known) && !ss_is_smtp_port(pkt.key.dport) &&
	    !ss_is_smtp_port(pkt.key.sport))
		return SS_CNT_NOT_SMTP;
	/* the worker whose ring gets the event (and a second one, a fragment's) */
	ss_shard_note(&pkt);

	cfg = ss_config.lookup(&zero);
	if (cfg) {
		flags = cfg->flags;
		if (cfg->snaplen && cfg->snaplen < SS_SNAPLEN_MAX)
			snaplen = cfg->snaplen;
		if (cfg->hold_max_ms)
			hold_max_ms = cfg->hold_max_ms;
	}

	/* Headers the parser does not follow to the end: what the receiver makes
	 * of them is unseen. Prevention drops them. */
	if (proto == SS_CNT_EXT_LIMIT)
		return flags & SS_CFG_NO_ENFORCE ? SS_CNT_EXT_LIMIT : SS_CNT_DROP_EXT_LIMIT;
	/* IP fragments (docs/architecture.md, "IP fragments"): prevention drops
	 * the first one of an SMTP datagram, the only one with ports, so the
	 * receiver never completes it; monitor only pushes every TCP fragment to
	 * userland's defragmenter, since the later ones cannot be told apart
	 * before their first arrives (and may arrive before it). */
	if (proto == SS_PARSED_FRAG) {
		if (!(flags & SS_CFG_NO_ENFORCE))
			return pkt.frag == SS_FRAG_FIRST ? SS_CNT_DROP_FRAG : SS_CNT_FRAGMENT;
		if (flags & SS_CFG_NO_PUSH)
			return SS_CNT_NO_PUSH;
		return ss_emit(ctx, &pkt, wire_len, ifindex, dir, snaplen, flags, 0, 1);
	}

	if (!(flags & SS_CFG_NO_ENFORCE)) {
		/* the flow's drop first: a ban tears the connections it finds open
		 * down through drops of those flows (sensor/rules/enforce.py) */
		v = ss_flow_drop.lookup(&pkt.key);
		if (v && ss_verdict_live(v, wire_len, dir) &&
		    (!(v->flags & SS_VF_RESET) || !ss_reset(ctx, &pkt, v, dir, action)))
			return SS_CNT_DROP_FLOW;
		if (ss_banned(&pkt, wire_len, dir))
			return SS_CNT_DROP_BAN;
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
			if (ss_hold_server(ctx, &pkt, dir) && ehlo == SS_EHLO_UNSEEN)
				ss_tail.call(ctx, SS_TAIL_EHLO); /* if the call fails, on unchanged */
		}
	}

	return ss_emit(ctx, &pkt, wire_len, ifindex, dir, snaplen, flags, hold, 0);
}

static __always_inline int ss_is_drop(int counter)
{
	return counter == SS_CNT_DROP_BAN || counter == SS_CNT_DROP_FLOW || counter == SS_CNT_HELD ||
	       counter == SS_CNT_DROP_FRAG || counter == SS_CNT_DROP_EXT_LIMIT;
}

int ss_xdp_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int action = -1;
	int counter = ss_process(ctx, data, data_end, data_end - data, ctx->ingress_ifindex,
				 SS_DIR_INGRESS, SS_EHLO_UNSEEN, &action);

	ss_count_verdict(ctx->ingress_ifindex, SS_DIR_INGRESS, counter);
	if (action >= 0)
		return action;
	return ss_is_drop(counter) ? XDP_DROP : XDP_PASS;
}

/* The egress path of a packet, `ehlo` saying whether ss_tc_ehlo has looked at it. */
static __always_inline int ss_tc_process(struct __sk_buff *skb, int ehlo)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int action = -1;
	int counter = ss_process(skb, data, data_end, skb->len, skb->ifindex, SS_DIR_EGRESS, ehlo, &action);

	ss_count_verdict(skb->ifindex, SS_DIR_EGRESS, counter);
	if (action >= 0)
		return action;
	return ss_is_drop(counter) ? TC_ACT_SHOT : TC_ACT_OK;
}

int ss_tc_egress(struct __sk_buff *skb)
{
	return ss_tc_process(skb, SS_EHLO_UNSEEN);
}

/* Tail-called by ss_tc_egress for a segment that may be an EHLO reply with
 * CHUNKING: mask it (hold.h), then the rest of the egress path on the
 * (maybe rewritten) packet in ss_tc_after_ehlo. Two programs, not one: each
 * is verified on its own, so the verifier walks ss_process once, not once
 * more for every state leaving the scan (together, with 2 workers, they take
 * 6.1's verifier past its 1 M instructions; docs/benchmarks.md, section 19). */
int ss_tc_ehlo(struct __sk_buff *skb)
{
	struct ss_pkt pkt = {};

	if (ss_parse((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, &pkt) == SS_PARSED_TCP &&
	    ss_tc_mask_chunking(skb, &pkt))
		ss_count(SS_DIR_EGRESS, SS_CNT_EHLO_REWRITTEN);
	ss_tail.call(skb, SS_TAIL_AFTER_EHLO);
	/* not reached while userland has filled ss_tail, which it does before
	 * attaching anything: the packet goes on unpushed */
	return TC_ACT_OK;
}

/* ss_tc_egress for a packet ss_tc_ehlo has looked at: SS_EHLO_SEEN, so it
 * is not handed to ss_tc_ehlo again. The store may have moved the packet:
 * its pointers are read anew here. The server's phase is set from the
 * reply a second time, to what the first pass set (the mask changes no
 * reply code). */
int ss_tc_after_ehlo(struct __sk_buff *skb)
{
	return ss_tc_process(skb, SS_EHLO_SEEN);
}

/* Only XDP_PASS: run by userland with BPF_PROG_TEST_RUN in live-frames mode
 * to put a released frame into the stack at once, as if it had just arrived
 * (sensor/kernel/inject.py), instead of waiting for the client to resend it. */
int ss_xdp_inject(struct xdp_md *ctx)
{
	return XDP_PASS;
}

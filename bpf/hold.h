/* SPDX-License-Identifier: GPL-2.0 */
/* hold.h - the commit hold: the kernel's half (userland's: sensor/inputs/hold.py).
 *
 * An MTA commits a message when the end of its data arrives. On XDP ingress,
 * with SS_CFG_HOLD, a client -> server segment that may be that end (a
 * "candidate") is pushed to userland but dropped, unless userland's release
 * point covers it or it has been held hold_max_ms already; TCP retransmits
 * it, and the copy after the release passes. A candidate is:
 *  - any segment with CR-dot or LF-dot, or beginning with a dot, CR or LF:
 *    every end of DATA an MTA may honour (CRLF.CRLF, LF.LF, CR.CR, mixes),
 *    however split over segments and in whatever order they come;
 *  - in the command phase of a flow the kernel saw open (ss_flow_state: the
 *    server's last reply was not 354), any segment that is not whole lines
 *    from where the client's next line starts, or that has a line beginning
 *    with B (BDAT: its chunk ends where its count says, not at a dot);
 *  - every segment of a flow whose release says SS_REL_HOLD_ALL (userland
 *    saw BDAT: the client's chunks may end in any segment).
 * The server's replies set the phase (354: data; 220 to a STARTTLS: no holds
 * from then on, the flow is encrypted; any other: commands), and,
 * leaving through TC egress, its EHLO reply has CHUNKING masked, so that
 * clients that keep to the protocol send DATA (docs/architecture.md, "The
 * commit hold", says what each piece closes).
 *
 * Read next: sensor/inputs/hold.py, which writes the release points.
 */
#ifndef SS_HOLD_H
#define SS_HOLD_H

#include "smtp_sensor.h"
#include "parsing.h"

/* Uses ss_clamp() of datapath.c, which includes this file after it. */

/* Not pinned: a hold lives for milliseconds, a flow's phase for its
 * connection. All keyed by the client -> server direction. */
BPF_TABLE("lru_hash", struct ss_flow_key, struct ss_release, ss_release, SS_FLOW_MAX);
BPF_TABLE("lru_hash", struct ss_flow_key, struct ss_hold, ss_hold, SS_FLOW_MAX);
BPF_TABLE("lru_hash", struct ss_flow_key, struct ss_flow_state, ss_flow_state, SS_FLOW_MAX);

/* Where an egress packet is in ss_tc_egress -> ss_tc_ehlo -> ss_tc_after_ehlo. */
enum ss_ehlo {
	SS_EHLO_UNSEEN = 0, /* not looked at: hand a possible EHLO reply to ss_tc_ehlo */
	SS_EHLO_SEEN = 1,   /* looked at by ss_tc_ehlo (and CHUNKING masked, if it was there) */
};

/* The server payload bytes read to find CHUNKING in an EHLO reply. */
#define SS_EHLO_SCAN 512
struct ss_scratch {
	__u8 b[SS_EHLO_SCAN];
	__u32 at; /* where the scan found the keyword (0: nowhere), read back from here */
	__u32 payload_off, payload_len, l4_off; /* the packet's, read back from here */
};
BPF_PERCPU_ARRAY(ss_scratch, struct ss_scratch, 1);

/* ------------------------------------------------------------ the client's bytes */

/* Byte masks of a little-endian word: the high bit of each byte that equals
 * the byte of `pattern` (an exact test: no false positives from borrows). */
#define SS_LOW7 0x7f7f7f7f7f7f7f7fULL
static __always_inline __u64 ss_bytes_equal(__u64 word, __u64 pattern)
{
	__u64 t = word ^ pattern;

	return ~(((t & SS_LOW7) + SS_LOW7) | t | SS_LOW7);
}

#define SS_DOTS 0x2e2e2e2e2e2e2e2eULL
#define SS_CRS 0x0d0d0d0d0d0d0d0dULL
#define SS_LFS 0x0a0a0a0a0a0a0a0aULL
#define SS_LOWER_BS 0x6262626262626262ULL /* 'b'; a byte | 0x20 is 'b' for B and b */
#define SS_CASE 0x2020202020202020ULL
#define SS_UPPER 0xdfdfdfdfdfdfdfdfULL       /* a letter & 0xdf is its upper case */
#define SS_STARTTLS 0x534c545452415453ULL    /* "STARTTLS", little-endian */
#define SS_CHUNKING 0x474e494b4e554843ULL    /* "CHUNKING" */

/* What ss_xdp_scan found in a client segment. */
#define SS_SCAN_DOT 0x1     /* CR-dot or LF-dot, or a first byte dot, CR or LF */
#define SS_SCAN_BLINE 0x2   /* a line begins with B or b (the first byte counts) */
#define SS_SCAN_LAST_LF 0x4 /* the last byte is LF: the segment ends a line */

static __always_inline int ss_is_eol(__u8 c)
{
	return c == '\r' || c == '\n';
}

/* 1 if byte c equals k, else 0, without a branch (BPF has no conditional
 * set: a compare is a jump, and jumps in a loop multiply the verifier's paths). */
static __always_inline __u64 ss_byte_is(__u64 c, __u64 k)
{
	return ((c ^ k) - 1) >> 63;
}

/* Read a client segment's payload 8 bytes at a time; returns SS_SCAN_*. A
 * payload longer than SS_HOLD_SCAN_MAX, or not in the frame, is reported
 * as SS_SCAN_DOT unread (held: what cannot be read is not let through).
 * The loops branch only to end: what they find is accumulated in masks.
 * They count with i, which the verifier follows to their end; `words` and
 * `tail` are opaque to clang, which would otherwise drop i. */
static __always_inline int ss_xdp_scan(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 dots, bs = 0;               /* non-zero: a candidate byte was seen */
	__u64 eol_carry, lf_carry, c;     /* 0x80: the byte before was CR/LF, LF */
	__u32 i, words, tail;
	__u8 *p;

	/* headers end far below 2 KiB; the bound lets the verifier follow p */
	if (len > SS_HOLD_SCAN_MAX || off >= 2048)
		return SS_SCAN_DOT;
	p = data + (off & 2047);
	if ((void *)(p + 1) > data_end)
		return SS_SCAN_DOT;
	/* the first byte: a dot, CR or LF there is a candidate, and a line
	 * may begin there (a B counts) */
	c = *p;
	dots = ss_byte_is(c, '.') | ss_byte_is(c, '\r') | ss_byte_is(c, '\n');
	eol_carry = 0;
	lf_carry = 0x80;
	words = len / 8;
	tail = len % 8;
	for (i = 0; i < SS_HOLD_SCAN_MAX / 8; i++) {
		__u64 word, lf, eol;

		asm volatile("" : "+r"(words));
		if (i >= words || (void *)(p + 8) > data_end)
			break;
		word = *(__u64 *)p;
		lf = ss_bytes_equal(word, SS_LFS);
		eol = lf | ss_bytes_equal(word, SS_CRS);
		dots |= ((eol << 8) | eol_carry) & ss_bytes_equal(word, SS_DOTS);
		bs |= ((lf << 8) | lf_carry) & ss_bytes_equal(word | SS_CASE, SS_LOWER_BS);
		eol_carry = eol >> 56;
		lf_carry = lf >> 56;
		p += 8;
	}
	for (i = 0; i < 8; i++) {
		asm volatile("" : "+r"(tail));
		if (i >= tail || (void *)(p + 1) > data_end)
			break;
		c = *p;
		dots |= ss_byte_is(c, '.') & (eol_carry >> 7);
		bs |= ss_byte_is(c | 0x20, 'b') & (lf_carry >> 7);
		lf_carry = ss_byte_is(c, '\n') << 7;
		eol_carry = lf_carry | (ss_byte_is(c, '\r') << 7);
		p += 1;
	}
	/* lf_carry holds the payload's last byte: a line ends there */
	return (dots ? SS_SCAN_DOT : 0) | (bs ? SS_SCAN_BLINE : 0) |
	       (lf_carry && len ? SS_SCAN_LAST_LF : 0);
}

/* Is the segment exactly "STARTTLS\r\n" (any case)? A client that keeps to
 * the protocol sends it alone and waits for the reply. */
static __always_inline int ss_xdp_is_starttls(struct xdp_md *ctx, struct ss_pkt *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p;

	if (pkt->payload_len != 10 || pkt->payload_off >= 2048)
		return 0;
	p = data + (pkt->payload_off & 2047);
	if ((void *)(p + 10) > data_end)
		return 0;
	return (*(__u64 *)p & SS_UPPER) == SS_STARTTLS && p[8] == '\r' && p[9] == '\n';
}

/* A candidate not yet released: held, or passed if its hold (by its first
 * sequence number: a TCP retransmission starts where the lost segment did)
 * is hold_max_ms old. Returns SS_EVF_HELD or SS_EVF_HOLD_TIMEOUT. */
static __always_inline __u8 ss_hold_or_timeout(struct ss_pkt *pkt, __u32 end, __u32 hold_max_ms)
{
	__u64 now = bpf_ktime_get_ns();
	struct ss_hold *held = ss_hold.lookup(&pkt->key);

	if (held && held->seq == pkt->seq) {
		if (now - held->since_ns >= (__u64)hold_max_ms * 1000000)
			return SS_EVF_HOLD_TIMEOUT;
		if ((__s32)(end - held->end) > 0)
			held->end = end;
		return SS_EVF_HELD;
	}
	struct ss_hold fresh = {.since_ns = now, .seq = pkt->seq, .end = end};

	ss_hold.update(&pkt->key, &fresh);
	return SS_EVF_HELD;
}

/* Is this client segment a candidate, given what the scan found? */
static __always_inline int ss_is_candidate(struct ss_pkt *pkt, __u32 end, int scan,
					   struct ss_release *rel, struct ss_flow_state *st)
{
	if (st && st->phase == SS_PHASE_TLS)
		return 0;
	if (scan & SS_SCAN_DOT)
		return 1;
	if (rel && (rel->flags & SS_REL_HOLD_ALL))
		return 1;
	if (!st || st->phase != SS_PHASE_COMMAND)
		return 0;
	if (st->line_known && (__s32)(end - st->line_seq) <= 0)
		return 0; /* bytes before the next line: a retransmission of what passed */
	if (rel && (rel->flags & SS_REL_AT_LINE) && pkt->seq == rel->seq)
		return (scan & SS_SCAN_BLINE) || !(scan & SS_SCAN_LAST_LF); /* a line starts here */
	return !st->line_known || pkt->seq != st->line_seq || (scan & SS_SCAN_BLINE) ||
	       !(scan & SS_SCAN_LAST_LF);
}

/* A client -> server segment on XDP ingress, the hold on: returns 0 (not a
 * candidate), SS_EVF_RELEASED, SS_EVF_HOLD_TIMEOUT or SS_EVF_HELD. Keeps
 * the flow's line position for the command phase. */
static __always_inline __u8 ss_hold_client(struct xdp_md *ctx, struct ss_pkt *pkt, __u32 hold_max_ms)
{
	__u32 end = pkt->seq + pkt->payload_len;
	struct ss_flow_state *st;
	struct ss_release *rel;
	__u8 verdict = 0;
	int scan;

	if ((pkt->tcp_flags & (SS_TCP_SYN | SS_TCP_ACK)) == SS_TCP_SYN) {
		/* a new connection: an old one's release means nothing in its
		 * sequence space; its first line starts after the SYN */
		struct ss_flow_state fresh = {.line_seq = pkt->seq + 1, .line_known = 1,
					      .phase = SS_PHASE_COMMAND};

		ss_release.delete(&pkt->key);
		ss_hold.delete(&pkt->key);
		ss_flow_state.update(&pkt->key, &fresh);
		return 0;
	}
	if (!pkt->payload_len)
		return 0;
	/* first: the verifier follows the scan once per state that reaches it */
	scan = ss_xdp_scan(ctx, pkt->payload_off, pkt->payload_len);
	rel = ss_release.lookup(&pkt->key);
	st = ss_flow_state.lookup(&pkt->key);
	if (ss_is_candidate(pkt, end, scan, rel, st)) {
		if (rel && (__s32)(end - rel->seq) <= 0)
			verdict = SS_EVF_RELEASED;
		else
			verdict = ss_hold_or_timeout(pkt, end, hold_max_ms);
	}
	if (verdict != SS_EVF_HELD && st && (!st->line_known || (__s32)(end - st->line_seq) > 0)) {
		if (st->phase == SS_PHASE_COMMAND && st->line_known && pkt->seq == st->line_seq &&
		    ss_xdp_is_starttls(ctx, pkt))
			st->phase = SS_PHASE_STARTTLS;
		st->line_seq = end;
		st->line_known = (scan & SS_SCAN_LAST_LF) ? 1 : 0;
	}
	return verdict;
}

/* ------------------------------------------------------------ the server's replies */

static __always_inline long ss_load_at(void *ctx, __u32 off, void *to, __u32 len, int dir)
{
	if (dir == SS_DIR_INGRESS)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

/* The reply code of a server segment's last line (a 354 ends its group of
 * pipelined replies, so it is last), or 0 when there is none to read. */
#define SS_TAIL 64
static __always_inline int ss_last_reply_code(void *ctx, struct ss_pkt *pkt, int dir)
{
	__u8 buf[SS_TAIL];
	__u32 n = pkt->payload_len < SS_TAIL ? pkt->payload_len : SS_TAIL;
	int start = -1, k;

	if (n < 4)
		return 0;
	asm volatile("if %[n] <= %[m] goto +1\n\t%[n] = %[m]" : [n] "+r"(n) : [m] "i"(SS_TAIL));
	if (ss_load_at(ctx, pkt->payload_off + pkt->payload_len - n, buf, n, dir) < 0)
		return 0;
	for (k = SS_TAIL - 2; k >= 0; k--) {
		if (k > (int)n - 2)
			continue;
		if (buf[k & (SS_TAIL - 1)] == '\n') {
			start = k + 1;
			break;
		}
	}
	if (start < 0) {
		if (n != pkt->payload_len)
			return 0; /* a last line longer than SS_TAIL: not a 354 or 220 */
		start = 0;
	}
	if (start > SS_TAIL - 4 || start + 3 > (int)n)
		return 0;
	return (buf[start] - '0') * 100 + (buf[(start + 1) & (SS_TAIL - 1)] - '0') * 10 +
	       (buf[(start + 2) & (SS_TAIL - 1)] - '0');
}

/* One's complement fold of a 32-bit sum to the 16 bits of a checksum. */
static __always_inline __u16 ss_csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)((sum & 0xffff) + (sum >> 16));
}

/* 1 if the 64-bit words a and b are equal, else 0, without a branch. */
static __always_inline __u64 ss_word_is(__u64 a, __u64 b)
{
	__u64 t = a ^ b;

	return ((t | -t) >> 63) ^ 1;
}

/* 1 if a line "250-CHUNKING" or "250 CHUNKING", then CR, LF or a space,
 * starts after an LF at b[0], else 0 (b[0 ... 13] are read). Arithmetic
 * only: one compare in the scan's turn is one more path for the verifier
 * to walk, 496 times. */
static __always_inline __u64 ss_chunking_line(__u8 *b)
{
	__u64 sep = b[4], end = b[13];

	return ss_byte_is(b[0], '\n') & ss_byte_is(b[1], '2') & ss_byte_is(b[2], '5') & ss_byte_is(b[3], '0') &
	       (ss_byte_is(sep, '-') | ss_byte_is(sep, ' ')) &
	       ss_word_is(*(__u64 *)&b[5] & SS_UPPER, SS_CHUNKING) &
	       (ss_byte_is(end, '\r') | ss_byte_is(end, '\n') | ss_byte_is(end, ' '));
}

/* An EHLO reply leaving through TC: mask the CHUNKING keyword in place
 * (same length, "XXXXXXXX", TCP checksum updated), so the client sends
 * DATA, whose end the hold sees. Returns 1 when rewritten. */
static __always_inline int ss_tc_mask_chunking(struct __sk_buff *skb, struct ss_pkt *pkt)
{
	__u32 zero = 0, len, off, i, at, start;
	struct ss_scratch *s = ss_scratch.lookup(&zero);
	__u8 old[16], new[16];
	__u32 diff;

	if (!s)
		return 0;
	/* The packet's offsets through the map: read back, they are the same
	 * unknown numbers whatever path the parser took, so the verifier walks
	 * the scan once, not once per parsing path. */
	s->payload_off = pkt->payload_off;
	s->payload_len = pkt->payload_len;
	s->l4_off = pkt->l4_off;
	len = *(volatile __u32 *)&s->payload_len;
	off = *(volatile __u32 *)&s->payload_off;
	if (len < 16 || len > SS_EHLO_SCAN)
		return 0;
	if (bpf_skb_load_bytes(skb, off, s->b, ss_clamp(len, SS_EHLO_SCAN)) < 0)
		return 0;
	if (s->b[0] != '2' || s->b[1] != '5' || s->b[2] != '0' || s->b[3] != '-')
		return 0; /* not the first segment of a multi-line 250 reply */
	at = 0;
	for (i = 4; i < SS_EHLO_SCAN - 16; i++) {
		__u32 k = i & (SS_EHLO_SCAN - 1), turn = i;

		/* The loop's end tested on a copy of i opaque to clang, which
		 * otherwise folds both end tests into a count of turns made from
		 * len and ends on equality: older verifiers (6.1, Debian 12's)
		 * learn no bound from each turn's !=, so 6.1 walks i past the end
		 * of s->b ("invalid access to map value"); 6.18 narrows the count
		 * and stops. */
		asm volatile("" : "+r"(turn));
		if (turn >= SS_EHLO_SCAN - 16 || i + 14 > len)
			break;
		if (ss_chunking_line(&s->b[k])) {
			at = k + 5;
			break;
		}
	}
	if (!at)
		return 0;
	/* where, and the length, through the map: the verifier then walks
	 * what follows once for any place, not once for each */
	s->at = at;
	at = *(volatile __u32 *)&s->at;
	len = *(volatile __u32 *)&s->payload_len;
	/* rewrite 12 bytes from an even offset (the checksum's 16-bit words),
	 * within the payload: the keyword is followed by at least CRLF */
	start = (at & ~1U) - 2;
	if (start + 12 > len || start > SS_EHLO_SCAN - 12)
		return 0;
	/* the same bound again, on the register the copy uses (clang tests a
	 * copy of start; the verifier would learn nothing about this one) */
	asm volatile("if %[s] <= %[m] goto +1\n\t%[s] = %[m]" : [s] "+r"(start) : [m] "i"(SS_EHLO_SCAN - 12));
	__builtin_memcpy(old, &s->b[start], 12);
	__builtin_memcpy(new, old, 12);
	/* the keyword starts 2 or 3 bytes in: constant indexes only (the
	 * verifier refuses a stack address made with a variable) */
#pragma unroll
	for (i = 2; i < 10; i++)
		new[i] = 'X';
	if (at - start == 3) {
		new[2] = old[2];
		new[10] = 'X';
	}
	/* No error test on the result: the helper fails only for sizes that are
	 * not multiples of 4. A test for < 0 would be wrong: bcc declares the
	 * helper int, and 6.1 returns the unfolded 32-bit sum (0xe1daccde for
	 * "50-chunking\r" into "50-XXXXXXXX\r": "negative"), where 6.18 returns
	 * it folded to 16 bits (0xaeb9). Either is a diff l4_csum_replace takes. */
	diff = (__u32)bpf_csum_diff((__be32 *)old, 12, (__be32 *)new, 12, 0);
	if (bpf_skb_store_bytes(skb, off + start, new, 12, 0) < 0)
		return 0;
	bpf_l4_csum_replace(skb, *(volatile __u32 *)&s->l4_off + 16, 0, (__u32)diff, 0);
	return 1;
}

/* A server -> client segment, the hold on: the client's phase follows the
 * server's last reply. Returns 1 when it may be an EHLO reply with
 * CHUNKING: the first segment of a multi-line 250 reply leaving through TC,
 * which ss_tc_egress then hands to ss_tc_ehlo (a tail call: the keyword's
 * search, verified there once instead of once per parsing path here). */
static __always_inline int ss_hold_server(void *ctx, struct ss_pkt *pkt, int dir)
{
	struct ss_flow_key client = {};
	struct ss_flow_state *st;
	__u8 head[4];
	int k;

	if (!pkt->payload_len)
		return 0;
	/* byte by byte: a memcpy of these 2-aligned arrays becomes an alignment
	 * test on the pointers, which the verifier refuses */
#pragma unroll
	for (k = 0; k < 16; k++) {
		client.saddr[k] = pkt->key.daddr[k];
		client.daddr[k] = pkt->key.saddr[k];
	}
	client.sport = pkt->key.dport;
	client.dport = pkt->key.sport;
	client.family = pkt->key.family;
	st = ss_flow_state.lookup(&client);
	if (st && st->phase != SS_PHASE_TLS) {
		int code = ss_last_reply_code(ctx, pkt, dir);

		if (code == 354)
			st->phase = SS_PHASE_DATA;
		else if (code == 220 && st->phase == SS_PHASE_STARTTLS)
			st->phase = SS_PHASE_TLS;
		else
			st->phase = SS_PHASE_COMMAND;
	}
	if (dir != SS_DIR_EGRESS || pkt->payload_len < 16 || pkt->payload_len > SS_EHLO_SCAN)
		return 0;
	if (ss_load_at(ctx, pkt->payload_off, head, 4, dir) < 0)
		return 0;
	return head[0] == '2' && head[1] == '5' && head[2] == '0' && head[3] == '-';
}

#endif /* SS_HOLD_H */

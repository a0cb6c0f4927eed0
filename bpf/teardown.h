/* SPDX-License-Identifier: GPL-2.0 */
/* teardown.h - one packet of a torn-down flow rewritten in place into the RST
 * that one end of the connection accepts.
 *
 * The RST is built from a packet of the flow, never from nothing: its
 * addresses, ports and sequence numbers are that packet's, so no state is
 * needed but what the packet carries. Two shapes:
 *
 *   to its sender   addresses, ports and MACs swapped, seq = the packet's ACK
 *                   field (RFC 793 3.4, as a stack answers a segment for a
 *                   connection it does not have): exactly the sender's
 *                   rcv_nxt when it sent the packet, which is what Linux
 *                   accepts (RFC 5961 3.2; anything else in the window earns a
 *                   challenge ACK). XDP sends it back (XDP_TX); TC turns it
 *                   round into the host's ingress (bpf_redirect BPF_F_INGRESS).
 *   to its receiver same addresses, seq = the packet's own seq, RST|ACK: the
 *                   receiver's rcv_nxt when the packet is the next in order,
 *                   as it is when the datapath drops everything of the flow
 *                   from the verdict on. XDP only (XDP_PASS to the stack).
 *
 * Either way the TCP options and payload are cut (bpf_xdp_adjust_tail /
 * bpf_skb_change_tail), the IPv4 total length or IPv6 payload length follows,
 * the IPv4 header checksum is updated and the TCP checksum computed anew over
 * the pseudo-header and the 20-byte header. IPv4 options, IPv6 extension
 * headers and VLAN tags stay as they were. Which shape a packet gets is the
 * datapath's choice (datapath.c, ss_reset_how; docs/architecture.md,
 * "Teardown").
 *
 * Read next: datapath.c, which calls ss_rst_xdp() and ss_rst_tc().
 */
#ifndef SS_TEARDOWN_H
#define SS_TEARDOWN_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "parsing.h"

#define SS_RST_TTL 64       /* TTL / hop limit of an RST sent back to its sender */
#define SS_RST_L4_OFF_MAX 512 /* headers before TCP end far below this */
#define SS_RST_OFF_MASK 1023 /* covers every offset up to SS_RST_L4_OFF_MAX */

/* One's-complement sum of `len` bytes (even, a constant) of `buf`, 16 bits at
 * a time in the order they lie in memory (the sum does not depend on it). */
static __always_inline __u32 ss_rst_csum_add(__u32 sum, const void *buf, const int len)
{
	const __u16 *word = buf;

#pragma unroll
	for (int i = 0; i < len / 2; i++)
		sum += word[i];
	return sum;
}

/* The checksum field of a sum: folded to 16 bits and inverted. */
static __always_inline __u16 ss_rst_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* A checksum updated for one 16-bit word changed from `from` to `to`
 * (RFC 1624: HC' = ~(~HC + ~m + m')). */
static __always_inline __u16 ss_rst_csum_replace2(__u16 check, __u16 from, __u16 to)
{
	return ss_rst_csum_fold((__u16)~check + (__u16)~from + to);
}

/* The 20-byte RST header, its checksum included. */
static __always_inline void ss_rst_tcphdr(struct tcphdr *th, struct ss_pkt *pkt, int to_sender)
{
	__u32 sum = bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(*th));

	__builtin_memset(th, 0, sizeof(*th));
	th->doff = sizeof(*th) / 4;
	th->rst = 1;
	if (to_sender) {
		th->source = bpf_htons(pkt->key.dport);
		th->dest = bpf_htons(pkt->key.sport);
		th->seq = bpf_htonl(pkt->ack);
	} else {
		th->source = bpf_htons(pkt->key.sport);
		th->dest = bpf_htons(pkt->key.dport);
		th->seq = bpf_htonl(pkt->seq);
		th->ack_seq = bpf_htonl(pkt->ack);
		th->ack = 1;
	}
	/* the pseudo-header's sum is the same with the addresses swapped */
	if (pkt->key.family == SS_AF_INET) {
		sum = ss_rst_csum_add(sum, &pkt->key.saddr[12], 4);
		sum = ss_rst_csum_add(sum, &pkt->key.daddr[12], 4);
	} else {
		sum = ss_rst_csum_add(sum, pkt->key.saddr, 16);
		sum = ss_rst_csum_add(sum, pkt->key.daddr, 16);
	}
	th->check = ss_rst_csum_fold(ss_rst_csum_add(sum, th, sizeof(*th)));
}

/* The IPv4 header of the RST (in place or in a copy): total length, and when
 * it goes back to its sender, addresses swapped and a fresh TTL. */
static __always_inline void ss_rst_iphdr(struct iphdr *iph, __u32 tot_len, int to_sender)
{
	__u16 old = iph->tot_len;
	__be32 addr;

	iph->tot_len = bpf_htons(tot_len);
	iph->check = ss_rst_csum_replace2(iph->check, old, iph->tot_len);
	if (to_sender) {
		old = *(__u16 *)&iph->ttl;
		iph->ttl = SS_RST_TTL;
		iph->check = ss_rst_csum_replace2(iph->check, old, *(__u16 *)&iph->ttl);
		addr = iph->saddr;
		iph->saddr = iph->daddr;
		iph->daddr = addr;
	}
}

static __always_inline void ss_rst_ipv6hdr(struct ipv6hdr *ip6h, __u32 payload_len, int to_sender)
{
	struct in6_addr addr;

	ip6h->payload_len = bpf_htons(payload_len);
	if (to_sender) {
		ip6h->hop_limit = SS_RST_TTL;
		addr = ip6h->saddr;
		ip6h->saddr = ip6h->daddr;
		ip6h->daddr = addr;
	}
}

static __always_inline void ss_swap_macs(__u8 *eth)
{
	__u8 mac[ETH_ALEN];

	__builtin_memcpy(mac, eth, ETH_ALEN);
	__builtin_memcpy(eth, eth + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(eth + ETH_ALEN, mac, ETH_ALEN);
}

/* The IP header's offset, checked by the caller to be at most l4_off (itself
 * at most SS_RST_L4_OFF_MAX), masked where the verifier sees it: verifiers
 * such as 6.1 (Debian 12's) learn no bound from comparing two unknown scalars
 * (l3_off > l4_off), and on 6.1 a packet pointer whose variable offset may
 * reach 64 KiB gets no range from its check against data_end ("invalid access
 * to packet"). In asm, so clang, which knows the mask changes nothing, keeps
 * it; on the register the pointer is made from, so no copy spilled before the
 * check is used instead. */
static __always_inline __u32 ss_rst_l3_off(__u32 l3_off)
{
	asm volatile("%[off] &= %[mask]" : [off] "+r"(l3_off) : [mask] "i"(SS_RST_OFF_MASK));
	return l3_off;
}

/* XDP: the frame becomes the RST; returns XDP_TX (to its sender) or XDP_PASS
 * (to its receiver), or -1 when it cannot be rewritten (the caller drops it). */
static __always_inline int ss_rst_xdp(struct xdp_md *ctx, struct ss_pkt *pkt, int to_sender)
{
	__u32 l3_off = pkt->l3_off, l4_off = pkt->l4_off, len = l4_off + sizeof(struct tcphdr);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;
	int delta = (int)len - (int)(data_end - data);

	if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (l4_off > SS_RST_L4_OFF_MAX || l3_off > l4_off || data + ETH_HLEN > data_end)
		return -1;
	th = data + l4_off;
	if ((void *)(th + 1) > data_end)
		return -1;
	ss_rst_tcphdr(th, pkt, to_sender);
	if (pkt->key.family == SS_AF_INET) {
		struct iphdr *iph = data + ss_rst_l3_off(l3_off);

		if ((void *)(iph + 1) > data_end)
			return -1;
		ss_rst_iphdr(iph, len - l3_off, to_sender);
	} else {
		struct ipv6hdr *ip6h = data + ss_rst_l3_off(l3_off);

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		ss_rst_ipv6hdr(ip6h, len - l3_off - sizeof(*ip6h), to_sender);
	}
	if (to_sender)
		ss_swap_macs(data);
	return to_sender ? XDP_TX : XDP_PASS;
}

/* TC: the skb becomes the RST to its sender, turned round into the host's
 * ingress; returns TC_ACT_REDIRECT, or -1 when it cannot be rewritten.
 *
 * The whole checksum is written: the receive path verifies it unless the skb
 * is CHECKSUM_PARTIAL (a local socket's, offloaded), which it trusts. The
 * helpers unclone the skb before writing, so the socket's own copy (its
 * retransmission queue) is left alone. */
static __always_inline int ss_rst_tc(struct __sk_buff *skb, struct ss_pkt *pkt)
{
	__u32 l3_off = pkt->l3_off, l4_off = pkt->l4_off, len = l4_off + sizeof(struct tcphdr);
	struct tcphdr th;
	__u8 macs[2 * ETH_ALEN];

	if (skb->len > len && bpf_skb_change_tail(skb, len, 0))
		return -1;
	ss_rst_tcphdr(&th, pkt, 1);
	if (bpf_skb_store_bytes(skb, l4_off, &th, sizeof(th), 0))
		return -1;
	if (pkt->key.family == SS_AF_INET) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, l3_off, &iph, sizeof(iph)))
			return -1;
		ss_rst_iphdr(&iph, len - l3_off, 1);
		if (bpf_skb_store_bytes(skb, l3_off, &iph, sizeof(iph), 0))
			return -1;
	} else {
		struct ipv6hdr ip6h;

		if (bpf_skb_load_bytes(skb, l3_off, &ip6h, sizeof(ip6h)))
			return -1;
		ss_rst_ipv6hdr(&ip6h, len - l3_off - sizeof(ip6h), 1);
		if (bpf_skb_store_bytes(skb, l3_off, &ip6h, sizeof(ip6h), 0))
			return -1;
	}
	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)))
		return -1;
	ss_swap_macs(macs);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		return -1;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

#endif /* SS_TEARDOWN_H */

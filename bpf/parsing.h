/* SPDX-License-Identifier: GPL-2.0 */
/* parsing.h - bounds-checked header parsers shared by the XDP and TC programs.
 *
 * Modelled on xdp-tools headers/xdp/parsing_helpers.h: a cursor and one small
 * parse_* helper per header. Each helper checks its bounds against data_end,
 * advances the cursor past its header and returns the next protocol, or a
 * negative SS_PARSE_* code. Sizes always come from the headers themselves
 * (IHL, IPv6 extension lengths, TCP data offset); nothing assumes a fixed size.
 *
 * Read next: datapath.c, the programs that call them.
 */
#ifndef SS_PARSING_H
#define SS_PARSING_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

#include "smtp_sensor.h"

#define SS_PARSE_ERROR (-1)     /* truncated or malformed */
#define SS_PARSE_EXT_LIMIT (-2) /* IPv6: more extension headers than SS_IPV6_EXT_MAX */

/* ss_pkt.frag: whether the packet is a piece of an IP datagram. */
#define SS_FRAG_NONE 0  /* a whole datagram */
#define SS_FRAG_FIRST 1 /* offset 0, more to come: the only piece with the TCP ports */
#define SS_FRAG_LATER 2 /* an offset: no TCP header here */

#define SS_VLAN_MAX 2       /* 802.1Q / 802.1ad tags we look through */
#define SS_IPV6_EXT_MAX 6   /* IPv6 extension headers we skip */

struct hdr_cursor {
	void *pos;
};

struct ss_vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

struct ss_ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | flags */
	__be32 identification;
};

/* What the parsers learn about one TCP segment. Numbers in host order.
 * The addresses, ports and family are filled straight into a flow key
 * (addresses as 16 bytes, IPv4-mapped for IPv4, so v4 and v6 share keys):
 * the flow maps are looked up with it, no copy. */
struct ss_pkt {
	struct ss_flow_key key;
	__u32 seq;
	__u32 ack;
	__u32 l4_len;      /* bytes after the IP header(s), from the IP header */
	__u32 payload_len; /* TCP payload bytes, from the IP header */
	__u16 l3_off;
	__u16 l4_off;      /* offset of the TCP header in the frame */
	__u16 payload_off;
	__u8 tcp_flags;
	__u8 frag;         /* SS_FRAG_* */
	__u8 ports_known;  /* a fragment: its TCP ports are in key (a first one, 4 bytes of TCP) */
};

/* Ethernet, then up to SS_VLAN_MAX VLAN tags. Returns the EtherType in
 * network byte order. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end)
{
	struct ethhdr *eth = nh->pos;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return SS_PARSE_ERROR;
	nh->pos = eth + 1;
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < SS_VLAN_MAX; i++) {
		struct ss_vlan_hdr *vlh = nh->pos;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vlh + 1) > data_end)
			return SS_PARSE_ERROR;
		proto = vlh->encapsulated_proto;
		nh->pos = vlh + 1;
	}
	return proto;
}

/* IPv4 honouring IHL. l4_len comes from tot_len (Ethernet padding is not
 * payload); tot_len 0 (GSO super-packets may carry it) means "to the end".
 * A fragment is parsed like a whole packet and marked in pkt->frag. */
static __always_inline int parse_ipv4(struct hdr_cursor *nh, void *data, void *data_end,
				      __u32 frame_len, struct ss_pkt *pkt)
{
	struct iphdr *iph = nh->pos;
	__u32 hdrsize, tot_len;

	if ((void *)(iph + 1) > data_end)
		return SS_PARSE_ERROR;
	hdrsize = iph->ihl * 4;
	if (hdrsize < sizeof(*iph) || iph->version != 4)
		return SS_PARSE_ERROR;
	if (nh->pos + hdrsize > data_end)
		return SS_PARSE_ERROR;
	if (iph->frag_off & bpf_htons(0x1fff))
		pkt->frag = SS_FRAG_LATER;
	else if (iph->frag_off & bpf_htons(0x2000)) /* MF */
		pkt->frag = SS_FRAG_FIRST;

	pkt->l3_off = nh->pos - data;
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len == 0)
		tot_len = frame_len - pkt->l3_off;
	if (tot_len < hdrsize || pkt->l3_off + tot_len > frame_len)
		return SS_PARSE_ERROR; /* shorter than its header, or cut off */
	pkt->l4_len = tot_len - hdrsize;
	pkt->key.family = SS_AF_INET;
	pkt->key.saddr[10] = 0xff;
	pkt->key.saddr[11] = 0xff;
	pkt->key.daddr[10] = 0xff;
	pkt->key.daddr[11] = 0xff;
	__builtin_memcpy(&pkt->key.saddr[12], &iph->saddr, 4);
	__builtin_memcpy(&pkt->key.daddr[12], &iph->daddr, 4);
	nh->pos += hdrsize;
	return iph->protocol;
}

/* The IPv6 extension headers parse_ipv6() follows. */
static __always_inline int ss_ipv6_ext(int nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING || nexthdr == IPPROTO_DSTOPTS ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_AH;
}

/* IPv6, skipping hop-by-hop, routing, destination options, AH and fragment
 * headers, at most SS_IPV6_EXT_MAX of them (SS_PARSE_EXT_LIMIT past that).
 * Returns the upper-layer protocol; for a non-first fragment (pkt->frag
 * SS_FRAG_LATER), the first header of its fragmentable part. */
static __always_inline int parse_ipv6(struct hdr_cursor *nh, void *data, void *data_end,
				      __u32 frame_len, struct ss_pkt *pkt)
{
	struct ipv6hdr *ip6h = nh->pos;
	__u32 l4_len;
	int nexthdr;

	if ((void *)(ip6h + 1) > data_end)
		return SS_PARSE_ERROR;
	if (ip6h->version != 6)
		return SS_PARSE_ERROR;
	pkt->l3_off = nh->pos - data;
	nh->pos = ip6h + 1;
	l4_len = bpf_ntohs(ip6h->payload_len);
	if (l4_len == 0) /* jumbogram or GSO: to the end of the frame */
		l4_len = frame_len - pkt->l3_off - sizeof(*ip6h);
	else if (pkt->l3_off + sizeof(*ip6h) + l4_len > frame_len)
		return SS_PARSE_ERROR; /* cut off */
	nexthdr = ip6h->nexthdr;
	pkt->key.family = SS_AF_INET6;
	__builtin_memcpy(pkt->key.saddr, &ip6h->saddr, 16);
	__builtin_memcpy(pkt->key.daddr, &ip6h->daddr, 16);

#pragma unroll
	for (int i = 0; i < SS_IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr *opt = nh->pos;
		struct ss_ipv6_frag_hdr *frag = nh->pos;
		__u32 len;

		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(opt + 1) > data_end)
				return SS_PARSE_ERROR;
			len = (opt->hdrlen + 1) * 8;
			if (nh->pos + len > data_end || l4_len < len)
				return SS_PARSE_ERROR;
			nexthdr = opt->nexthdr;
			break;
		case IPPROTO_AH:
			if ((void *)(opt + 1) > data_end)
				return SS_PARSE_ERROR;
			len = (opt->hdrlen + 2) * 4;
			if (nh->pos + len > data_end || l4_len < len)
				return SS_PARSE_ERROR;
			nexthdr = opt->nexthdr;
			break;
		case IPPROTO_FRAGMENT:
			if ((void *)(frag + 1) > data_end)
				return SS_PARSE_ERROR;
			len = sizeof(*frag);
			if (l4_len < len)
				return SS_PARSE_ERROR;
			nexthdr = frag->nexthdr;
			if (frag->frag_off & bpf_htons(0xfff8)) {
				pkt->frag = SS_FRAG_LATER;
				pkt->l4_len = l4_len - len;
				return nexthdr;
			}
			if (frag->frag_off & bpf_htons(1)) /* M: more to come */
				pkt->frag = SS_FRAG_FIRST;
			break;
		default:
			pkt->l4_len = l4_len;
			return nexthdr;
		}
		nh->pos += len;
		l4_len -= len;
	}
	pkt->l4_len = l4_len;
	if (ss_ipv6_ext(nexthdr))
		return SS_PARSE_EXT_LIMIT;
	return nexthdr;
}

/* The TCP ports of a first fragment, which may hold less than a TCP header
 * (the tiny-fragment trick: the ports here, the flags in the next one). */
static __always_inline void parse_tcp_ports(struct hdr_cursor *nh, void *data_end, struct ss_pkt *pkt)
{
	__be16 *ports = nh->pos;

	if ((void *)(ports + 2) > data_end || pkt->l4_len < 4)
		return;
	pkt->key.sport = bpf_ntohs(ports[0]);
	pkt->key.dport = bpf_ntohs(ports[1]);
	pkt->ports_known = 1;
}

/* TCP honouring the data offset. */
static __always_inline int parse_tcphdr(struct hdr_cursor *nh, void *data, void *data_end,
					struct ss_pkt *pkt)
{
	struct tcphdr *th = nh->pos;
	__u32 len;

	if ((void *)(th + 1) > data_end)
		return SS_PARSE_ERROR;
	len = th->doff * 4;
	if (len < sizeof(*th) || nh->pos + len > data_end || pkt->l4_len < len)
		return SS_PARSE_ERROR;
	pkt->key.sport = bpf_ntohs(th->source);
	pkt->key.dport = bpf_ntohs(th->dest);
	pkt->seq = bpf_ntohl(th->seq);
	pkt->ack = bpf_ntohl(th->ack_seq);
	pkt->tcp_flags = ((__u8 *)th)[13];
	pkt->l4_off = nh->pos - data;
	nh->pos += len;
	pkt->payload_off = nh->pos - data;
	pkt->payload_len = pkt->l4_len - len;
	return 0;
}

#endif /* SS_PARSING_H */

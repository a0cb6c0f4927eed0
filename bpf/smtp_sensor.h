/* SPDX-License-Identifier: GPL-2.0 */
/* smtp_sensor.h - the one ABI shared by the kernel programs (bpf/datapath.c)
 * and the control plane.
 *
 * Everything userland reads or writes in a map or an event record is laid out
 * here: the event header, map keys and values, counter indexes, reason codes,
 * configuration bits.
 *
 * CHANGE TOGETHER: this file, sensor/kernel/abi.py (the Python mirror), and
 * bump SS_ABI_VERSION when the layout of a pinned map or of the event header
 * changes (pinned maps live in a folder named after it; the other maps and
 * the counters are made anew by every load, with the userland that reads them). tests/kernel/test_abi_mirror.py compiles this header
 * against the mirror and fails when they disagree.
 *
 * Read next: parsing.h, the header parsers that fill a flow key.
 */
#ifndef SMTP_SENSOR_H
#define SMTP_SENSOR_H

#include <linux/types.h>

#define SS_ABI_VERSION 2

/* Largest number of packet bytes copied into one event. Egress GSO/TSO
 * super-packets can be far longer than an MTU; what is beyond this is cut and
 * the event says so (SS_EVF_CUT), so userland records a gap. The runtime value
 * (ss_config.snaplen) may only lower it. */
#define SS_SNAPLEN_MAX 65000

/* Sizes of the maps. */
#define SS_FLOW_MAX 65536      /* flow drop and bypass LRU hashes */
#define SS_BAN_MAX 16384       /* each LPM trie */
#define SS_PORT_MAX 65536      /* the SMTP port set, indexed by port */

/* Direction of a packet, as seen by the host the sensor runs on. */
enum ss_direction {
	SS_DIR_INGRESS = 0, /* XDP */
	SS_DIR_EGRESS = 1,  /* TC clsact egress */
	SS_DIR__MAX = 2,
};

/* Per-CPU counters, one array slot per (direction, counter):
 * index = direction * SS_CNT__MAX + counter.
 * Every packet leaves through one exit that counts exactly one of the
 * exclusive verdicts below (so "seen" is their sum, computed in userland and
 * not paid for per packet); SS_CNT_CUT and SS_CNT_EXPIRED are extra marks on
 * a packet already counted by its verdict. */
enum ss_counter {
	SS_CNT_NOT_IP = 0,       /* passed: not IPv4/IPv6 (after VLAN tags) */
	SS_CNT_NOT_TCP = 1,      /* passed: IP but not TCP */
	SS_CNT_NOT_SMTP = 2,     /* passed: TCP, neither port in the SMTP set */
	SS_CNT_FRAGMENT = 3,     /* passed: a non-first IP fragment of TCP, not pushed (prevention:
				  * its first fragment is dropped, so it completes nothing) */
	SS_CNT_PARSE_ERROR = 4,  /* passed: truncated or malformed header */
	SS_CNT_PURE_ACK = 5,     /* passed: SMTP segment without payload/SYN/FIN/RST */
	SS_CNT_PUSHED = 6,       /* passed: event pushed to the event ring */
	SS_CNT_PUSH_FAILED = 7,  /* passed: event ring full or copy failed */
	SS_CNT_BYPASSED = 8,     /* passed: flow in the bypass map, not pushed */
	SS_CNT_NO_PUSH = 9,      /* passed: pushing disabled by configuration */
	SS_CNT_DROP_FLOW = 10,   /* dropped: live flow drop entry */
	SS_CNT_DROP_BAN = 11,    /* dropped: live source ban */
	SS_CNT_HELD = 12,        /* dropped: a client segment that can complete a message,
				  * held until userland releases it (pushed, SS_EVF_HELD) */
	SS_CNT_DROP_FRAG = 13,   /* dropped (prevention): the first fragment of a TCP datagram to
				  * or from an SMTP port (or without readable ports): the rest
				  * cannot be reassembled without it, here or at the receiver */
	SS_CNT_EXT_LIMIT = 14,   /* passed (monitor only): IPv6 with more extension headers than
				  * SS_IPV6_EXT_MAX, unseen */
	SS_CNT_DROP_EXT_LIMIT = 15, /* dropped (prevention): the same */
	SS_CNT_VERDICT__MAX = 16,/* the exclusive verdicts end here */
	SS_CNT_CUT = 16,         /* extra: pushed with bytes beyond snaplen cut */
	SS_CNT_EXPIRED = 17,     /* extra: an expired ban/drop entry was ignored */
	SS_CNT_RELEASED = 18,    /* extra: a commit candidate passed, released by userland */
	SS_CNT_HOLD_TIMEOUT = 19,/* extra: a commit candidate passed, its hold older than hold_max_ms */
	SS_CNT_EHLO_REWRITTEN = 20, /* extra: a server's EHLO reply passed with CHUNKING masked */
	SS_CNT_RESET = 21,       /* extra: a packet of a torn-down flow (SS_VF_RESET) rewritten
				  * into an RST to one of the ends, passed or sent back */
	SS_CNT_DROP_ENDED = 22,  /* extra: a client SYN on the ports of a torn-down flow ended
				  * its drop entries (a new connection, inspected as usual) */
	SS_CNT_FRAG_PUSHED = 23, /* extra (monitor only): an IP fragment of TCP pushed
				  * (SS_EVF_FRAGMENT), for userland's defragmenter */
	SS_CNT_SHED = 24,        /* extra: a push_failed event refused under ring pressure without
				  * trying: a segment of a flow never seen opening, or a lone RST */
	SS_CNT__MAX = 25,
};

/* Why a flow is dropped or a source banned (ss_verdict.reason). */
enum ss_reason {
	SS_REASON_NONE = 0,
	SS_REASON_MANUAL = 1,     /* operator: CLI or API */
	SS_REASON_RULE = 2,       /* a rule called flow.drop() / ban_source() */
	SS_REASON_SPAM_STATS = 3, /* reject statistics notice */
	SS_REASON_STARTTLS = 4,   /* bypass: the session went encrypted */
	SS_REASON__MAX = 5,
};

/* ss_event_hdr.flags */
#define SS_EVF_CUT 0x1          /* cap_len < wire_len: the packet was cut */
#define SS_EVF_HELD 0x2         /* a commit candidate, dropped until released */
#define SS_EVF_RELEASED 0x4     /* a commit candidate passed: ss_release covers it */
#define SS_EVF_HOLD_TIMEOUT 0x8 /* a commit candidate passed: its hold timed out */
#define SS_EVF_FRAGMENT 0x10    /* an IP fragment: ports (a first one) or nothing of TCP
				 * in the metadata; userland reassembles the datagram */

/* ss_config.flags: a zero config means defaults (everything on). */
#define SS_CFG_NO_PUSH 0x1    /* do not push events (enforcement only) */
#define SS_CFG_NO_ENFORCE 0x2 /* ignore bans and flow drops */
#define SS_CFG_WAKE_BATCH 0x4 /* wake the reader every SS_WAKE_BATCH records per CPU
			       * (default: adaptive, on every record pushed after it read
			       * all: the lowest latency, a wakeup per record when quiet) */
#define SS_CFG_HOLD 0x8       /* the commit hold: hold client segments that can
			       * complete a message until released (XDP ingress;
			       * ignored with SS_CFG_NO_ENFORCE) */

/* The commit hold looks for an end of data in client segments of at most
 * this many payload bytes; a longer one (jumbo frames) is a candidate. */
#define SS_HOLD_SCAN_MAX 1536
/* hold_max_ms when the configuration says 0. */
#define SS_HOLD_MAX_MS_DEFAULT 400

/* Slots of the ss_ring_state array (datapath.c). */
enum ss_ring_slot {
	SS_RING_PENDING = 0,  /* ring losses in ss_lost no event has carried yet */
	SS_RING_PRESSURE = 1, /* nonzero: the ring refused an event since userland last read
			       * it empty; only SYN and FIN events without payload, and the
			       * events of connections whose opening SYN was pushed, are.
			       * Worker w's ring has slot SS_RING_PRESSURE + w */
	SS_RING__MAX = 2,     /* with one worker; SS_RING__MAX - 1 + SS_WORKERS slots */
};

/* Counters per interface (ss_if_counters, a per-CPU hash): the exclusive
 * verdicts of the packets on the SMTP ports (and of those that could not be
 * told apart: fragments, parse errors) per attached interface and direction.
 * Userland creates the entries of the interfaces it attaches to; the kernel
 * only looks them up, so the map never grows past them. The cheap passes
 * (not IP, not TCP, not an SMTP port) are counted per direction only
 * (ss_counters), so the path of traffic that is not SMTP pays no lookup. */
#define SS_IF_MAX 64
struct ss_if_key {
	__u32 ifindex;
	__u32 direction; /* enum ss_direction */
};

struct ss_if_counters {
	__u64 verdicts[SS_CNT_VERDICT__MAX];
};

/* The workers (event rings) at most: a -DSS_WORKERS build parameter above
 * this is refused. */
#define SS_WORKERS_MAX 64

/* FNV-1a, 32 bits (sensor/shard.py): the worker of a packet is this hash of
 * its client's address, modulo the number of workers. */
#define SS_FNV_OFFSET 0x811C9DC5U
#define SS_FNV_PRIME 0x01000193U

/* Records per CPU between wakeups of the reader with SS_CFG_WAKE_BATCH. */
#define SS_WAKE_BATCH 64

/* TCP flag bits of ss_event_hdr.tcp_flags (byte 13 of the TCP header). */
#define SS_TCP_FIN 0x01
#define SS_TCP_SYN 0x02
#define SS_TCP_RST 0x04
#define SS_TCP_PSH 0x08
#define SS_TCP_ACK 0x10

/* Address family tags in keys and events. */
#define SS_AF_INET 4
#define SS_AF_INET6 6

/* Runtime configuration, slot 0 of the ss_config array. */
struct ss_config {
	__u32 flags;       /* SS_CFG_* */
	__u32 snaplen;     /* 0 = SS_SNAPLEN_MAX; larger values are clamped */
	__u32 hold_max_ms; /* a hold older than this is released by the kernel (fail open);
			    * 0 = SS_HOLD_MAX_MS_DEFAULT */
	__u32 _pad;
};

/* Metadata in front of the packet bytes of every event record. The record is
 * padded (to a size class of the ring): trust cap_len, not the record size. Addresses are 16
 * bytes; IPv4 uses the IPv4-mapped form ::ffff:a.b.c.d. Numbers are host
 * byte order. */
struct ss_event_hdr {
	__u16 version;     /* SS_ABI_VERSION */
	__u8 direction;    /* enum ss_direction */
	__u8 flags;        /* SS_EVF_* */
	__u32 ifindex;
	__u64 ts_ns;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 wire_len;    /* length of the whole frame */
	__u32 cap_len;     /* frame bytes following this header */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 seq;
	__u32 ack;
	__u16 payload_off; /* offset of the TCP payload in the frame */
	__u16 l3_off;      /* offset of the IP header in the frame */
	__u32 payload_len; /* TCP payload length from the IP header (on the wire) */
	__u8 family;       /* SS_AF_* */
	__u8 tcp_flags;    /* FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 ... */
	__u8 _pad[2];
	__u32 lost;        /* events of this direction (same flow key) the ring refused
			    * since its last event pushed: ss_lost, carried here */
	__u32 _pad2;
};

/* Key of the flow drop and bypass maps: one direction of a TCP connection as
 * the packet carries it (source = sender). Userland installs both directions. */
struct ss_flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 _pad[3];
};

/* ss_verdict.flags of a flow drop entry. SS_VF_RESET is userland's (the
 * flow is torn down, not only silenced); the others are the kernel's record of
 * what it sent, per direction (each direction's entry is its own). */
#define SS_VF_RESET 0x1   /* tear the connection down: each packet becomes an RST */
#define SS_VF_GUESSED 0x2 /* the client's packet was made into an RST to the server
			   * (its sequence number a guess at the server's rcv_nxt) */
#define SS_VF_TORN 0x4    /* an RST was sent (or passed) for this direction: a client
			   * SYN afterwards is a new connection and ends the drop */

/* Value of the flow drop, bypass and ban maps. */
struct ss_verdict {
	__u64 expires_ns; /* bpf_ktime_get_ns() deadline; 0 = never */
	__u64 packets;    /* packets matched while live */
	__u64 bytes;      /* bytes matched while live */
	__u32 reason;     /* enum ss_reason */
	__u32 flags;      /* SS_VF_* (flow drops; 0 in bans and bypasses) */
};

/* Value of ss_release, written by userland (key: the client -> server
 * direction): every client byte before seq has been judged by the rules, so
 * a candidate segment that ends at or before seq passes. */
struct ss_release {
	__u32 seq;
	__u32 flags; /* SS_REL_* */
	__u64 ts_ns; /* when userland wrote it (CLOCK_MONOTONIC) */
};

/* ss_release.flags */
#define SS_REL_HOLD_ALL 0x1 /* every client segment beyond seq is a candidate (the
			     * client used BDAT: its chunks end anywhere) */
#define SS_REL_AT_LINE 0x2  /* a command line starts at seq (what userland judged ends
			     * with LF): the released bytes may reach the MTA without
			     * passing here (sensor/kernel/inject.py) */

/* Value of ss_flow_state, written by the kernel (key: the client -> server
 * direction), for flows it saw open (the client's SYN): where the client's
 * next command line must start, and what the client sends now, by the
 * server's last reply (enum ss_phase). In the command phase a client segment
 * is a candidate unless it is whole lines from that point on, none beginning
 * with B (BDAT); once encrypted, none is (nothing there can be judged). */
struct ss_flow_state {
	__u32 line_seq;  /* the client's next line starts here, if line_known */
	__u8 line_known;
	__u8 phase;      /* SS_PHASE_* */
	__u8 _pad[2];
};

enum ss_phase {
	SS_PHASE_COMMAND = 0,  /* the client sends commands */
	SS_PHASE_DATA = 1,     /* the server said 354: the client sends a message */
	SS_PHASE_STARTTLS = 2, /* the client sent STARTTLS, alone, awaiting the reply */
	SS_PHASE_TLS = 3,      /* the server answered it 220: encrypted from here */
};

/* Value of ss_hold, written by the kernel (key: the client -> server
 * direction): the candidate it holds, by its first sequence number, and when
 * it first held it. A retransmission from the same sequence number passes
 * once since_ns is hold_max_ms old. */
struct ss_hold {
	__u64 since_ns;
	__u32 seq;
	__u32 end; /* seq + payload length */
};

/* Value of ss_lost, written by the kernel (key: the direction of the packet
 * whose event the ring refused): events of that direction not pushed since
 * the last one pushed. The next event of the direction carries the count
 * (ss_event_hdr.lost) and takes it out; what no event carries (the flow's
 * last packets were lost) userland reads when it ends the flow. */
struct ss_loss {
	__u64 events;  /* refused, not carried yet */
	__u64 last_ns; /* when the last one was refused (bpf_ktime_get_ns) */
	__u32 flags;   /* SS_LOSS_* */
	__u32 _pad;
};

/* ss_loss.flags */
#define SS_LOSS_SYN 0x1 /* a refused event was the connection's opening SYN, and no
			 * event of the direction has been pushed since: userland may
			 * never have seen the connection begin */

/* LPM trie keys for source bans. prefixlen counts bits of addr. */
struct ss_lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct ss_lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

#endif /* SMTP_SENSOR_H */

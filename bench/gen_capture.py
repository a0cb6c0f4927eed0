#!/usr/bin/env python3
"""Generate a deterministic pcap of realistic, interleaved SMTP sessions.

    python bench/gen_capture.py --size-mb 200 --seed 1 -o /tmp/smtp-200.pcap

Ethernet / IPv4 (about 10 % IPv6, a few 802.1Q-tagged frames), TCP with the
timestamp option (so data segments carry 1448 bytes, as behind a 1500-byte
MTU), three-way handshake, delayed ACKs every two segments, FIN exchange.
Many sessions (``--concurrency``) run at once and their packets are merged by
time, so reassembly sees interleaved flows; a few segments are swapped or
retransmitted.

SMTP: greeting, EHLO (multi-line capabilities) or HELO, optional AUTH PLAIN
(submission port 587), pipelined MAIL/RCPT/DATA when the server advertises
PIPELINING (lock-step otherwise), several recipients, some rejected (550),
some senders refused (550 on MAIL), DATA refused when no recipient was
accepted, one to three messages per session, RSET, some STARTTLS sessions
followed by TLS records, some sessions with no transaction.  Messages have a
Received chain, DKIM-Signature, RFC 2047-encoded subjects, Message-ID, MIME
multipart bodies with base64 attachments; sizes from 2 KB to about 1.2 MB;
dot-stuffed.  Addresses are TEST-NET ones only (192.0.2.0/24,
198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32); names under example.*.

Next to the capture, ``<capture>.json`` says what it holds (sessions,
transactions as the sensor counts them, messages, recipients, TCP payload
bytes, expected anomalies by name), for the benchmark to check the replay.
The same ``--seed`` and sizes give the same file, byte for byte.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import os
import random
import struct
import sys
import time
from email.header import Header
from email.utils import formatdate

MSS = 1448                           # 1500 - 20 (IP) - 32 (TCP with timestamps)
T0 = 1_700_000_000_000_000           # capture start, microseconds since the epoch
_pack_rec = struct.Struct("<IIII").pack
_pack_ip4 = struct.Struct("!BBHHHBBH4s4s").pack
_pack_ip6 = struct.Struct("!IHBB16s16s").pack
_pack_tcp = struct.Struct("!HHIIBBHHHBBBBII").pack     # 20 bytes + NOP NOP TS option
_pack_syn = struct.Struct("!HHIIBBHHHBBHBBBBIIBBBB").pack   # + MSS, SACKOK, TS, NOP, WS
_sum10 = struct.Struct("!10H").unpack

WORDS = (
    "the of and to in is for that on with as this be are from at by we it or have an not "
    "your will you all can our has more please meeting report invoice order shipment team "
    "quarter budget review attached document update schedule project account payment customer "
    "service thanks regards tomorrow monday friday office contract proposal agenda minutes "
    "release version server network storage backup ticket issue resolved pending approval "
    "deadline delivery warehouse supplier price quote discount renewal subscription newsletter"
).split()
FIRST = "alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy " \
        "rupert sybil trent victor walter yolanda".split()
DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com",
           "corp.example.net", "lists.example.org")
SUBJECTS_ASCII = (
    "Quarterly report", "Re: meeting tomorrow", "Invoice {n}", "Your order #{n} has shipped",
    "Fwd: contract draft v{n}", "Minutes of the project review", "Weekly newsletter #{n}",
    "Re: Re: budget approval", "Ticket {n} resolved", "Backup job report",
)
SUBJECTS_INTL = (
    "Réunion de demain à 10h", "Überweisung {n} bestätigt", "Ваш заказ {n} отправлен",
    "会議の議事録 {n}", "Résumé du trimestre – €{n}", "Grüße aus Zürich",
)
MIME_TYPES = (("application/pdf", "pdf"), ("image/jpeg", "jpg"), ("application/zip", "zip"),
              ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"))
EHLO_KEYWORDS = (b"SIZE 52428800", b"VRFY", b"ETRN", b"STARTTLS", b"ENHANCEDSTATUSCODES",
                 b"8BITMIME", b"DSN", b"SMTPUTF8", b"CHUNKING")


def _ip4(net: int, host: int) -> bytes:
    return bytes(((192, 0, 2), (198, 51, 100), (203, 0, 113))[net]) + bytes((host,))


def _ip6(net: int, host: int) -> bytes:
    return bytes.fromhex("20010db8") + struct.pack("!HHHHHH", net, 0, 0, 0, host >> 16,
                                                   host & 0xFFFF)


class Pools:
    """Text shared by all sessions, built once from the seed."""

    def __init__(self, rnd: random.Random):
        lines = []
        for i in range(24000):
            n = rnd.randrange(40, 76)
            words = []
            size = 0
            while size < n:
                w = rnd.choice(WORDS)
                words.append(w)
                size += len(w) + 1
            line = " ".join(words)
            if i % 97 == 0:
                line = "." + line                # dot-stuffed on the wire
            elif i % 131 == 0:
                line = ""
            elif i % 53 == 0:
                line = "> " + line               # quoted reply
            lines.append(line)
        text = ("\r\n".join(lines) + "\r\n").encode()
        self.text = text + text                 # room to take any slice from any start
        self.half = len(text)

    def text_body(self, rnd: random.Random, n: int) -> bytes:
        start = self.text.find(b"\r\n", rnd.randrange(self.half)) + 2
        end = self.text.find(b"\r\n", start + min(n, self.half - 200)) + 2
        return self.text[start:end]


class Expect:
    """What the capture holds, as the sensor should count it."""

    def __init__(self):
        self.sessions = 0
        self.ipv6_sessions = 0
        self.transactions = 0
        self.messages = 0               # DATA accepted with 354 and sent
        self.delivered = 0              # messages answered 250
        self.message_bytes = 0          # unstuffed message sizes (msg_size)
        self.recipients = 0             # RCPT commands (every one is in rcptto)
        self.rcpt_rejected = 0
        self.mail_rejected = 0
        self.mail_commands = 0
        self.starttls = 0
        self.payload_bytes = 0          # TCP payload, both directions, each byte once
        self.packets = 0
        self.anomalies: dict[str, int] = {}

    def anomaly(self, name: str) -> None:
        self.anomalies[name] = self.anomalies.get(name, 0) + 1


class Session:
    """One TCP connection; ``run()`` yields (time in µs, frame) in time order."""

    def __init__(self, g: "Generator", sid: int, t: int):
        rnd = self.rnd = random.Random(g.seed * 1_000_003 + sid)
        self.g = g
        self.sid = sid
        self.t = t
        self.v6 = sid % 10 == 7
        self.vlan = not self.v6 and sid % 33 == 5
        kind = rnd.random()
        self.port = 587 if kind < 0.05 else 25
        if self.v6:
            self.cip = _ip6(1, 0x1000 + sid % 4000)
            self.sip = _ip6(0x25, 1 + sid % 3)
        else:
            self.cip = _ip4(sid % 2, 1 + (sid // 2) % 250)
            self.sip = _ip4(2, 25 + sid % 3)
        # the address depends on sid % 500 (v4) or sid % 4000 (v6): 4-tuples are unique
        self.cport = 20000 + sid // 500
        self.cseq = rnd.getrandbits(32)
        self.sseq = rnd.getrandbits(32)
        self.ipid = [rnd.getrandbits(16), rnd.getrandbits(16)]
        self.tsval = [rnd.getrandbits(31), rnd.getrandbits(31)]
        self.rtt = rnd.randrange(2_000, 120_000)          # µs
        self.gap = rnd.choice((80, 120, 250, 600, 1200))   # µs between body segments
        self.server = f"mx{1 + sid % 3}.example.net".encode()
        self.client = f"mail-out{sid % 97}.{rnd.choice(DOMAINS)}".encode()
        mac_c = bytes((2, 0, 0, 0, sid >> 8 & 0xFF, sid & 0xFF))
        mac_s = bytes((2, 0, 0, 0, 0, 0x25))
        et = b"\x86\xdd" if self.v6 else b"\x08\x00"
        tag = b"\x81\x00" + struct.pack("!H", 100 + sid % 50) if self.vlan else b""
        self.eth = (mac_s + mac_c + tag + et, mac_c + mac_s + tag + et)   # c->s, s->c
        if not self.v6:
            # constant part of the IPv4 header checksum (all but length and id)
            w = _sum10(_pack_ip4(0x45, 0, 0, 0, 0x4000, 64, 6, 0, self.cip, self.sip))
            self.ck = sum(w)
        self.bytes = 0
        self.kind = kind

    # ------------------------------------------------------------ packets
    def frame(self, c2s: bool, flags: int, payload: bytes = b"") -> bytes:
        d = 0 if c2s else 1
        if c2s:
            sp, dp, seq, ack = self.cport, self.port, self.cseq, self.sseq
            src, dst = self.cip, self.sip
        else:
            sp, dp, seq, ack = self.port, self.cport, self.sseq, self.cseq
            src, dst = self.sip, self.cip
        tsv = (self.tsval[d] + self.t // 1000) & 0xFFFFFFFF
        tse = (self.tsval[1 - d] + self.t // 1000 - self.rtt // 2000) & 0xFFFFFFFF
        if flags & 0x02:
            tcp = _pack_syn(sp, dp, seq, ack if flags & 0x10 else 0, 0xA0, flags, 64240, 0, 0,
                            2, 4, 1460, 4, 2, 8, 10, tsv, tse if flags & 0x10 else 0, 1, 3, 3, 7)
        else:
            tcp = _pack_tcp(sp, dp, seq, ack, 0x80, flags, 501, 0, 0, 1, 1, 8, 10, tsv, tse)
        n = len(tcp) + len(payload)
        self.ipid[d] = ipid = (self.ipid[d] + 1) & 0xFFFF
        if self.v6:
            ip = _pack_ip6(0x60000000 | (self.sid & 0xFFFFF), n, 6, 64, src, dst)
        else:
            c = self.ck + n + 20 + ipid
            c = (c & 0xFFFF) + (c >> 16)
            c = (c & 0xFFFF) + (c >> 16)
            ip = _pack_ip4(0x45, 0, n + 20, ipid, 0x4000, 64, 6, ~c & 0xFFFF, src, dst)
        # the TCP checksum as a NIC computes it (the receiver's view verifies it)
        seg = tcp + payload
        total = int.from_bytes(seg, "big") << (8 if n & 1 else 0)
        total = (total + int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 6 + n) % 0xFFFF
        seg = seg[:16] + (0xFFFF - total).to_bytes(2, "big") + seg[18:]
        return self.eth[d] + ip + seg

    def send(self, c2s: bool, data: bytes, pause: int, fin: bool = False):
        """One application write: MSS segments, the receiver's delayed ACKs."""
        rnd = self.rnd
        self.t += pause
        self.bytes += len(data)
        self.g.expect.payload_bytes += len(data)
        if len(data) <= MSS:
            yield self.t, self.frame(c2s, 0x19 if fin else 0x18, data)
            self.advance(c2s, len(data) + fin)
            return
        segs = [data[i:i + MSS] for i in range(0, len(data), MSS)]
        last = len(segs) - 1
        gap = self.gap
        i = 0
        while i <= last:
            pair = [(i, segs[i])]
            if i < last:
                pair.append((i + 1, segs[i + 1]))
            frames = []
            for k, seg in pair:
                flags = (0x19 if fin else 0x18) if k == last else 0x10
                frames.append((k, self.frame(c2s, flags, seg)))
                self.advance(c2s, len(seg) + (fin and k == last))
            r = rnd.random()
            if len(frames) == 2 and r < 0.003:
                frames.reverse()                       # reordered on the way
            elif r > 0.998:
                frames.append(frames[0])               # a retransmission
            for _k, fr in frames:
                self.t += gap
                yield self.t, fr
            # the receiver acknowledges the pair
            self.t += 40
            yield self.t, self.frame(not c2s, 0x10)
            i += 2

    def advance(self, c2s: bool, n: int) -> None:
        if c2s:
            self.cseq = (self.cseq + n) & 0xFFFFFFFF
        else:
            self.sseq = (self.sseq + n) & 0xFFFFFFFF

    def cmd(self, data: bytes, think: int | None = None):
        return self.send(True, data, self.rtt if think is None else think)

    def reply(self, data: bytes, work: int | None = None):
        return self.send(False, data, work if work is not None else self.rnd.randrange(200, 20_000))

    # ------------------------------------------------------------ dialogue
    def run(self):
        g, rnd, ex = self.g, self.rnd, self.g.expect
        ex.sessions += 1
        ex.ipv6_sessions += self.v6
        # handshake
        self.cseq = (self.cseq - 1) & 0xFFFFFFFF
        yield self.t, self.frame(True, 0x02)
        self.advance(True, 1)
        self.t += 150
        self.sseq = (self.sseq - 1) & 0xFFFFFFFF
        yield self.t, self.frame(False, 0x12)
        self.advance(False, 1)
        self.t += self.rtt
        yield self.t, self.frame(True, 0x10)

        kind = self.kind
        yield from self.reply(b"220 " + self.server + b" ESMTP Postfix (Debian/GNU)\r\n",
                              rnd.randrange(1000, 50_000))
        starttls = 0.05 <= kind < 0.07
        helo = 0.07 <= kind < 0.14
        pipelining = not helo and not (0.14 <= kind < 0.24)
        if helo:
            yield from self.cmd(b"HELO " + self.client + b"\r\n")
            yield from self.reply(b"250 " + self.server + b"\r\n")
        else:
            yield from self.cmd(b"EHLO " + self.client + b"\r\n")
            kw = list(EHLO_KEYWORDS)
            if pipelining:
                kw.insert(0, b"PIPELINING")
            if self.port == 587:
                kw.insert(2, b"AUTH PLAIN LOGIN")
            lines = [self.server] + kw
            yield from self.reply(b"".join(b"250-" + ln + b"\r\n" for ln in lines[:-1])
                                  + b"250 " + lines[-1] + b"\r\n")
        if starttls:
            yield from self.cmd(b"STARTTLS\r\n")
            yield from self.reply(b"220 2.0.0 Ready to start TLS\r\n")
            ex.starttls += 1
            ex.transactions += 1               # the sensor logs the session as tls
            for c2s, n in ((True, 517), (False, 4000 + rnd.randrange(3000)), (True, 300),
                           (True, 2000 + rnd.randrange(60_000)), (False, 120)):
                recs = []
                while n > 5:                      # records of at most 16 KB
                    k = min(n, 16384)
                    recs.append(b"\x16\x03\x03" + struct.pack("!H", k - 5) + rnd.randbytes(k - 5))
                    n -= k
                yield from self.send(c2s, b"".join(recs), self.rtt)
            yield from self.close(True)
            return
        if self.port == 587:
            cred = base64.b64encode(b"\0" + FIRST[self.sid % 20].encode() + b"\0secret")
            yield from self.cmd(b"AUTH PLAIN " + cred + b"\r\n")
            yield from self.reply(b"235 2.7.0 Authentication successful\r\n")
        if 0.24 <= kind < 0.27:                    # looks around, leaves: no transaction
            yield from self.cmd(b"NOOP\r\n")
            yield from self.reply(b"250 2.0.0 Ok\r\n")
            ex.transactions += 1                   # one record for client activity alone
        else:
            ntx = 1 if rnd.random() < 0.7 else rnd.randrange(2, 4)
            for k in range(ntx):
                if g.done():
                    if k == 0:
                        ex.transactions += 1
                    break
                yield from self.transaction(pipelining, k)
        yield from self.cmd(b"QUIT\r\n")
        yield from self.close(False)

    def transaction(self, pipelining: bool, k: int):
        rnd, ex = self.rnd, self.g.expect
        ex.transactions += 1
        sender = f"{rnd.choice(FIRST)}.{rnd.randrange(1000)}@{rnd.choice(DOMAINS)}"
        nrcpt = rnd.choice((1, 1, 1, 2, 2, 3, 5, 8))
        rcpts = [f"{FIRST[(self.sid + j) % 20]}{j}@{self.server[4:].decode()}"
                 for j in range(nrcpt)]
        mail_ok = rnd.random() > 0.03
        accepted = [rnd.random() > 0.12 for _ in rcpts] if mail_ok else [False] * nrcpt
        msg = self.g.message(rnd, self, sender, rcpts) if mail_ok else b""
        ex.mail_commands += 1
        mail = f"MAIL FROM:<{sender}> SIZE={len(msg)} BODY=8BITMIME\r\n".encode()
        rcpt_lines = [f"RCPT TO:<{r}>{' ORCPT=rfc822;' + r if j % 3 == 2 else ''}\r\n".encode()
                      for j, r in enumerate(rcpts)]
        r_mail = b"250 2.1.0 Ok\r\n" if mail_ok else \
            b"550 5.7.1 <" + sender.encode() + b">: Sender address rejected: Access denied\r\n"
        r_rcpt = [b"250 2.1.5 Ok\r\n" if ok else
                  (b"550 5.1.1 <" + r.encode() + b">: Recipient address rejected: "
                   b"User unknown in virtual mailbox table\r\n" if mail_ok else
                   b"503 5.5.1 Error: need MAIL command\r\n")
                  for r, ok in zip(rcpts, accepted)]
        ex.mail_rejected += not mail_ok
        if pipelining or mail_ok:                  # else the client gives up after MAIL
            ex.recipients += nrcpt
            ex.rcpt_rejected += accepted.count(False)
        go = any(accepted)
        if pipelining:
            if k and rnd.random() < 0.3:
                yield from self.cmd(b"RSET\r\n")
                yield from self.reply(b"250 2.0.0 Ok\r\n")
            yield from self.cmd(mail + b"".join(rcpt_lines) + b"DATA\r\n")
            if go:
                r_data = b"354 End data with <CR><LF>.<CR><LF>\r\n"
            else:
                r_data = b"554 5.5.1 Error: no valid recipients\r\n" if mail_ok else \
                    b"503 5.5.1 Error: need RCPT command\r\n"
                ex.anomaly("DATA_COMMAND_REJECTED")
            yield from self.reply(r_mail + b"".join(r_rcpt) + r_data)
            if not go:
                yield from self.cmd(b"RSET\r\n")
                yield from self.reply(b"250 2.0.0 Ok\r\n")
        else:
            yield from self.cmd(mail)
            yield from self.reply(r_mail)
            if not mail_ok:
                yield from self.cmd(b"RSET\r\n")
                yield from self.reply(b"250 2.0.0 Ok\r\n")
                return
            for line, rr in zip(rcpt_lines, r_rcpt):
                yield from self.cmd(line)
                yield from self.reply(rr)
            if not go:
                yield from self.cmd(b"RSET\r\n")
                yield from self.reply(b"250 2.0.0 Ok\r\n")
                return
            yield from self.cmd(b"DATA\r\n")
            yield from self.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        if not go:
            return
        ex.messages += 1
        ex.message_bytes += len(msg)
        wire = msg.replace(b"\r\n.", b"\r\n..")
        if wire[:1] == b".":
            wire = b"." + wire
        yield from self.send(True, wire + b".\r\n", self.rtt)
        if rnd.random() < 0.985:
            ex.delivered += 1
            qid = "%010X" % rnd.getrandbits(40)
            yield from self.reply(b"250 2.0.0 Ok: queued as " + qid.encode() + b"\r\n",
                                  rnd.randrange(5_000, 200_000))
        else:
            yield from self.reply(b"451 4.3.0 Error: queue file write error\r\n",
                                  rnd.randrange(5_000, 200_000))

    def close(self, tls: bool):
        rnd = self.rnd
        if tls:
            self.t += rnd.randrange(1000, 5000)
            yield self.t, self.frame(True, 0x11)
            self.advance(True, 1)
            self.t += 200
            yield self.t, self.frame(False, 0x11)
            self.advance(False, 1)
        else:
            fin = rnd.random() < 0.5
            yield from self.send(False, b"221 2.0.0 Bye\r\n", rnd.randrange(100, 2000), fin)
            if not fin:
                self.t += 100
                yield self.t, self.frame(False, 0x11)
                self.advance(False, 1)
            self.t += self.rtt
            yield self.t, self.frame(True, 0x11)
            self.advance(True, 1)
        self.t += 150
        yield self.t, self.frame(tls, 0x10)        # the last FIN acknowledged


class Generator:
    def __init__(self, size_mb: float, seed: int, concurrency: int):
        self.seed = seed
        self.target = int(size_mb * 1e6)
        self.concurrency = concurrency
        self.rnd = random.Random(seed)
        self.pools = Pools(random.Random(seed ^ 0x5EED))
        self.expect = Expect()
        self.written = 0

    def done(self) -> bool:
        return self.written >= self.target

    def message(self, rnd: random.Random, s: Session, sender: str, rcpts: list[str]) -> bytes:
        """One RFC 5322 message, CRLF line ends, not yet dot-stuffed."""
        ts = (s.t // 1_000_000)
        date = formatdate(ts)
        hops = []
        ip = f"198.51.100.{1 + rnd.randrange(250)}"
        for h in range(rnd.randrange(1, 5)):
            hops.append(
                f"Received: from relay{h}.{rnd.choice(DOMAINS)} (relay{h}.example.org [{ip}])\r\n"
                f"\tby {'mx' if not h else 'relay%d' % (h - 1)}.example.net (Postfix) with "
                f"ESMTPS id {rnd.getrandbits(40):010X}\r\n\tfor <{rcpts[0]}>; {date}\r\n")
            ip = f"192.0.2.{1 + rnd.randrange(250)}"
        n = rnd.randrange(100000)
        if rnd.random() < 0.3:
            subj = Header(rnd.choice(SUBJECTS_INTL).format(n=n), "utf-8").encode(linesep="\r\n") \
                if rnd.random() < 0.7 else \
                Header(rnd.choice(SUBJECTS_INTL[:2] + SUBJECTS_INTL[5:]).format(n=n),
                       "iso-8859-1").encode(linesep="\r\n")
        else:
            subj = rnd.choice(SUBJECTS_ASCII).format(n=n)
        name = sender.split(".")[0].title()
        hdr = "".join(hops)
        if rnd.random() < 0.6:
            sig = base64.b64encode(rnd.randbytes(256)).decode()
            bh = base64.b64encode(rnd.randbytes(32)).decode()
            hdr += ("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;\r\n"
                    " s=sel1; t=%d; h=from:to:subject:date:message-id;\r\n"
                    " bh=%s;\r\n b=%s\r\n\t%s\r\n" % (ts, bh, sig[:70], sig[70:]))
        hdr += f'From: "{name}" <{sender}>\r\nTo: ' + ",\r\n\t".join(
            f"<{r}>" for r in rcpts[:4]) + "\r\n"
        if len(rcpts) > 4:
            hdr += "Cc: " + ", ".join(rcpts[4:]) + "\r\n"
        hdr += (f"Subject: {subj}\r\nDate: {date}\r\n"
                f"Message-ID: <{rnd.getrandbits(64):016x}.{s.sid}@{sender.split('@')[1]}>\r\n"
                "MIME-Version: 1.0\r\n")
        if rnd.random() < 0.4:
            hdr += "X-Mailer: Microsoft Outlook 16.0\r\n"
        if rnd.random() < 0.2:
            hdr += f"X-Originating-IP: [203.0.113.{1 + rnd.randrange(250)}]\r\n"
        r = rnd.random()
        if r < 0.55:
            size = int(2000 * 15 ** rnd.random())                  # 2 - 30 KB text
            body = self.pools.text_body(rnd, size)
            return (hdr + "Content-Type: text/plain; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + body
        size = int(20_000 * 10 ** rnd.random()) if r < 0.85 else \
            int(200_000 * 6 ** rnd.random())                        # 20 KB - 1.2 MB
        boundary = f"----=_Part_{rnd.getrandbits(48):012x}"
        text = self.pools.text_body(rnd, rnd.randrange(500, 6000))
        parts = [(hdr + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
                  "This is a multi-part message in MIME format.\r\n\r\n"
                  f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  "Content-Transfer-Encoding: 8bit\r\n\r\n").encode(), text]
        natt = 1 if rnd.random() < 0.8 else 2
        for a in range(natt):
            mime, ext = rnd.choice(MIME_TYPES)
            raw = rnd.randbytes(max(1000, (size - len(text)) * 3 // 4 // natt))
            parts.append((f"\r\n--{boundary}\r\nContent-Type: {mime}; name=\"file{a}.{ext}\"\r\n"
                          "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; "
                          f"filename=\"file{a}.{ext}\"\r\n\r\n").encode())
            parts.append(base64.encodebytes(raw).replace(b"\n", b"\r\n"))
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        return b"".join(parts)

    def write(self, path: str) -> Expect:
        rnd = self.rnd
        heap: list = []
        sid = 0
        t = T0

        def start(t):
            nonlocal sid
            s = Session(self, sid, t)
            sid += 1
            it = s.run()
            first = next(it)
            heapq.heappush(heap, (first[0], s.sid, first[1], it))

        for _ in range(self.concurrency):
            t += rnd.randrange(1, 40_000)
            start(t)
        out = []
        pend = 0
        ex = self.expect
        with open(path, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
            self.written = 24
            while heap:
                ts, k, fr, it = heap[0]
                n = len(fr)
                out.append(_pack_rec(ts // 1_000_000, ts % 1_000_000, n, n))
                out.append(fr)
                ex.packets += 1
                self.written += n + 16
                pend += n
                if pend > 1 << 20:
                    f.write(b"".join(out))
                    out.clear()
                    pend = 0
                nxt = next(it, None)
                if nxt is None:
                    heapq.heappop(heap)
                    if not self.done():
                        start(ts + rnd.randrange(1, 20_000))
                else:
                    heapq.heapreplace(heap, (nxt[0], k, nxt[1], it))
            f.write(b"".join(out))
        return ex


def generate(path: str, size_mb: float = 200, seed: int = 1, concurrency: int = 64) -> dict:
    """Write the capture and its sidecar ``path + '.json'``; return the sidecar's content."""
    started = time.perf_counter()
    g = Generator(size_mb, seed, concurrency)
    ex = g.write(path)
    info = {
        "capture": os.path.abspath(path), "size_mb": size_mb, "seed": seed,
        "concurrency": concurrency, "file_bytes": os.path.getsize(path),
        "generator_seconds": round(time.perf_counter() - started, 2),
        "expect": {k: v for k, v in vars(ex).items()},
    }
    with open(path + ".json", "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=None,
                    help="capture to write (default /tmp/smtp-bench-<size>mb-s<seed>.pcap)")
    ap.add_argument("--size-mb", type=float, default=200, help="capture file size, MB (10^6)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=64, help="sessions open at once")
    args = ap.parse_args(argv)
    path = args.output or f"/tmp/smtp-bench-{args.size_mb:g}mb-s{args.seed}.pcap"
    info = generate(path, args.size_mb, args.seed, args.concurrency)
    ex = info["expect"]
    print(f"{path}: {info['file_bytes'] / 1e6:.1f} MB, {ex['packets']} packets, "
          f"{ex['sessions']} sessions, {ex['transactions']} transactions, "
          f"{ex['messages']} messages, {ex['payload_bytes'] / 1e6:.1f} MB TCP payload "
          f"in {info['generator_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

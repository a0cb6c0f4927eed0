"""RFC 2047 decoding of the Subject: each encoded word on its own.

Found by comparing with Arkime on arkime__smtp-subject-multi-nospace, whose
Subject has plain text directly followed by an encoded word
(``xxxxxxxxxxxxx:=?UTF-8?Q?=20xxxx...?=``).  Decoding the whole value with
``make_header(decode_header(value))`` put a space of its own between the two
("``x:  y``", two spaces where the message has one).
"""

from __future__ import annotations

import pytest

from sensor.smtp.headers import parse_header_section


def subject(raw: bytes) -> str | None:
    return parse_header_section(b"Subject: " + raw + b"\r\n\r\n")[0]["subject"]


@pytest.mark.parametrize("raw, want", [
    # plain text directly followed by an encoded word: no space is added
    (b"x:=?UTF-8?Q?=20y?=", "x: y"),
    (b"x:=?UTF-8?Q?y?=", "x:y"),
    # white space between plain text and an encoded word is kept as it is
    (b"Hello =?utf-8?q?W=C3=B6rld?= again", "Hello Wörld again"),
    (b"4spaces    =?iso-8859-1?B?5SDpIO4g+CA=?= =?iso-8859-1?Q?=FC?=\r\n     5spaces",
     "4spaces    å é î ø ü     5spaces"),
    # white space (folding included) between two encoded words is dropped (RFC 2047 6.2)
    (b"=?UTF-8?Q?a?=\r\n  =?UTF-8?Q?b?= =?UTF-8?Q?c?==?UTF-8?Q?d?=", "abcd"),
    # an empty encoded word decodes to nothing
    (b"=?ISO-8859-1?B?Qw==?==?ISO-8859-1?B??==?ISO-8859-1?B?YW4=?=", "Can"),
    # RFC 2231 language suffix
    (b"=?utf-8*en?q?hi?=", "hi"),
    # an unknown charset keeps that word raw, the others are still decoded
    (b"=?x-nowhere?q?abc?= =?utf-8?q?d=C3=A9f?=", "=?x-nowhere?q?abc?=déf"),
    # no encoded word: the value as it is
    (b"plain =? not a word ?=", "plain =? not a word ?="),
])
def test_encoded_words_are_decoded_one_by_one(raw, want):
    assert subject(raw) == want


def test_multi_nospace_subject_of_the_arkime_capture_has_single_spaces():
    raw = (b"xxxxxxxxxxxxx:=?UTF-8?Q?=20xxxx=C3=AAxx=20xx=C3=A9xxxxxxx?=\r\n"
           b"  =?UTF-8?Q?xx=20xxx=20xxx=20xxxxxxxxxx?=\r\n"
           b"  =?UTF-8?Q?x=20xx=20xxxxxxxxxxxxxxx=20?==?UTF-8?Q?=2D=20xxxx?=")
    assert subject(raw) == ("xxxxxxxxxxxxx: xxxxêxx xxéxxxxxxxxx xxx xxx xxxxxxxxxxx"
                            " xx xxxxxxxxxxxxxxx - xxxx")

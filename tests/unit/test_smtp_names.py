"""SMTP dissector: anomaly names and limits are a stable, documented surface."""

from __future__ import annotations

import dataclasses

from sensor.smtp import SmtpLimits, events
from sensor.smtp import anomalies as A


def test_suricata_decoder_event_names_are_reused_verbatim():
    assert A.SURICATA <= A.ALL
    assert {"INVALID_REPLY", "NO_SERVER_WELCOME_MESSAGE", "DATA_COMMAND_REJECTED",
            "MAX_COMMAND_LINE_LEN_EXCEEDED", "MAX_REPLY_LINE_LEN_EXCEEDED", "TRUNCATED_LINE",
            "BDAT_CHUNK_LEN_EXCEEDED", "INVALID_BDAT", "INVALID_PIPELINED_SEQUENCE",
            "TLS_REJECTED", "UNABLE_TO_MATCH_REPLY_WITH_REQUEST"} <= A.SURICATA


def test_anomaly_names_equal_their_constant_names():
    for name in A.ALL:
        assert getattr(A, name) == name and name.isupper()


def test_limits_have_the_documented_defaults_and_are_immutable():
    lim = SmtpLimits()
    assert (lim.command_line, lim.reply_line, lim.data_line, lim.recipients) == (512, 2048, 1002, 100)
    try:
        lim.command_line = 1
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("SmtpLimits must be frozen")


def test_every_event_is_a_frozen_slotted_dataclass():
    for cls in (events.Greeting, events.Command, events.Reply, events.ServerCapabilities,
                events.MailFrom, events.RcptTo, events.MailContent, events.MessageHeaders,
                events.MessageEnd, events.Transaction, events.AuthEvent, events.StartTLS,
                events.SmtpAnomaly):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert "__slots__" in cls.__dict__

"""The lab's real servers and clients: Postfix started inside the server
namespace (its own configuration, queue and log), aiosmtpd with STARTTLS and
AUTH, swaks with --tls and --auth, and the BDAT client (sensor.lab.client).
Everything a lab starts is gone after close(), on the failure path too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from sensor.errors import SensorError
from sensor.lab.network import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Lab, _alive
from sensor.lab.server import LAB_PASSWORD, LAB_USER
from support.prereqs import missing, require_swaks_ipv6

REJECTED = "spam@lab.example"
AIOSMTPD_PORT = 587


@pytest.fixture(scope="module")
def server_prereqs(lab_prereqs):
    for tool in ("postfix", "openssl"):
        if not shutil.which(tool):
            missing(f"{tool} (installed by ./run setup)")
    if subprocess.run(["perl", "-MNet::SSLeay", "-e", "1"], capture_output=True).returncode != 0:
        missing("Net::SSLeay for swaks --tls (libnet-ssleay-perl, installed by ./run setup)")


@pytest.fixture(scope="module")
def lab(server_prereqs, tmp_path_factory):
    journal = tmp_path_factory.mktemp("servers") / "journal.jsonl"
    with Lab() as lab:
        lab.journal = journal
        lab.postfix = lab.start_postfix(reject=(REJECTED,), tls=True)
        lab.aiosmtpd = lab.start_server(journal=journal, port=AIOSMTPD_PORT, tls=True, auth=True,
                                        reject_rcpt=r"^spamtrap@")
        yield lab


def journal(lab, mail_from: str | None = None) -> list[dict]:
    entries = [json.loads(line) for line in lab.journal.read_text().splitlines()]
    return [e for e in entries if mail_from is None or e.get("mail_from") == mail_from]


def queue_id(output: str) -> str:
    found = re.findall(r"250 2\.0\.0 Ok: (?:\d+ bytes )?queued as ([0-9A-F]+)", output)
    assert found, output
    return found[-1]


def transcript(result) -> str:
    return f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


# ---------------------------------------------------------------- Postfix

def test_postfix_runs_in_the_server_namespace_only(lab):
    pid = lab.postfix.master_pid()
    assert pid is not None
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{lab.server_ns}").st_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert str(lab.postfix.config_dir).startswith(str(lab.workdir))
    assert any("daemon started" in line for line in lab.postfix.log_lines())


def test_postfix_advertises_pipelining_chunking_and_starttls(lab):
    with lab.connect(SERVER_V4, 25) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 mx.lab.example ESMTP Postfix")
        sock.sendall(b"EHLO client.lab.example\r\n")
        lines = []
        while not lines or lines[-1][3:4] != b" ":
            lines.append(reader.readline().rstrip(b"\r\n"))
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221")
    keywords = {line[4:].split(b" ")[0] for line in lines}
    assert {b"PIPELINING", b"CHUNKING", b"STARTTLS", b"8BITMIME"} <= keywords
    assert not any(k.startswith(b"AUTH") for k in keywords)


@pytest.mark.parametrize("server,client", [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)], ids=["ipv4", "ipv6"])
def test_postfix_accepts_a_mail_from_swaks(lab, server, client):
    if server == SERVER_V6:
        require_swaks_ipv6()
    mark = lab.postfix.mark()
    result = lab.swaks("--from", "swaks-accept@example.org", "--to", "user@lab.example", server=server)
    assert result.returncode == 0, transcript(result)
    qid = queue_id(result.stdout)
    lab.postfix.wait_for_log(rf"{qid}: to=<user@lab.example>.*status=sent", since=mark)
    assert {"queue_id": qid, "to": "user@lab.example", "dsn": "2.0.0", "status": "sent"} in \
        lab.postfix.deliveries(since=mark)
    session = lab.postfix.session(qid)   # its own, whatever else was logged since the mark
    assert session["client"].startswith(f"unknown[{client}]:")  # the client port is logged
    assert session["data"] == "1" and session["rcpt"] == "1"


def test_postfix_rejects_a_listed_recipient_with_550(lab):
    mark = lab.postfix.mark()
    result = lab.swaks("--from", "swaks-reject@example.org", "--to", REJECTED)
    assert result.returncode == 24, transcript(result)  # swaks: the RCPT was refused
    assert f"<** 550 5.1.1 <{REJECTED}>: Recipient address rejected" in result.stdout
    lab.postfix.wait_for_log(r"NOQUEUE: reject: RCPT .* from=<swaks-reject@example\.org>", since=mark)
    [rejection] = lab.postfix.rejections(since=mark, mail_from="swaks-reject@example.org")
    assert rejection["code"] == "550" and rejection["to"] == REJECTED
    assert rejection["from"] == "swaks-reject@example.org"


def test_postfix_keeps_the_other_recipients_of_a_mail(lab):
    mark = lab.postfix.mark()
    result = lab.swaks("--from", "swaks-mixed@example.org", "--to", f"user@lab.example,{REJECTED}",
                       "--pipeline")
    assert result.returncode == 0, transcript(result)
    qid = queue_id(result.stdout)
    lab.postfix.wait_for_log(rf"{qid}: to=<user@lab.example>.*status=sent", since=mark)
    assert [r["to"] for r in lab.postfix.rejections(since=mark, mail_from="swaks-mixed@example.org")] == [REJECTED]


def test_swaks_starttls_to_postfix(lab):
    mark = lab.postfix.mark()
    result = lab.swaks("--from", "swaks-tls@example.org", "--to", "user@lab.example", "--tls")
    assert result.returncode == 0, transcript(result)
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    assert " ~> MAIL FROM:<swaks-tls@example.org>" in result.stdout  # inside TLS
    qid = queue_id(result.stdout)
    lab.postfix.wait_for_log(rf"{qid}: to=<user@lab.example>.*status=sent", since=mark)
    assert any(re.match(rf"Anonymous TLS connection established from \S+\[{re.escape(CLIENT_V4)}\]", line)
               for line in lab.postfix.session_log(qid))


# ---------------------------------------------------------------- aiosmtpd

def test_swaks_starttls_to_aiosmtpd(lab):
    result = lab.swaks("--port", str(AIOSMTPD_PORT), "--from", "aio-tls@example.org", "--to", "bob@example.net",
                       "--tls")
    assert result.returncode == 0, transcript(result)
    assert "<~  250 2.0.0 OK: queued" in result.stdout
    [message] = [e for e in journal(lab, "aio-tls@example.org") if e["kind"] == "message"]
    assert message["tls"] is True and message["rcpt_tos"] == ["bob@example.net"]
    assert any(e["kind"] == "starttls" and e["version"].startswith("TLSv1.") for e in journal(lab))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth_to_aiosmtpd(lab, mechanism, tls):
    sender = f"aio-auth-{mechanism.lower()}-{'tls' if tls else 'plain'}@example.org"
    result = lab.swaks("--port", str(AIOSMTPD_PORT), "--from", sender, "--to", "bob@example.net",
                       "--auth", mechanism, "--auth-user", LAB_USER, "--auth-password", LAB_PASSWORD,
                       *(["--tls"] if tls else []))
    assert result.returncode == 0, transcript(result)
    assert "235 2.7.0 Authentication successful" in result.stdout
    assert f"AUTH {mechanism}" in result.stdout
    [message] = [e for e in journal(lab, sender) if e["kind"] == "message"]
    assert message["auth"] == LAB_USER and message.get("tls", False) is tls
    auths = [e for e in journal(lab) if e["kind"] == "auth" and e["mechanism"] == mechanism and e["success"]]
    assert any(e["tls"] is tls for e in auths)


def test_a_wrong_password_gets_535_from_aiosmtpd(lab):
    result = lab.swaks("--port", str(AIOSMTPD_PORT), "--from", "aio-badauth@example.org", "--to", "bob@example.net",
                       "--auth", "LOGIN", "--auth-user", LAB_USER, "--auth-password", "not-the-password")
    assert result.returncode == 28, transcript(result)  # swaks: AUTH failed
    assert "<** 535 5.7.8 Authentication credentials invalid" in result.stdout
    assert not journal(lab, "aio-badauth@example.org")
    assert {"kind": "auth", "peer": CLIENT_V4, "mechanism": "LOGIN", "login": LAB_USER, "success": False,
            "tls": False} in journal(lab)


# ---------------------------------------------------------------- the BDAT client

def sent_chunks(output: str) -> list[str]:
    return re.findall(r"^ [-~]> (BDAT \d+(?: LAST)?)$", output, re.M)


@pytest.mark.parametrize("pipeline", [False, True], ids=["lockstep", "pipelined"])
@pytest.mark.parametrize("zero_last", [False, True], ids=["n-LAST", "0-LAST"])
def test_the_bdat_client_delivers_to_postfix(lab, zero_last, pipeline):
    mark = lab.postfix.mark()
    sender = f"bdat-{int(zero_last)}{int(pipeline)}@example.org"
    result = lab.bdat_client("--size", "1000", mail_from=sender, to=("user@lab.example",), chunk_size=300,
                             zero_last=zero_last, pipeline=pipeline)
    assert result.returncode == 0, transcript(result)
    chunks = sent_chunks(result.stdout)
    sizes = [int(c.split()[1]) for c in chunks]
    if zero_last:
        assert chunks[-1] == "BDAT 0 LAST" and not any(c.endswith("LAST") for c in chunks[:-1])
    else:
        assert chunks[-1].endswith(" LAST") and sizes[-1] > 0
    assert len([s for s in sizes if s]) == 4 and sum(sizes) >= 1000  # 1000+ octets in chunks of 300
    assert f"250 2.0.0 Ok: {sum(sizes)} bytes queued as" in result.stdout
    qid = queue_id(result.stdout)
    lab.postfix.wait_for_log(rf"{qid}: to=<user@lab.example>.*status=sent", since=mark)
    session = lab.postfix.session(qid)
    assert session["client"].startswith(f"unknown[{CLIENT_V4}]:")
    assert session["bdat"] == str(len(chunks)) and "data" not in session


def test_the_bdat_client_over_ipv6_and_starttls(lab):
    mark = lab.postfix.mark()
    result = lab.bdat_client(server=SERVER_V6, mail_from="bdat-tls@example.org", chunks=3, starttls=True)
    assert result.returncode == 0, transcript(result)
    assert "=== TLS started" in result.stdout and " ~> BDAT" in result.stdout
    qid = queue_id(result.stdout)
    lab.postfix.wait_for_log(rf"{qid}: to=<user@lab.example>.*status=sent", since=mark)
    assert any(re.search(rf"TLS connection established from \S+\[{re.escape(CLIENT_V6)}\]", line)
               for line in lab.postfix.session_log(qid))


def test_the_bdat_client_expects_a_refused_recipient_when_told(lab):
    mark = lab.postfix.mark()
    result = lab.bdat_client(mail_from="bdat-mixed@example.org", to=("user@lab.example", REJECTED),
                             expect_reject=(REJECTED,), chunks=2, pipeline=True)
    assert result.returncode == 0, transcript(result)
    qid = queue_id(result.stdout)
    lab.postfix.wait_for_log(rf"{qid}: to=<user@lab.example>.*status=sent", since=mark)
    assert [r["to"] for r in lab.postfix.rejections(since=mark, mail_from="bdat-mixed@example.org")] == [REJECTED]
    # nobody left: Postfix refuses the chunks, the client expects that too
    result = lab.bdat_client(mail_from="bdat-none@example.org", to=(REJECTED,), expect_reject=(REJECTED,),
                             chunks=3, pipeline=True)
    assert result.returncode == 0, transcript(result)
    assert "554 5.5.1 Error: no valid recipients" in result.stdout


def test_the_bdat_client_fails_on_an_unexpected_reply(lab):
    result = lab.bdat_client(mail_from="bdat-unexpected@example.org", to=(REJECTED,), chunks=2)
    assert result.returncode == 1, transcript(result)
    assert f"*** unexpected reply: RCPT TO:<{REJECTED}>: expected 250/251, got 550" in result.stdout
    assert "<-  221" in result.stdout  # it still said QUIT
    # aiosmtpd has no CHUNKING: refused before any BDAT
    result = lab.bdat_client(port=AIOSMTPD_PORT, mail_from="bdat-aiosmtpd@example.org")
    assert result.returncode == 1, transcript(result)
    assert "does not advertise CHUNKING" in result.stdout and "BDAT" not in "".join(sent_chunks(result.stdout))
    # nothing listens there: a connection error
    result = lab.bdat_client(port=2626, timeout=10)
    assert result.returncode == 2 and "cannot connect" in result.stdout, transcript(result)


# ---------------------------------------------------------------- clean-up

def own_tag() -> str:
    return f"{os.getpid() & 0xFFFF:04x}t"


def processes_in(inodes: set[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    found.append(int(entry))
            except OSError:  # gone, or a zombie (no namespaces any more)
                pass
    return found


def test_close_leaves_no_namespace_process_or_file_even_on_failure(server_prereqs):
    state = {}
    with pytest.raises(RuntimeError, match="a test failing inside the lab"):
        with Lab(tag=own_tag()) as lab:
            postfix = lab.start_postfix(tls=True)
            server = lab.start_server(port=AIOSMTPD_PORT, tls=True, auth=True)
            assert lab.bdat_client(chunks=2).returncode == 0
            assert lab.swaks("--to", "x@lab.example", "--port", str(AIOSMTPD_PORT), "--tls").returncode == 0
            state = dict(
                namespaces=[lab.client_ns, lab.server_ns],
                inodes={os.stat(f"/run/netns/{ns}").st_ino for ns in (lab.client_ns, lab.server_ns)},
                master=postfix.master_pid(), server=server, workdir=lab.workdir)
            assert processes_in(state["inodes"])  # the check below can see them
            raise RuntimeError("a test failing inside the lab")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [ns for ns in state["namespaces"] if ns in listed.split()]
    assert processes_in(state["inodes"]) == []
    assert not _alive(state["master"])
    assert state["server"].poll() is not None
    assert not state["workdir"].exists()


def test_a_postfix_that_cannot_start_is_a_clear_error_and_is_cleaned_up(server_prereqs):
    with Lab(tag=own_tag()) as lab:
        first = lab.start_postfix(tls=False)
        # Postfix binds with SO_REUSEPORT: a second one would share the port unnoticed
        with pytest.raises(SensorError, match=r"already listens on \[192\.0\.2\.25\]:25"):
            lab.start_postfix(tls=False)
        with pytest.raises(SensorError, match=r"Postfix did not start .*198\.51\.100\.99"):
            lab.start_postfix(tls=False, port=2525, addresses=("198.51.100.99",))  # not a lab address
        second = lab.start_postfix(tls=False, port=2525, addresses=(SERVER_V4,))
        assert lab.bdat_client(port=2525).returncode == 0
        assert first.running() and second.running()
        inodes = {os.stat(f"/run/netns/{ns}").st_ino for ns in (lab.client_ns, lab.server_ns)}
    assert processes_in(inodes) == []
    assert not first.running() and not second.running()

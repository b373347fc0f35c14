"""Debian's swaks as an independent SMTP client."""
import subprocess

import smtpd_compat
from conftest import RecordingServer, require_tool


def swaks(live, *args):
    path = require_tool('swaks')
    return subprocess.run(
        [path, '--server', live.host, '--port', str(live.port), '--timeout', '10',
         '--from', 'sender@example.org', '--to', 'rcpt1@example.net,rcpt2@example.net',
         '--helo', 'swaks.test'] + list(args),
        capture_output=True, text=True, timeout=60)


BODY = 'Subject: via swaks\r\n\r\nfirst line\r\n.starts with a dot\r\nlast line'


def test_swaks_delivers(live_server):
    live = live_server(RecordingServer)
    out = swaks(live, '--data', BODY)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '<-  221 Bye' in out.stdout
    (peer, mailfrom, rcpttos, data, kwargs), = live.server.messages
    assert (mailfrom, rcpttos) == ('sender@example.org', ['rcpt1@example.net', 'rcpt2@example.net'])
    assert data == b'Subject: via swaks\n\nfirst line\n.starts with a dot\nlast line'
    assert kwargs == {'mail_options': [], 'rcpt_options': []}


def test_swaks_decode_data(live_server):
    live = live_server(RecordingServer, decode_data=True)
    out = swaks(live, '--data', BODY)
    assert out.returncode == 0, out.stdout + out.stderr
    assert live.server.messages[0][3] == \
        'Subject: via swaks\n\nfirst line\n.starts with a dot\nlast line'


def test_swaks_sees_refusal(live_server):
    live = live_server(RecordingServer)
    live.server.reply = '550 Refused by test'
    out = swaks(live, '--data', BODY)
    assert out.returncode != 0
    assert '<** 550 Refused by test' in out.stdout


def test_swaks_debugging_server(live_server, capsys):
    live = live_server(smtpd_compat.DebuggingServer)
    out = swaks(live, '--data', BODY)
    assert out.returncode == 0, out.stdout
    printed = capsys.readouterr().out
    assert printed.endswith("b'X-Peer: 127.0.0.1'\nb''\nb'first line'\n"
                            "b'.starts with a dot'\nb'last line'\n"
                            "------------ END MESSAGE ------------\n")


def test_swaks_pipeline_option(live_server):
    # The stdlib's server never advertised PIPELINING, and neither does ours
    # by default: swaks --pipeline then talks step by step, and delivers.
    live = live_server(RecordingServer)
    out = swaks(live, '--pipeline', '--data', BODY)
    assert out.returncode == 0, out.stdout
    assert '250-PIPELINING' not in out.stdout
    assert len(live.server.messages) == 1

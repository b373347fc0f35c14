"""Live sessions over loopback: smtplib and raw sockets against
RecordingServer and DebuggingServer."""
import smtplib

import pytest

import smtpd_compat
from conftest import RecordingServer, recv_reply


def test_smtplib_sendmail(live_server):
    live = live_server(RecordingServer)
    with smtplib.SMTP(live.host, live.port, timeout=10) as client:
        body = b'Subject: s\r\n\r\n.dot\r\nline\r\n'
        refused = client.sendmail('a@example.org', ['b@example.net', 'c@example.net'], body)
    assert refused == {}
    (peer, mailfrom, rcpttos, data, kwargs), = live.server.messages
    assert peer[0] == '127.0.0.1'
    assert (mailfrom, rcpttos, data) == ('a@example.org', ['b@example.net', 'c@example.net'],
                                         b'Subject: s\n\n.dot\nline')
    assert kwargs == {'mail_options': ['SIZE=%d' % len(body)], 'rcpt_options': []}


def test_smtplib_ehlo_features(live_server):
    live = live_server(RecordingServer, data_size_limit=1000, enable_SMTPUTF8=True)
    with smtplib.SMTP(live.host, live.port, timeout=10) as client:
        code, _ = client.ehlo('me')
        assert code == 250
        assert client.esmtp_features == {'size': '1000', '8bitmime': '', 'smtputf8': '',
                                         'help': ''}
        assert client.verify('x@y')[0] == 252
        assert client.noop() == (250, b'OK')
        assert client.rset() == (250, b'OK')
        assert client.docmd('EXPN', 'x') == (502, b'EXPN not implemented')


def test_smtplib_smtputf8(live_server):
    live = live_server(RecordingServer, enable_SMTPUTF8=True)
    with smtplib.SMTP(live.host, live.port, timeout=10) as client:
        client.sendmail('\u00fc@example.org', ['\u00e9@example.net'],
                        'Subject: \u00fc\r\n\r\n\u00fc\r\n'.encode(), mail_options=['SMTPUTF8'])
    (_, mailfrom, rcpttos, data, kwargs), = live.server.messages
    assert (mailfrom, rcpttos) == ('\u00fc@example.org', ['\u00e9@example.net'])
    assert data == 'Subject: \u00fc\n\n\u00fc'.encode()
    assert 'SMTPUTF8' in kwargs['mail_options']


def test_smtplib_decode_data(live_server):
    live = live_server(RecordingServer, decode_data=True)
    with smtplib.SMTP(live.host, live.port, timeout=10) as client:
        client.sendmail('a@b', ['c@d'], 'Subject: x\r\n\r\nb\u00f6dy\r\n'.encode())
    assert live.server.messages[0][3:] == ('Subject: x\n\nb\u00f6dy', {})


def test_process_message_reply_reaches_smtplib(live_server):
    live = live_server(RecordingServer)
    live.server.reply = '554 Not today'
    with smtplib.SMTP(live.host, live.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail('a@b', ['c@d'], b'x\r\n')
    assert (info.value.smtp_code, info.value.smtp_error) == (554, b'Not today')


def test_smtplib_size_refused(live_server):
    live = live_server(RecordingServer, data_size_limit=10)
    with smtplib.SMTP(live.host, live.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail('a@b', ['c@d'], b'x' * 20)
    assert info.value.smtp_code == 552


def test_raw_pipelined_session(live_server, raw_client):
    live = live_server(RecordingServer)
    sock, greeting = raw_client(live.address)
    assert greeting.startswith(b'220 ') and greeting.endswith(b' Python SMTP proxy version 0.3\r\n')
    sock.sendall(b'HELO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n'
                 b'one\r\n..two\r\n.\r\nQUIT\r\n')
    got = b''
    while not got.endswith(b'221 Bye\r\n'):
        chunk = recv_reply(sock)
        assert chunk
        got += chunk
    assert got.split(b'\r\n')[1:] == [b'250 OK', b'250 OK', b'354 End data with <CR><LF>.<CR><LF>',
                                       b'250 OK', b'221 Bye', b'']
    assert live.server.messages[0][3] == b'one\n.two'
    assert sock.recv(10) == b''


def test_many_connections_each_get_greeted(live_server, raw_client):
    live = live_server(RecordingServer)
    socks = [raw_client(live.address) for _ in range(20)]
    for sock, greeting in socks:
        assert greeting.startswith(b'220 ')
        sock.sendall(b'NOOP\r\n')
    for sock, _ in socks:
        assert recv_reply(sock) == b'250 OK\r\n'


def _send(live, mail_options=(), body=b'Subject: hi\r\nFrom: a@b\r\n\r\nline 1\r\n.dot\r\n\r\n'):
    with smtplib.SMTP(live.host, live.port, timeout=10) as client:
        client.ehlo()
        client.mail('a@b', list(mail_options))
        client.rcpt('c@d')
        client.data(body)


def test_debugging_server_output_bytes(live_server, capsys):
    live = live_server(smtpd_compat.DebuggingServer)
    _send(live, ['BODY=8BITMIME'], body=b'Subject: hi\r\n\r\n\xc3\xbc \\ \'q\'\r\n')
    assert capsys.readouterr().out == (
        "---------- MESSAGE FOLLOWS ----------\n"
        "mail options: ['BODY=8BITMIME']\n"
        "b'Subject: hi'\n"
        "b'X-Peer: 127.0.0.1'\n"
        "b''\n"
        "b\"\\xc3\\xbc \\\\ 'q'\"\n"
        "------------ END MESSAGE ------------\n")


def test_debugging_server_output_decoded(live_server, capsys):
    live = live_server(smtpd_compat.DebuggingServer, decode_data=True)
    _send(live, body='Subject: hi\r\nFrom: a@b\r\n\r\nl\u00fcne\r\n.dot\r\n'.encode())
    assert capsys.readouterr().out == (
        "---------- MESSAGE FOLLOWS ----------\n"
        "Subject: hi\n"
        "From: a@b\n"
        "X-Peer: 127.0.0.1\n"
        "\n"
        "l\u00fcne\n"
        ".dot\n"
        "------------ END MESSAGE ------------\n")


def test_debugging_server_no_blank_line(live_server, capsys):
    # Without an empty line no X-Peer line is printed (as in the stdlib).
    live = live_server(smtpd_compat.DebuggingServer)
    _send(live, body=b'just one line\r\n')
    out = capsys.readouterr().out
    assert 'X-Peer' not in out
    assert "b'just one line'\n------------ END MESSAGE" in out

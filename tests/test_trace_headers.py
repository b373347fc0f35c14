"""Trace headers (RFC 5321 section 4.4, issue 12 finding 13): the
delivering servers put Return-Path: and Received: in front of each stored
message, the relay a Received: line; nothing a client sends can add a
header line through them."""
import datetime
import email
import email.policy
import email.utils
import os
import re
import smtplib

import pytest

from conftest import RecordingServer, recv_reply
from smtpd_compat.auth import AuthServerMixin
from smtpd_compat.delivery import (MaildirServer, MboxServer, Session,
                                   line_end, trace_headers)
from smtpd_compat.extensions import ExtensionsMixin
from smtpd_compat.relay import RelayServer
from smtpd_compat.tls import TLSServerMixin

FOLDED_RECEIVED = re.compile(
    r'Received: from (?P<helo>[^\n]+) \(unknown \[(?P<ip>[^\]\n]+)\]\)\n'
    r'\tby (?P<by>[^\n ]+) \(smtpd-compat\) with (?P<proto>[A-Z]+) '
    r'id (?P<id>[0-9A-F]{16})(?:\n\tfor <(?P<rcpt>[^\n]*)>; |;\n\t)'
    r'(?P<date>[^\n]+)\n')


def stored(maildir):
    """The one message in new/."""
    (name,) = os.listdir(os.path.join(maildir, 'new'))
    with open(os.path.join(maildir, 'new', name), 'rb') as f:
        return f.read()


def split_trace(content):
    """(Return-Path value, match of the Received: line, the rest)."""
    text = content.decode('utf-8')
    first, _, rest = text.partition('\n')
    assert first.startswith('Return-Path: <') and first.endswith('>'), text
    m = FOLDED_RECEIVED.match(rest)
    assert m, text
    return first[len('Return-Path: <'):-1], m, rest[m.end():]


def assert_recent(date):
    when = email.utils.parsedate_to_datetime(date)
    now = datetime.datetime.now(datetime.timezone.utc)
    # Only that it is a real RFC 5322 date of today (no wall-clock race).
    assert abs(now - when) < datetime.timedelta(hours=12)


def test_maildir_ehlo_single_recipient(live_server, tmp_path):
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir)
    with smtplib.SMTP(*live.address, local_hostname='client.example',
                      timeout=5) as client:
        client.sendmail('sender@example.com', ['rcpt@example.com'],
                        b'Subject: traced\r\n\r\nbody\r\n')
    return_path, m, rest = split_trace(stored(maildir))
    assert return_path == 'sender@example.com'
    assert (m['helo'], m['ip'], m['proto'], m['rcpt']) == (
        'client.example', '127.0.0.1', 'ESMTP', 'rcpt@example.com')
    assert_recent(m['date'])
    assert rest == 'Subject: traced\n\nbody'
    # A mail reader sees both as headers of the message.
    msg = email.message_from_bytes(stored(maildir), policy=email.policy.default)
    assert msg['Return-Path'] == '<sender@example.com>'
    assert len(msg.get_all('Received')) == 1 and msg['Subject'] == 'traced'


def test_helo_and_several_recipients(live_server, tmp_path):
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.helo('old.example')
        client.sendmail('s@x', ['one@x', 'bcc@x'], b'Subject: two\r\n\r\nx\r\n')
    return_path, m, rest = split_trace(stored(maildir))
    assert (m['helo'], m['proto'], m['rcpt']) == ('old.example', 'SMTP', None)
    # neither recipient named: a Bcc recipient stays hidden from the others
    assert b'bcc@x' not in stored(maildir) and b'one@x' not in stored(maildir)
    assert_recent(m['date'])


def test_null_sender(live_server, tmp_path):
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.sendmail('<>', ['r@x'], b'Subject: bounce\r\n\r\nx\r\n')
    assert stored(maildir).startswith(b'Return-Path: <>\nReceived: ')


HOSTILE_HELOS = [
    b'evil\rX-Injected: yes',
    b'evil\nX-Injected: yes',
    b'evil\r\x00X-Injected: yes\x0b\x1b[2J',
    'evil\u2028X-Injected: yes\u0085'.encode('utf-8'),
]


@pytest.mark.parametrize('helo', HOSTILE_HELOS, ids=['cr', 'lf', 'controls', 'unicode-separators'])
def test_helo_cannot_add_a_header(live_server, raw_client, tmp_path, helo):
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir)
    sock, _ = raw_client(live.address)
    sock.sendall(b'EHLO ' + helo + b'\r\n')
    assert recv_reply(sock).startswith(b'250')
    for line in (b'MAIL FROM:<a@x>', b'RCPT TO:<b@x>', b'DATA'):
        sock.sendall(line + b'\r\n')
        assert recv_reply(sock)[:3] in (b'250', b'354')
    sock.sendall(b'Subject: x\r\n\r\nbody\r\n.\r\n')
    assert recv_reply(sock).startswith(b'250')
    content = stored(maildir)
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert 'X-Injected' not in msg
    assert list(msg.keys()) == ['Return-Path', 'Received', 'Subject']
    # Every header line is one line: no control character but the fold's TAB.
    head = content.split(b'\n\n', 1)[0].decode('utf-8')
    assert not re.search('[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]',
                         head.replace('\n', '')), head
    return_path, m, rest = split_trace(content)
    assert m['helo'].startswith('evil?') and 'X-Injected: yes' in m['helo']


@pytest.mark.parametrize('field', ['helo', 'mailfrom', 'rcpt', 'peer'])
def test_trace_headers_clean_every_client_field(field):
    evil = 'x\r\nX-Injected: yes\r\n\r\nbody\x00\u2028'
    values = {'helo': 'h', 'mailfrom': 'a@x', 'rcpt': 'b@x', 'peer': '192.0.2.1'}
    values[field] = evil
    headers = trace_headers(values['mailfrom'], [values['rcpt']],
                            Session(values['helo'], (values['peer'], 25), 'ESMTP',
                                    'mx.example'))
    lines = headers.decode('utf-8').split('\n')
    assert lines[-1] == '' and len(lines) == 5, lines
    assert lines[0].startswith('Return-Path: <') and lines[1].startswith('Received: from ')
    assert lines[2].startswith('\tby mx.example ') and lines[3].startswith('\tfor <')
    assert 'x??X-Injected: yes????body??' in ''.join(lines)
    for line in lines:
        assert not re.search('[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]', line)


def test_trace_headers_bounded_line_length():
    headers = trace_headers('a' * 5000 + '@x', ['b' * 5000 + '@x'],
                            Session('h' * 5000, ('192.0.2.1', 25), 'ESMTP', 'mx'))
    # RFC 5322 section 2.1.1: at most 998 characters per line
    assert max(len(line) for line in headers.split(b'\n')) <= 998


@pytest.mark.parametrize('peer, expected', [
    (('192.0.2.1', 25), '(unknown [192.0.2.1])'),
    (('2001:db8::1', 25, 0, 0), '(unknown [IPv6:2001:db8::1])'),
    (('fe80::1%eth0', 25, 0, 2), '(unknown [IPv6:fe80::1])'),
    ('', None),                       # a UNIX socket: no TCP info
], ids=['ipv4', 'ipv6', 'scoped-ipv6', 'unix'])
def test_received_tcp_info(peer, expected):
    headers = trace_headers('a@x', ['b@x'], Session('h', peer, 'LMTP', 'mx'),
                            message_id='ABC', date='Mon, 30 Nov 2026 03:00:00 +0000')
    first = headers.split(b'\n')[1].decode()
    assert first == ('Received: from h %s' % expected if expected else 'Received: from h')
    assert headers.endswith(b'\tby mx (smtpd-compat) with LMTP id ABC\n'
                            + b'\tfor <b@x>; Mon, 30 Nov 2026 03:00:00 +0000\n')


@pytest.mark.parametrize('data, expected', [
    (b'a\nb\r\n', b'\n'), (b'a\r\nb\n', b'\r\n'), (b'no line end', b'\n'),
    (b'\r\n', b'\r\n'), (b'\n', b'\n')])
def test_line_end(data, expected):
    assert line_end(data) == expected


def test_decode_data_str_message(live_server, tmp_path):
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir, decode_data=True)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.sendmail('s@x', ['r@x'], 'Subject: caf\u00e9\r\n\r\n\u00fcber\r\n'.encode())
    return_path, m, rest = split_trace(stored(maildir))
    assert (return_path, m['rcpt'], rest) == ('s@x', 'r@x', 'Subject: caf\u00e9\n\n\u00fcber')


def test_bdat_message(live_server, raw_client, tmp_path):
    class Server(ExtensionsMixin, MaildirServer):
        pass
    maildir = str(tmp_path / 'md')
    live = live_server(Server, maildir=maildir)
    sock, _ = raw_client(live.address)
    sock.sendall(b'EHLO c\r\n')
    recv_reply(sock)
    sock.sendall(b'MAIL FROM:<s@x>\r\nRCPT TO:<r@x>\r\nBDAT 14 LAST\r\nSubject: b\r\n\r\n')
    data = b''
    while data.count(b'\r\n') < 3:
        chunk = sock.recv(4096)
        assert chunk
        data += chunk
    assert data.splitlines()[-1].startswith(b'250')
    return_path, m, rest = split_trace(stored(maildir))
    assert (m['proto'], m['rcpt'], rest) == ('ESMTP', 'r@x', 'Subject: b\n\n')


def test_mbox_entry(live_server, tmp_path):
    mbox = str(tmp_path / 'mbox')
    live = live_server(MboxServer, mbox=mbox)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.sendmail('s@x', ['r@x'], b'Subject: m\r\n\r\nFrom here\r\n')
    with open(mbox, 'rb') as f:
        from_line, _, entry = f.read().partition(b'\n')
    assert from_line.startswith(b'From s@x ')
    return_path, m, rest = split_trace(entry)
    assert (return_path, m['rcpt'], rest) == ('s@x', 'r@x', 'Subject: m\n\n>From here\n\n')


def test_subclass_gets_the_session(live_server, tmp_path):
    seen = []

    class Filtering(MaildirServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            seen.append(kwargs['session'])
            return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)

    live = live_server(Filtering, maildir=str(tmp_path / 'md'))
    with smtplib.SMTP(*live.address, local_hostname='me.example', timeout=5) as client:
        client.sendmail('s@x', ['r@x'], b'x\r\n')
    (session,) = seen
    assert (session.helo, session.peer[0], session.protocol) == (
        'me.example', '127.0.0.1', 'ESMTP')


def test_trace_headers_can_be_turned_off(live_server, tmp_path):
    class Untraced(MaildirServer):
        add_trace_headers = False
    maildir = str(tmp_path / 'md')
    live = live_server(Untraced, maildir=maildir)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.sendmail('s@x', ['r@x'], b'Subject: as sent\r\n\r\nx\r\n')
    assert stored(maildir) == b'Subject: as sent\n\nx'


def accept_alice(mechanism, login, password, channel):
    return (login, password) == ('alice', 'secret')


@pytest.mark.parametrize('use_tls, use_auth, expected', [
    (True, False, 'ESMTPS'),
    (False, True, 'ESMTPA'),
    (True, True, 'ESMTPSA'),
], ids=['tls', 'auth', 'tls-auth'])
def test_rfc3848_protocol(live_server, tmp_path, tls_certs, use_tls, use_auth, expected):
    class Server(AuthServerMixin, TLSServerMixin, MaildirServer):
        pass
    maildir = str(tmp_path / 'md')
    live = live_server(Server, maildir=maildir, tls_context=tls_certs.server_context,
                       authenticator=accept_alice, auth_allow_plaintext=True)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        if use_tls:
            client.starttls(context=tls_certs.client_context)
        if use_auth:
            client.login('alice', 'secret')
        client.sendmail('s@x', ['r@x'], b'x\r\n')
    return_path, m, rest = split_trace(stored(maildir))
    assert m['proto'] == expected


def test_relay_adds_received_only(live_server):
    upstream = live_server(RecordingServer)
    relay = live_server(RelayServer, remoteaddr=upstream.address, relay_timeout=5)
    with smtplib.SMTP(*relay.address, local_hostname='c.example', timeout=5) as client:
        client.sendmail('s@x', ['r@x'], b'Subject: relayed\r\n\r\nx\r\n')
    ((peer, mailfrom, rcpttos, data, kwargs),) = upstream.server.messages
    text = data.decode()
    m = FOLDED_RECEIVED.match(text)
    assert m, text
    assert (m['helo'], m['proto'], m['rcpt']) == ('c.example', 'ESMTP', 'r@x')
    # The relay does not deliver: no Return-Path (RFC 5321 section 4.4).
    assert 'Return-Path' not in text and text[m.end():] == 'Subject: relayed\n\nx'

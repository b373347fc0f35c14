"""Log hygiene: whatever a client sends, a log line stays one line without
control characters (issue 12, finding 2)."""
import logging
import os
import re
import socket
import warnings

import pytest

from smtpd_compat import logfmt, logging_
from smtpd_compat.limits import LimitedServer
from smtpd_compat.logging_ import format_peer, safe
from smtpd_compat.proxy_protocol import ProxyProtocolServerMixin

from conftest import RecordingServer, read_to_eof, recv_reply

# Every character a client could use to end a line or move the cursor.
CONTROLS = [chr(c) for c in list(range(0x20)) + list(range(0x7f, 0xa0))] + [
    '\u2028', '\u2029', '\u200e', '\ufeff']


@pytest.mark.parametrize('value, expected', [
    ('plain text', 'plain text'),
    ('a\r\nFAKE line', 'a\\x0d\\x0aFAKE line'),
    ('tab\there', 'tab\\x09here'),
    ('\x1b[31mred', '\\x1b[31mred'),
    ('del\x7f c1\x85', 'del\\x7f c1\\x85'),
    ('back\\slash', 'back\\\\slash'),
    ('caf\xe9 \u65e5\u672c', 'caf\xe9 \u65e5\u672c'),
    ('sep\u2028x\u2029', 'sep\\u2028x\\u2029'),
    (b'bytes\n\xff\xc3\xa9', 'bytes\\x0a\\xff\xe9'),
    (('fe80::2', 25), "('fe80::2', 25)"),
    (None, 'None'),
], ids=['plain', 'crlf', 'tab', 'escape', 'del-c1', 'backslash', 'unicode',
        'separators', 'bytes', 'tuple', 'none'])
def test_safe(value, expected):
    assert safe(value) == expected


def test_safe_leaves_nothing_that_breaks_a_line():
    text = safe(''.join(CONTROLS) + 'x')
    assert text.isprintable() and text.endswith('x')
    # Distinct inputs stay distinct: a literal "\x0a" typed by a client is
    # not confused with a line feed.
    assert safe('\\x0a') != safe('\n')


def test_format_peer():
    assert format_peer(('192.0.2.1', 25)) == '192.0.2.1:25'
    assert format_peer(('2001:db8::1', 25, 0, 0)) == '[2001:db8::1]:25'
    assert format_peer('/run/smtp\n.sock') == '/run/smtp\\x0a.sock'
    assert format_peer(('fe80::2%\nFAKE', 1)) == '[fe80::2%\\x0aFAKE]:1'


class ProxiedLimited(ProxyProtocolServerMixin, LimitedServer):
    process_message = RecordingServer.process_message

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []


def test_hostile_session_logs_one_line_per_record(live_server, caplog):
    caplog.set_level(logging.DEBUG)
    server = live_server(ProxiedLimited, max_errors=None)
    server.server.reply = '550 refused <a\x1b[2J\rFAKE@x>'
    hostile = [
        b'PROXY TCP4 192.0.2.7 198.51.100.1 1234 25\r\n',
        b'EHLO evil\x0bhost\x1b[31m\xc2\x85\r\n',
        b'MAIL FROM:<a\nFAKE: line@b>\r\n',
        b'MAIL FROM:<x\x1b]0;t\x07@b>\r\n',
        b'RSET\r\n', b'MAIL FROM:<ok@b>\r\n',
        b'RCPT TO:<r\xe2\x80\xa8@b>\r\n', b'RCPT TO:<ok@b>\r\n',
        b'DATA\r\n', b'Subject: \x1b\r\n\r\nbody\r\n.\r\n', b'QUIT\r\n',
    ]
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        sock.sendall(b''.join(hostile))
        replies = read_to_eof(sock)
    server.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("reply='550 refused" in m for m in messages), (messages, replies)
    for message in messages:
        assert message.isprintable(), repr(message)


_MESSAGE_LINE = re.compile(
    r"^message from 127\.0\.0\.1:\d+: id=([0-9A-F]{12}) from=<(.*)> "
    r"size=(\d+) recipients=(\d+) reply='(.*)'$")


class Limited(LimitedServer):
    process_message = RecordingServer.process_message
    reply = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []


def test_message_line_names_id_sender_recipients_and_size(live_server, caplog):
    caplog.set_level(logging.INFO, logger='smtpd_compat')
    server = live_server(Limited)
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        recv_reply(sock)
        for sender, body in ((b'"a\x1b[2J"@b', b'x'), (b'', b'12345')):
            for line in (b'EHLO c', b'MAIL FROM:<' + sender + b'>',
                         b'RCPT TO:<r1@b>', b'RCPT TO:<r2@b>', b'DATA'):
                sock.sendall(line + b'\r\n')
                recv_reply(sock)
            sock.sendall(body + b'\r\n.\r\n')
            assert recv_reply(sock) == b'250 OK\r\n'
            sock.sendall(b'RSET\r\n')
            recv_reply(sock)
    server.stop()
    lines = [m.groups() for m in (_MESSAGE_LINE.match(r.getMessage())
                                  for r in caplog.records) if m]
    assert [line[1:] for line in lines] == [
        ('"a\\x1b[2J"@b', '1', '2', '250 OK'),
        ('', '5', '2', '250 OK')]
    # A new id for every message.
    assert lines[0][0] != lines[1][0]


class Text(str):
    """A str subclass: safe() escapes it the long way."""


@pytest.mark.parametrize('value', [chr(c) + 'x' for c in range(0x80)] + [
    '', 'a b', Text('sub\nclass'), Text('plain')],
    ids=['ascii-%02x' % c for c in range(0x80)] + [
        'empty', 'space', 'subclass-control', 'subclass-plain'])
def test_safe_fast_path_agrees_with_the_escape(value):
    # Printable ASCII without a backslash is returned as it is; every other
    # string gets the same escapes as before.
    assert safe(value) == logfmt._UNSAFE.sub(logfmt._escape, str(value))
    assert type(safe(value)) is str


def test_message_ids_are_new_in_a_forked_child():
    if not hasattr(os, 'fork'):
        pytest.skip('needs os.fork()')
    first = logging_._message_id()      # the batch is drawn now
    read, write = os.pipe()
    with warnings.catch_warnings():
        # (3.12+ warns about fork() while other tests' servers run threads;
        # the child only draws an id and writes it.)
        warnings.simplefilter('ignore', DeprecationWarning)
        pid = os.fork()
    if pid == 0:    # the child: its next id, to the parent
        try:
            os.write(write, logging_._message_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read()
    os.waitpid(pid, 0)
    ours = [logging_._message_id() for _ in range(200)]
    assert re.fullmatch('[0-9A-F]{12}', child)
    # The child drew a batch of its own, not the parent's next id.
    assert child not in ours
    assert len(set(ours + [first])) == 201

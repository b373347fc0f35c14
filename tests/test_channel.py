"""SMTPChannel verb by verb, in the standard library tests' mock-socket
style (no network): a fake connection feeds bytes to handle_read and
collects what the channel sends.  The expected replies are CPython 3.11's
for the same input (they hold on every interpreter, including 3.12+ where
the stdlib module is gone)."""
import socket

import pytest

import smtpd_compat

from conftest import CONFIGS


class FakeConn:
    """Just enough of a socket for asyncore: reads come from ``incoming``,
    writes go to ``sent``."""

    def __init__(self):
        self.incoming = []
        self.sent = b''
        self.closed = False

    def fileno(self):
        return 1000 + id(self) % 1000

    def setblocking(self, flag):
        pass

    def getpeername(self):
        return ('192.0.2.7', 4567)

    def setsockopt(self, *args):
        pass

    def getsockopt(self, *args):
        return 0

    def recv(self, size):
        return self.incoming.pop(0) if self.incoming else b''

    def send(self, data):
        self.sent += data
        return len(data)

    def close(self):
        self.closed = True


class FakeServer:
    def __init__(self):
        self.messages = []
        self.reply = None

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((peer, mailfrom, rcpttos, data, kwargs))
        return self.reply


class FakeSocketModule:
    def getfqdn(self, name=''):
        return 'mx.test'

    def __getattr__(self, name):
        return getattr(socket, name)


@pytest.fixture
def make_channel(monkeypatch):
    monkeypatch.setattr(smtpd_compat, 'socket', FakeSocketModule())

    def make(config='default', channel_class=smtpd_compat.SMTPChannel):
        conn, server = FakeConn(), FakeServer()
        kwargs = dict(CONFIGS[config])
        size = kwargs.pop('data_size_limit', smtpd_compat.DATA_SIZE_DEFAULT)
        channel = channel_class(server, conn, conn.getpeername(), size, map={}, **kwargs)
        assert conn.sent == b'220 mx.test Python SMTP proxy version 0.3\r\n'
        conn.sent = b''
        return channel, conn, server
    return make


def talk(channel, conn, data):
    """Feed ``data`` as one read; return what the channel answered."""
    conn.incoming.append(data)
    channel.handle_read()
    sent, conn.sent = conn.sent, b''
    return sent


SESSIONS = [
    ('default', [
        ('HELO', b'501 Syntax: HELO hostname\r\n'),
        ('HELO h', b'250 mx.test\r\n'),
        ('HELO h', b'503 Duplicate HELO/EHLO\r\n'),
        ('EHLO h', b'503 Duplicate HELO/EHLO\r\n'),
    ]),
    ('default', [
        ('EHLO', b'501 Syntax: EHLO hostname\r\n'),
        ('EHLO h', b'250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n'),
        ('EHLO h', b'503 Duplicate HELO/EHLO\r\n'),
        ('HELO h', b'503 Duplicate HELO/EHLO\r\n'),
    ]),
    ('decode', [
        ('EHLO h', b'250-mx.test\r\n250-SIZE 33554432\r\n250 HELP\r\n'),
    ]),
    ('utf8', [
        ('EHLO h', b'250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 HELP\r\n'),
    ]),
    ('nolimit', [
        ('EHLO h', b'250-mx.test\r\n250-8BITMIME\r\n250 HELP\r\n'),
    ]),
    ('default', [
        ('MAIL FROM:<a@b>', b'503 Error: send HELO first\r\n'),
        ('RCPT TO:<a@b>', b'503 Error: send HELO first\r\n'),
        ('DATA', b'503 Error: send HELO first\r\n'),
        ('NOOP', b'250 OK\r\n'),
        ('NOOP x', b'501 Syntax: NOOP\r\n'),
        ('RSET', b'250 OK\r\n'),
        ('RSET x', b'501 Syntax: RSET\r\n'),
        ('EXPN', b'502 EXPN not implemented\r\n'),
        ('VRFY', b'501 Syntax: VRFY <address>\r\n'),
        ('VRFY <a@b>', b'252 Cannot VRFY user, but will accept message and attempt delivery\r\n'),
        ('VRFY ""', b'502 Could not VRFY ""\r\n'),
        ('FOO', b'500 Error: command "FOO" not recognized\r\n'),
        ('foo bar', b'500 Error: command "FOO" not recognized\r\n'),
        ('', b'500 Error: bad syntax\r\n'),
        ('QUIT x', b'221 Bye\r\n'),
    ]),
    ('default', [
        ('HELP', b'250 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n'),
        ('HELP ehlo', b'250 Syntax: EHLO hostname\r\n'),
        ('HELP HELO', b'250 Syntax: HELO hostname\r\n'),
        ('HELP MAIL', b'250 Syntax: MAIL FROM: <address>\r\n'),
        ('HELP RCPT', b'250 Syntax: RCPT TO: <address>\r\n'),
        ('HELP DATA', b'250 Syntax: DATA\r\n'),
        ('HELP RSET', b'250 Syntax: RSET\r\n'),
        ('HELP NOOP', b'250 Syntax: NOOP\r\n'),
        ('HELP QUIT', b'250 Syntax: QUIT\r\n'),
        ('HELP VRFY', b'250 Syntax: VRFY <address>\r\n'),
        ('HELP EXPN', b'501 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n'),
        ('EHLO h', b'250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n'),
        ('HELP MAIL', b'250 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
        ('HELP RCPT', b'250 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n'),
    ]),
    ('default', [
        ('HELO h', b'250 mx.test\r\n'),
        ('MAIL', b'501 Syntax: MAIL FROM: <address>\r\n'),
        ('MAIL FROM:', b'501 Syntax: MAIL FROM: <address>\r\n'),
        ('MAIL TO:<a@b>', b'501 Syntax: MAIL FROM: <address>\r\n'),
        ('MAIL FROM:<a@b> SIZE=1', b'501 Syntax: MAIL FROM: <address>\r\n'),
        ('MAIL FROM:<a@b>', b'250 OK\r\n'),
        ('MAIL FROM:<c@d>', b'503 Error: nested MAIL command\r\n'),
        ('RCPT', b'501 Syntax: RCPT TO: <address>\r\n'),
        ('RCPT TO:', b'501 Syntax: RCPT TO: <address>\r\n'),
        ('RCPT TO:<a@b> X=1', b'501 Syntax: RCPT TO: <address>\r\n'),
        ('DATA', b'503 Error: need RCPT command\r\n'),
        ('RCPT TO:<a@b>', b'250 OK\r\n'),
        ('DATA x', b'501 Syntax: DATA\r\n'),
    ]),
    ('default', [
        ('EHLO h', b'250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n'),
        ('MAIL FROM:<a@b> FOO', b'555 MAIL FROM parameters not recognized or not implemented\r\n'),
        ('MAIL FROM:<a@b> SIZE=', b'501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
        ('MAIL FROM:<a@b> SIZE=x', b'501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
        ('MAIL FROM:<a@b> BODY=X', b'501 Error: BODY can only be one of 7BIT, 8BITMIME\r\n'),
        ('MAIL FROM:<a@b> SMTPUTF8', b'555 MAIL FROM parameters not recognized or not implemented\r\n'),
        ('MAIL FROM:<a@b> SIZE=99999999999', b'552 Error: message size exceeds fixed maximum message size\r\n'),
        ('MAIL FROM:<a@b> BODY=8BITMIME SIZE=5', b'250 OK\r\n'),
        ('RCPT TO:<c@d> FOO=1', b'555 RCPT TO parameters not recognized or not implemented\r\n'),
        ('RCPT TO:<c@d> =', b'501 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n'),
        ('RCPT TO:c@d', b'250 OK\r\n'),
    ]),
    ('utf8', [
        ('EHLO h', b'250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 HELP\r\n'),
        ('MAIL FROM:<a@b> SMTPUTF8=x', b'501 Error: SMTPUTF8 takes no arguments\r\n'),
        ('MAIL FROM:<a@b> SMTPUTF8', b'250 OK\r\n'),
        ('RCPT TO:<ü@b>', b'250 OK\r\n'),
        ('FOOü', b'500 Error: command "FOO\xc3\x9c" not recognized\r\n'),
    ]),
    ('decode', [
        ('EHLO h', b'250-mx.test\r\n250-SIZE 33554432\r\n250 HELP\r\n'),
        ('MAIL FROM:<a@b> BODY=8BITMIME', b'555 MAIL FROM parameters not recognized or not implemented\r\n'),
    ]),
    ('small', [
        ('EHLO h', b'250-mx.test\r\n250-SIZE 64\r\n250-8BITMIME\r\n250 HELP\r\n'),
        ('MAIL FROM:<a@b> SIZE=65', b'552 Error: message size exceeds fixed maximum message size\r\n'),
        ('MAIL FROM:<a@b> SIZE=64', b'250 OK\r\n'),
    ]),
    ('default', [
        ('NOOP' + ' ' * 508, b'250 OK\r\n'),
        ('NOOP' + ' ' * 509, b'500 Error: line too long\r\n'),
        ('EHLO h', b'250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n'),
        ('MAIL FROM:<a@b> ' + 'x' * 523, b'500 Error: line too long\r\n'),
        ('MAIL FROM:<a@b> ' + 'x' * 522, b'555 MAIL FROM parameters not recognized or not implemented\r\n'),
    ]),
]


@pytest.mark.parametrize('config,steps', SESSIONS,
                         ids=['%d-%s-%s' % (i, c, s[0][0].split(' ')[0] or 'empty')
                              for i, (c, s) in enumerate(SESSIONS)])
def test_replies(make_channel, config, steps):
    channel, conn, server = make_channel(config)
    for line, reply in steps:
        assert talk(channel, conn, line.encode('utf-8') + b'\r\n') == reply, line
    assert server.messages == []


def _transaction(channel, conn, greeting='EHLO h'):
    for line in (greeting, 'MAIL FROM:<a@b>', 'RCPT TO:<c@d>'):
        assert talk(channel, conn, line.encode() + b'\r\n').startswith(b'250')
    assert talk(channel, conn, b'DATA\r\n') == b'354 End data with <CR><LF>.<CR><LF>\r\n'


@pytest.mark.parametrize('config', ['default', 'decode'])
def test_data_unstuffing_and_line_ends(make_channel, config):
    channel, conn, server = make_channel(config)
    _transaction(channel, conn)
    body = b'..a\r\nb\r\n...\r\n.\r\r\n\r\nc\rd\ne\r\n'
    assert talk(channel, conn, body + b'.\r\n') == b'250 OK\r\n'
    expected = b'.a\nb\n..\n\r\n\nc\rd\ne'
    (peer, mailfrom, rcpttos, data, kwargs), = server.messages
    assert peer == ('192.0.2.7', 4567)
    assert (mailfrom, rcpttos) == ('a@b', ['c@d'])
    if config == 'decode':
        assert (data, kwargs) == (expected.decode(), {})
    else:
        assert (data, kwargs) == (expected, {'mail_options': [], 'rcpt_options': []})
    assert channel.received_data == data
    # Post-DATA state: envelope cleared, greeting kept.
    assert (channel.smtp_state, channel.mailfrom, channel.rcpttos) == (channel.COMMAND, None, [])
    assert channel.seen_greeting == 'h'


def test_options_reach_process_message(make_channel):
    channel, conn, server = make_channel()
    talk(channel, conn, b'EHLO h\r\nMAIL FROM:<a@b> body=8bitmime SIZE=10\r\n'
         b'RCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\nx\r\n.\r\n')
    assert server.messages[0][4] == {'mail_options': ['BODY=8BITMIME', 'SIZE=10'],
                                     'rcpt_options': []}
    assert server.messages[0][2] == ['c@d', 'e@f']


def test_process_message_reply(make_channel):
    channel, conn, server = make_channel()
    server.reply = '451 Try later'
    _transaction(channel, conn, 'HELO h')
    assert talk(channel, conn, b'x\r\n.\r\n') == b'451 Try later\r\n'


def test_process_message_exception_propagates(make_channel):
    channel, conn, server = make_channel()

    def boom(*args, **kwargs):
        raise RuntimeError('boom')
    server.process_message = boom
    _transaction(channel, conn)
    conn.incoming.append(b'x\r\n.\r\n')
    with pytest.raises(RuntimeError):
        channel.handle_read()


def test_data_too_big(make_channel):
    channel, conn, server = make_channel('small')
    _transaction(channel, conn)
    assert talk(channel, conn, b'x' * 65 + b'\r\n.\r\n') == b'552 Error: Too much mail data\r\n'
    assert server.messages == []


def test_data_at_limit(make_channel):
    channel, conn, server = make_channel('small')
    _transaction(channel, conn)
    assert talk(channel, conn, b'x' * 62 + b'\r\n.\r\n') == b'250 OK\r\n'


def test_quit_closes(make_channel):
    channel, conn, server = make_channel()
    assert talk(channel, conn, b'QUIT\r\n') == b'221 Bye\r\n'
    channel.handle_write()      # the close waits for the write queue
    assert conn.closed


def test_rset_clears_envelope(make_channel):
    channel, conn, server = make_channel()
    talk(channel, conn, b'EHLO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n')
    assert talk(channel, conn, b'RSET\r\n') == b'250 OK\r\n'
    assert (channel.mailfrom, channel.rcpttos, channel.received_lines) == (None, [], [])
    assert channel.seen_greeting == 'h'
    assert talk(channel, conn, b'DATA\r\n') == b'503 Error: need RCPT command\r\n'


def test_instance_variables(make_channel):
    channel, conn, server = make_channel()
    assert channel.smtp_server is server and channel.conn is conn
    assert channel.addr == channel.peer == ('192.0.2.7', 4567)
    assert channel.fqdn == 'mx.test'
    assert (channel.smtp_state, channel.seen_greeting, channel.mailfrom) == (0, '', None)
    assert (channel.rcpttos, channel.received_data, channel.received_lines) == ([], '', [])
    assert channel.extended_smtp is False and channel.require_SMTPUTF8 is False
    assert channel.data_size_limit == smtpd_compat.DATA_SIZE_DEFAULT
    assert channel.max_command_size_limit == 512
    talk(channel, conn, b'EHLO h\r\n')
    assert channel.extended_smtp is True
    assert channel.max_command_size_limit == 538


def test_subclass_adds_a_verb(make_channel):
    class Channel(smtpd_compat.SMTPChannel):
        def smtp_XHELLO(self, arg):
            self.push('250 hello %s' % arg)

    channel, conn, server = make_channel(channel_class=Channel)
    assert talk(channel, conn, b'xhello you\r\n') == b'250 hello you\r\n'


class BufferPeekingChannel(smtpd_compat.SMTPChannel):
    """Records what ``ac_in_buffer`` holds while each line is handled, and
    throws away the rest of the input after a NOOP with an argument (the
    way STARTTLS must drop pipelined plaintext)."""

    def found_terminator(self):
        self.seen_buffers = getattr(self, 'seen_buffers', [])
        self.seen_buffers.append(bytes(self.ac_in_buffer))
        super().found_terminator()

    def smtp_NOOP(self, arg):
        super().smtp_NOOP(arg)
        if arg == 'discard':
            self.ac_in_buffer = b''


def test_buffer_reads_empty_while_a_line_is_handled(make_channel):
    # Documented in docs/deviations.rst ("Subclass notes"): the rest of the
    # read is held by handle_read, not in ac_in_buffer.
    channel, conn, server = make_channel(channel_class=BufferPeekingChannel)
    assert talk(channel, conn, b'NOOP\r\nNOOP\r\nNO') == b'250 OK\r\n250 OK\r\n'
    assert channel.seen_buffers == [b'', b'']
    # As in asynchat, an incomplete line is collected, not kept buffered.
    assert channel.ac_in_buffer == b''
    assert channel.received_lines == [b'NO']
    assert talk(channel, conn, b'OP\r\n') == b'250 OK\r\n'


def test_assigning_the_buffer_drops_the_rest_of_the_input(make_channel):
    channel, conn, server = make_channel(channel_class=BufferPeekingChannel)
    sent = talk(channel, conn, b'NOOP discard\r\nHELO evil\r\nMAIL FROM:<e@x>\r\n')
    assert sent == b'501 Syntax: NOOP\r\n'
    assert channel.seen_greeting == ''
    assert channel.ac_in_buffer == b''
    assert talk(channel, conn, b'HELO good\r\n') == b'250 mx.test\r\n'

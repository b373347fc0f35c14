"""PIPELINING, CHUNKING/BINARYMIME, DSN and ENHANCEDSTATUSCODES
(smtpd_compat.extensions): parser tables, then live sessions."""
import smtplib
import subprocess
import sys

import pytest

from conftest import RecordingServer, read_to_eof, recv_reply, require_tool
from smtpd_compat import extensions
from smtpd_compat.extensions import (
    ESMTPServer, EXTENSIONS, enhance_reply, parse_bdat, parse_envid,
    parse_notify, parse_orcpt, parse_ret, xtext_decode)


# ---------------------------------------------------------------------------
# Sans-IO parsers

@pytest.mark.parametrize('arg, expected', [
    ('0', (0, False)),
    ('0 LAST', (0, True)),
    ('123', (123, False)),
    ('123 last', (123, True)),
    ('  7   LAST ', (7, True)),
], ids=['zero', 'zero-last', 'size', 'last-lowercase', 'spaces'])
def test_parse_bdat_valid(arg, expected):
    assert parse_bdat(arg) == expected


@pytest.mark.parametrize('arg', [
    None, '', 'LAST', '-1', '1.5', '12 FIRST', '12 LAST x', '0x10',
    '\u0661\u0662',          # Arabic-Indic digits: str.isdigit() says yes
    '9' * 19,                # absurdly large
], ids=['none', 'empty', 'no-size', 'negative', 'fraction', 'bad-word',
        'extra', 'hex', 'unicode-digits', 'huge'])
def test_parse_bdat_invalid(arg):
    with pytest.raises(ValueError):
        parse_bdat(arg)


@pytest.mark.parametrize('text, expected', [
    ('abc', 'abc'),
    ('a+2Bb', 'a+b'),
    ('+3D', '='),
    ('', ''),
    ('rfc822+3Buser@example.com', 'rfc822;user@example.com'),
], ids=['plain', 'plus', 'equals', 'empty', 'semicolon'])
def test_xtext_decode(text, expected):
    assert xtext_decode(text) == expected


@pytest.mark.parametrize('text', ['a+2b', 'a+2', 'a+', 'a=b', 'a b', 'caf\u00e9'],
                         ids=['lowercase-hex', 'short', 'bare-plus', 'equals',
                              'space', 'non-ascii'])
def test_xtext_decode_invalid(text):
    with pytest.raises(ValueError):
        xtext_decode(text)


@pytest.mark.parametrize('parser, value, expected', [
    (parse_notify, 'NEVER', ('NEVER',)),
    (parse_notify, 'success,failure', ('SUCCESS', 'FAILURE')),
    (parse_notify, 'DELAY', ('DELAY',)),
    (parse_orcpt, 'rfc822;Bob@Example.com', ('rfc822', 'Bob@Example.com')),
    (parse_orcpt, 'rfc822;a+2Bb@x', ('rfc822', 'a+b@x')),
    (parse_ret, 'hdrs', 'HDRS'),
    (parse_ret, 'FULL', 'FULL'),
    (parse_envid, 'QQ314159+2B', 'QQ314159+'),
], ids=['notify-never', 'notify-list', 'notify-delay', 'orcpt', 'orcpt-xtext',
        'ret-hdrs', 'ret-full', 'envid'])
def test_dsn_parsers_valid(parser, value, expected):
    assert parser(value) == expected


@pytest.mark.parametrize('parser, value', [
    (parse_notify, 'NEVER,SUCCESS'),
    (parse_notify, 'SUCCESS,SUCCESS'),
    (parse_notify, 'SOMETIMES'),
    (parse_notify, ''),
    (parse_orcpt, 'user@example.com'),
    (parse_orcpt, 'rfc822;'),
    (parse_orcpt, ';user@x'),
    (parse_orcpt, 'rfc822;' + 'a' * 500),
    (parse_ret, 'ALL'),
    (parse_envid, 'x' * 101),
    (parse_envid, 'a+zz'),
], ids=['notify-never-plus', 'notify-dup', 'notify-word', 'notify-empty',
        'orcpt-no-type', 'orcpt-no-addr', 'orcpt-empty-type', 'orcpt-long',
        'ret-bad', 'envid-long', 'envid-bad-xtext'])
def test_dsn_parsers_invalid(parser, value):
    with pytest.raises(ValueError):
        parser(value)


@pytest.mark.parametrize('line, verb, expected', [
    ('250 OK', 'MAIL', '250 2.1.0 OK'),
    ('250 OK', 'RCPT', '250 2.1.5 OK'),
    ('250 OK', '.', '250 2.0.0 OK'),
    ('500 Error: command "X" not recognized', 'X',
     '500 5.5.2 Error: command "X" not recognized'),
    ('503 Error: need MAIL command', 'RCPT', '503 5.5.1 Error: need MAIL command'),
    ('552 Error: Too much mail data', '.', '552 5.3.4 Error: Too much mail data'),
    ('550 No such user', 'RCPT', '550 5.0.0 No such user'),
    ('451 4.3.0 already coded', '.', '451 4.3.0 already coded'),
    ('354 End data with <CR><LF>.<CR><LF>', 'DATA',
     '354 End data with <CR><LF>.<CR><LF>'),
    ('250-first line', 'HELP', '250-2.0.0 first line'),
    ('221', 'QUIT', '221 2.0.0'),
], ids=['mail', 'rcpt', 'data', 'unknown', 'sequence', 'size', 'default',
        'already', '354-untouched', 'multiline', 'no-text'])
def test_enhance_reply(line, verb, expected):
    assert enhance_reply(line, verb) == expected


# ---------------------------------------------------------------------------
# Live sessions

class Recorder(ESMTPServer):
    """Records (mailfrom, rcpttos, data, kwargs); replies with self.reply."""
    reply = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((mailfrom, rcpttos, data, kwargs))
        return self.reply


def read_replies(sock, count, timeout=5.0):
    """Read until ``count`` complete replies have arrived; returns the
    list of final reply lines (str)."""
    sock.settimeout(timeout)
    data = b''
    while True:
        finals = [line for line in data.split(b'\r\n')[:-1]
                  if line[3:4] != b'-']
        if len(finals) >= count:
            return [line.decode() for line in finals]
        chunk = sock.recv(65536)
        assert chunk, 'connection closed after %r' % data
        data += chunk


def session(raw_client, live, *commands):
    sock, greeting = raw_client(live.address)
    assert greeting.startswith(b'220 ')   # no enhanced code on the greeting
    sock.sendall(b'EHLO client.example\r\n')
    ehlo = recv_reply(sock).decode()
    return sock, ehlo


def test_ehlo_advertises_only_enabled(live_server, raw_client):
    live = live_server(Recorder, esmtp_extensions=('PIPELINING', 'DSN'))
    sock, ehlo = session(raw_client, live)
    assert '250-PIPELINING\r\n' in ehlo and '250-DSN\r\n' in ehlo
    for absent in ('CHUNKING', 'BINARYMIME', 'ENHANCEDSTATUSCODES'):
        assert absent not in ehlo
    # No enhanced codes in the EHLO reply itself (RFC 2034 section 3).
    assert ehlo.endswith('250 HELP\r\n')
    sock.sendall(b'BDAT 3 LAST\r\nabc\r\n')
    # Disabled CHUNKING: BDAT is unknown, and its "chunk" is a command.
    assert read_replies(sock, 2) == ['500 Error: command "BDAT" not recognized',
                                     '500 Error: command "ABC" not recognized']


def test_stdlib_server_unchanged(recording_server, raw_client):
    sock, ehlo = session(raw_client, recording_server)
    for name in EXTENSIONS:
        assert name not in ehlo
    sock.sendall(b'MAIL FROM:<a@x> RET=HDRS\r\nBDAT 0 LAST\r\n')
    assert read_replies(sock, 2) == [
        '555 MAIL FROM parameters not recognized or not implemented',
        '500 Error: command "BDAT" not recognized']


def test_pipelined_transaction_in_one_write(live_server, raw_client):
    live = live_server(Recorder)
    sock, greeting = raw_client(live.address)
    # The whole session, body included, in one write (RFC 2920; DATA is
    # the last command of a batch, and its content follows).
    sock.sendall(b'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n'
                 b'RCPT FROM:<z@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n'
                 b'Subject: s\r\n\r\n..dot\r\nbody\r\n.\r\n'
                 b'NOOP\r\nQUIT\r\n')
    replies = read_replies(sock, 9)
    assert replies[0] == '250 HELP'
    assert replies[1:] == [
        '250 2.1.0 OK', '250 2.1.5 OK',
        '501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]',
        '250 2.1.5 OK', '354 End data with <CR><LF>.<CR><LF>',
        '250 2.0.0 OK', '250 2.0.0 OK', '221 2.0.0 Bye']
    (mailfrom, rcpttos, data, kwargs), = live.server.messages
    assert (mailfrom, rcpttos) == ('a@x', ['b@x', 'c@x'])
    assert data == b'Subject: s\n\n.dot\nbody'


MESSAGE = (b'Subject: chunked\r\n\r\n.leading dot stays\r\n'
           b'.\r\nnot the end\r\n..two\r\nlast line\r\n')


def bdat_session(raw_client, live, chunks, mail=b'MAIL FROM:<a@x>'):
    """Send MAIL, RCPT and the chunks (last one with LAST) in one write."""
    sock, _ = session(raw_client, live)
    wire = mail + b'\r\nRCPT TO:<b@x>\r\n'
    for i, chunk in enumerate(chunks):
        last = b' LAST' if i == len(chunks) - 1 else b''
        wire += b'BDAT %d%s\r\n' % (len(chunk), last) + chunk
    sock.sendall(wire)
    return sock, read_replies(sock, 2 + len(chunks))


@pytest.mark.parametrize('sizes', [
    [len(MESSAGE)], [10, 20, len(MESSAGE) - 30], [1] * 8 + [len(MESSAGE) - 8],
], ids=['one-chunk', 'three-chunks', 'tiny-chunks'])
def test_bdat_no_unstuffing(live_server, raw_client, sizes):
    live = live_server(Recorder)
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(MESSAGE[pos:pos + size])
        pos += size
    sock, replies = bdat_session(raw_client, live, chunks)
    assert replies[:2] == ['250 2.1.0 OK', '250 2.1.5 OK']
    assert replies[2:-1] == ['250 2.0.0 OK %d octets received' % len(c)
                             for c in chunks[:-1]]
    assert replies[-1] == '250 2.0.0 OK'
    (_, _, data, _), = live.server.messages
    # Line ends as for DATA, but dots untouched and ".\r\n" no terminator.
    assert data == MESSAGE.replace(b'\r\n', b'\n')


def test_bdat_zero_last_and_byte_by_byte(live_server, raw_client):
    live = live_server(Recorder)
    sock, _ = session(raw_client, live)
    wire = (b'MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 5\r\nhello'
            b'BDAT 0 LAST\r\nNOOP\r\n')
    for i in range(len(wire)):
        sock.sendall(wire[i:i + 1])
    assert read_replies(sock, 5)[2:] == [
        '250 2.0.0 OK 5 octets received', '250 2.0.0 OK', '250 2.0.0 OK']
    assert [m[2] for m in live.server.messages] == [b'hello']


def test_bdat_size_limits(live_server, raw_client):
    live = live_server(Recorder, data_size_limit=100)
    sock, _ = session(raw_client, live)
    # One chunk over the limit: refused, yet read and thrown away (the
    # QUIT inside it must not run).
    big = b'QUIT\r\n' + b'x' * 200
    sock.sendall(b'MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT %d LAST\r\n'
                 % len(big) + big + b'NOOP\r\n')
    assert read_replies(sock, 4)[2:] == [
        '552 5.3.4 Error: Too much mail data', '250 2.0.0 OK']
    # Chunks within the limit that add up to more than it.
    sock.sendall(b'MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 60\r\n' + b'a' * 60
                 + b'BDAT 60 LAST\r\n' + b'b' * 60 + b'RCPT TO:<c@x>\r\n')
    assert read_replies(sock, 5) == [
        '250 2.1.0 OK', '250 2.1.5 OK', '250 2.0.0 OK 60 octets received',
        '552 5.3.4 Error: Too much mail data',
        # the 552 ended the transaction
        '503 5.5.1 Error: need MAIL command']
    assert live.server.messages == []


def test_bdat_out_of_sequence(live_server, raw_client):
    live = live_server(Recorder)
    sock, _ = session(raw_client, live)
    sock.sendall(b'BDAT 6 LAST\r\nNOOP\r\nMAIL FROM:<a@x>\r\nBDAT 4\r\nNOOP'
                 b'RCPT TO:<b@x>\r\nBDAT 3\r\nabcDATA\r\n'
                 b'BDAT 3 LAST\r\ndef')
    assert read_replies(sock, 7) == [
        '503 5.5.1 Error: need MAIL command', '250 2.1.0 OK',
        '503 5.5.1 Error: need RCPT command', '250 2.1.5 OK',
        '250 2.0.0 OK 3 octets received',
        '503 5.5.1 Error: BDAT transaction in progress', '250 2.0.0 OK']
    assert [m[2] for m in live.server.messages] == [b'abcdef']


SMUGGLED = (b'MAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\n'
            b'Subject: smuggled\r\n\r\nforged\r\n.\r\n')


@pytest.mark.parametrize('bdat', [
    b'BDAT 0x20 LAST', b'BDAT -1', b'BDAT', b'BDAT 1e3 LAST', b'BDAT 5 MORE',
    b'BDAT 9999999999999999999 LAST',
], ids=['hex', 'negative', 'no-size', 'exponent', 'bad-keyword', 'too-long'])
@pytest.mark.parametrize('limits', [False, True], ids=['plain', 'limits'])
def test_bdat_unparsable_size_closes(live_server, raw_client, bdat, limits):
    # RFC 3030 section 2: the chunk follows the command and is exactly
    # chunk-size octets.  Without a size its end is unknown: read as
    # commands, its bytes delivered a whole smuggled transaction.
    if limits:
        from smtpd_compat.limits import LimitsServerMixin

        class Server(LimitsServerMixin, Recorder):
            pass
    else:
        Server = Recorder
    live = live_server(Server, loop='smtpd_compat' if limits else 'asyncore')
    sock, _ = session(raw_client, live)
    sock.sendall(b'MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n' + bdat + b'\r\n'
                 + SMUGGLED + b'QUIT\r\n')
    rest = read_to_eof(sock)
    replies = rest.decode().split('\r\n')
    assert replies[:2] == ['250 2.1.0 OK', '250 2.1.5 OK']
    assert replies[2].startswith('421 4.5.0 ')
    assert 'BDAT' in replies[2]
    assert replies[3:] == ['']      # nothing after it: closed
    assert live.server.messages == []


def test_binarymime_passes_bytes_untouched(live_server, raw_client):
    live = live_server(Recorder)
    body = bytes(range(256)) + b'\r\n.\r\n\n\r\x00'
    sock, replies = bdat_session(raw_client, live, [body[:100], body[100:]],
                                 mail=b'MAIL FROM:<a@x> BODY=BINARYMIME')
    assert replies[-1] == '250 2.0.0 OK'
    (_, _, data, kwargs), = live.server.messages
    assert data == body
    assert kwargs['mail_options'] == ['BODY=BINARYMIME']
    # and DATA cannot carry it (RFC 3030 section 3)
    sock.sendall(b'MAIL FROM:<a@x> BODY=BINARYMIME\r\nRCPT TO:<b@x>\r\nDATA\r\n')
    assert read_replies(sock, 3)[-1] == '503 5.5.1 Error: BODY=BINARYMIME requires BDAT'


def test_binarymime_not_accepted_when_disabled(live_server, raw_client):
    live = live_server(Recorder, esmtp_extensions='CHUNKING')
    sock, _ = session(raw_client, live)
    sock.sendall(b'MAIL FROM:<a@x> BODY=BINARYMIME\r\n')
    assert read_replies(sock, 1) == ['501 Error: BODY can only be one of 7BIT, 8BITMIME']


def test_dsn_parameters_reach_process_message(live_server):
    live = live_server(Recorder)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        assert client.has_extn('dsn') or client.ehlo()[0] == 250
        client.sendmail('a@x', ['b@x', 'c@x'], b'Subject: dsn\r\n\r\nhi\r\n',
                        mail_options=['RET=HDRS', 'ENVID=QQ+2Bid'],
                        rcpt_options=['NOTIFY=SUCCESS,FAILURE',
                                      'ORCPT=rfc822;Bob@Example.COM'])
        client.sendmail('a@x', ['d@x'], b'x\r\n', rcpt_options=['NOTIFY=NEVER'])
    (_, rcpttos, _, kwargs), (_, _, _, kwargs2) = live.server.messages
    # Values kept as written where case matters (xtext).
    # (smtplib adds SIZE= first)
    assert kwargs['mail_options'][1:] == ['RET=HDRS', 'ENVID=QQ+2Bid']
    assert kwargs['rcpt_options'] == ['NOTIFY=SUCCESS,FAILURE',
                                      'ORCPT=rfc822;Bob@Example.COM']
    assert kwargs['recipient_options'] == [kwargs['rcpt_options']] * 2
    assert rcpttos == ['b@x', 'c@x']
    assert kwargs2['recipient_options'] == [['NOTIFY=NEVER']]


@pytest.mark.parametrize('command, reply', [
    (b'MAIL FROM:<a@x> RET=ALL', '501 5.5.4 Error: RET must be FULL or HDRS'),
    (b'MAIL FROM:<a@x> ENVID=a+zz', '501 5.5.4 Error: bad xtext escape'),
    (b'MAIL FROM:<a@x> RET=FULL RET=HDRS', '501 5.5.4 Error: duplicate RET parameter'),
    (b'MAIL FROM:<a@x> RET=FULL FOO=1',
     '555 5.5.4 MAIL FROM parameters not recognized or not implemented'),
], ids=['ret', 'envid', 'duplicate', 'unknown-still-555'])
def test_dsn_mail_refusals(live_server, raw_client, command, reply):
    live = live_server(Recorder)
    sock, _ = session(raw_client, live)
    sock.sendall(command + b'\r\n')
    assert read_replies(sock, 1) == [reply]


@pytest.mark.parametrize('param, reply', [
    (b'NOTIFY=NEVER,DELAY', '501 5.5.4 Error: NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY'),
    (b'ORCPT=nosemicolon', '501 5.5.4 Error: ORCPT must be addr-type;address'),
], ids=['notify', 'orcpt'])
def test_dsn_rcpt_refusals(live_server, raw_client, param, reply):
    live = live_server(Recorder)
    sock, _ = session(raw_client, live)
    sock.sendall(b'MAIL FROM:<a@x>\r\nRCPT TO:<b@x> ' + param + b'\r\n')
    assert read_replies(sock, 2)[1] == reply


def test_dsn_disabled_gives_555(live_server, raw_client):
    live = live_server(Recorder, esmtp_extensions=['PIPELINING'])
    sock, _ = session(raw_client, live)
    sock.sendall(b'MAIL FROM:<a@x> RET=HDRS\r\n')
    assert read_replies(sock, 1) == [
        '555 MAIL FROM parameters not recognized or not implemented']


def test_process_message_reply_gets_enhanced_code(live_server, raw_client):
    live = live_server(Recorder)
    live.server.reply = '554 Rejected by policy'
    sock, _ = session(raw_client, live)
    sock.sendall(b'MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 1 LAST\r\nx')
    assert read_replies(sock, 3)[-1] == '554 5.0.0 Rejected by policy'


@pytest.mark.parametrize('kwargs, message', [
    ({'esmtp_extensions': ['PIPELINING', 'FOO']}, 'unknown ESMTP extension'),
    ({'esmtp_extensions': ['BINARYMIME']}, 'BINARYMIME needs CHUNKING'),
    ({'decode_data': True}, 'CHUNKING needs decode_data=False'),
], ids=['unknown', 'binarymime-alone', 'chunking-decode-data'])
def test_bad_configuration_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recorder(('127.0.0.1', 0), None, map={}, **kwargs)


def test_mixin_composes_with_existing_server(live_server, raw_client):
    class Composed(extensions.ExtensionsMixin, RecordingServer):
        pass
    live = live_server(Composed, esmtp_extensions='CHUNKING,ENHANCEDSTATUSCODES')
    _, replies = bdat_session(raw_client, live, [b'abc'])
    assert replies[-1] == '250 2.0.0 OK'
    assert live.server.messages[0][3] == b'abc'


def test_swaks_pipelining(live_server):
    swaks = require_tool('swaks')
    live = live_server(Recorder)
    result = subprocess.run(
        [swaks, '--server', '%s:%d' % live.address, '--pipeline',
         '--from', 'a@example.com', '--to', 'b@example.com,c@example.com',
         '--body', 'piped'], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '250 2.0.0 OK' in result.stdout
    (mailfrom, rcpttos, data, _), = live.server.messages
    assert rcpttos == ['b@example.com', 'c@example.com']
    assert b'piped' in data


def test_cli_unknown_extension(python_path_env):
    result = subprocess.run(
        [sys.executable, '-m', 'smtpd_compat', '-n', '-c', 'DebuggingServer',
         '--esmtp', 'pipelining,turbo'],
        env=python_path_env, capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b'--esmtp: unknown extension(s) TURBO' in result.stderr


def test_other_mixins_keywords_survive(live_server, raw_client):
    # Another capability's channel adds a keyword for process_message;
    # the extensions channel keeps it (cooperative _message_kwargs).
    class TaggingChannel(extensions._smtpd.SMTPChannel):
        def _message_kwargs(self):
            kwargs = super()._message_kwargs()
            kwargs['tag'] = 'from-another-mixin'
            return kwargs

    class Tagged(Recorder):
        channel_class = TaggingChannel
    live = live_server(Tagged)
    _, replies = bdat_session(raw_client, live, [b'abc'])
    (_, _, _, kwargs), = live.server.messages
    assert kwargs['tag'] == 'from-another-mixin'
    assert kwargs['recipient_options'] == [[]]


# ---------------------------------------------------------------------------
# DSN parameters may make command lines longer (RFC 3461 section 4)

def test_longest_orcpt_fits_the_rcpt_line(live_server, raw_client):
    live = live_server(Recorder, esmtp_extensions=('DSN',))
    sock, _ = session(raw_client, live)
    orcpt = 'rfc822;' + 'o' * 481 + '@example.org'     # 500 characters
    assert len(orcpt) == 500
    local = 'r' * 64
    rcpt = ('RCPT TO:<%s@example.org> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=%s'
            % (local, orcpt))
    envid = 'e' * 100
    sock.sendall(b'MAIL FROM:<a@x> RET=HDRS ENVID=' + envid.encode() + b'\r\n'
                 + rcpt.encode() + b'\r\n')
    assert read_replies(sock, 2) == ['250 OK', '250 OK']
    # Still bounded: a line longer than any legal one is refused.
    sock.sendall(rcpt.encode() + b' X=' + b'y' * 600 + b'\r\n')
    assert read_replies(sock, 1) == ['500 Error: line too long']


def test_without_dsn_rcpt_limit_unchanged(live_server, raw_client):
    live = live_server(Recorder, esmtp_extensions=('PIPELINING',))
    sock, _ = session(raw_client, live)
    sock.sendall(b'MAIL FROM:<a@x>\r\nRCPT TO:<b@x> ORCPT=rfc822;'
                 + b'o' * 499 + b'\r\n')
    assert read_replies(sock, 2) == ['250 OK', '500 Error: line too long']


# ---------------------------------------------------------------------------
# An exception in process_message of a capability class

def _exploding(base, delegate=True):
    class Exploding(base):
        def process_message(self, peer, mailfrom, rcpttos, data, **kw):
            if b'boom' in data:
                raise ValueError('boom')
            if not delegate:
                return None
            return super().process_message(peer, mailfrom, rcpttos, data, **kw)
    return Exploding


def _classes(tmp_path):
    from smtpd_compat.delivery import MaildirServer
    from smtpd_compat.lmtp import LMTPServer
    return {
        'esmtp': (_exploding(Recorder), {}, b'EHLO', '250 2.0.0 OK'),
        'maildir': (_exploding(MaildirServer),
                    {'maildir': str(tmp_path / 'md')}, b'EHLO', '250 OK'),
        'lmtp': (_exploding(LMTPServer, delegate=False), {}, b'LHLO',
                 '250 <b@x> OK'),
    }


@pytest.mark.parametrize('kind', ['esmtp', 'maildir', 'lmtp'])
def test_exception_in_process_message_is_451(live_server, raw_client, tmp_path,
                                             caplog, capsys, kind):
    import logging
    caplog.set_level(logging.ERROR, logger='smtpd_compat')
    server_class, kwargs, hello, ok = _classes(tmp_path)[kind]
    live = live_server(server_class, **kwargs)
    sock, _ = raw_client(live.address)
    sock.sendall(hello + b' c\r\n')
    recv_reply(sock)
    for body in (b'boom', b'fine'):
        sock.sendall(b'MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n')
        read_replies(sock, 3)
        sock.sendall(body + b'\r\n.\r\n')
        reply, = read_replies(sock, 1)
        if body == b'boom':
            assert reply.startswith('451 4.3.0 '), reply
        elif ok is not None:
            assert reply == ok
    # The session goes on.
    sock.sendall(b'NOOP\r\n')
    assert read_replies(sock, 1)[0].startswith('250 ')
    records = [r for r in caplog.records if r.exc_info]
    assert len(records) == 1 and records[0].exc_info[0] is ValueError
    assert 'Traceback' not in capsys.readouterr().out


def test_compat_class_exception_still_propagates(live_server, raw_client, capsys):
    # The stdlib's behaviour is kept for the compat classes: asyncore
    # reports the exception and drops the connection.
    class Plain(RecordingServer):
        def process_message(self, *args, **kwargs):
            raise ValueError('boom')
    live = live_server(Plain)
    sock, _ = raw_client(live.address)
    sock.sendall(b'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n')
    read_replies(sock, 4)
    sock.sendall(b'x\r\n.\r\n')
    sock.settimeout(5)
    assert sock.recv(100) == b''
    assert 'ValueError' in capsys.readouterr().out


def test_enhanced_replies_are_remembered_within_bounds(live_server, raw_client):
    # push keeps enhance_reply's results in a table: the same replies as
    # without it, for the same line answering different verbs too, and the
    # table stays bounded however many different lines a client provokes.
    live = live_server(Recorder)
    sock, _ = session(raw_client, live)
    count = extensions._ENHANCED_MAX + 50
    sock.sendall(b''.join(b'X%d\r\nVRFY <u%d@x>\r\n' % (i, i)
                          for i in range(count)) + b'NOOP\r\nRSET\r\n')
    replies = read_replies(sock, 2 * count + 2)
    assert replies[:2] == [
        '500 5.5.2 Error: command "X0" not recognized',
        '252 2.0.0 Cannot VRFY user, but will accept message and attempt '
        'delivery']
    assert replies[-4:] == [
        '500 5.5.2 Error: command "X%d" not recognized' % (count - 1),
        '252 2.0.0 Cannot VRFY user, but will accept message and attempt '
        'delivery',
        '250 2.0.0 OK', '250 2.0.0 OK']
    assert 0 < len(extensions._ENHANCED) <= extensions._ENHANCED_MAX
    assert all(value == enhance_reply(*key)
               for key, value in list(extensions._ENHANCED.items()))

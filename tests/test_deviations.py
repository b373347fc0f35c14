"""One test per documented deviation from CPython 3.11 (docs/deviations.rst,
letters a-i, and the command line).  Each asserts smtpd_compat's behaviour
over real loopback sessions (or a run of the command line); where a CPython
with the stdlib smtpd is at hand, a companion test shows the stdlib's hang,
crash or message on the same input, bounded by a timeout.
"""
import socket
import sys
import warnings

import pytest

import helpers
import smtpd_compat
from conftest import HAVE_STDLIB_SMTPD, RecordingServer, read_to_eof, recv_reply


def _stdlib():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import smtpd
    return smtpd


needs_stdlib = pytest.mark.skipif(
    not HAVE_STDLIB_SMTPD, reason='no stdlib smtpd on Python %d.%d to compare with'
    % sys.version_info[:2])


def _stdlib_recording_server():
    smtpd = _stdlib()

    class StdlibRecordingServer(smtpd.SMTPServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.messages = []

        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            self.messages.append((peer, mailfrom, rcpttos, data, kwargs))

    return StdlibRecordingServer


def _recording_server(module):
    """The recording server class on ``module`` ('ours' or 'stdlib': skips
    where there is no stdlib smtpd)."""
    if module == 'ours':
        return RecordingServer
    if not HAVE_STDLIB_SMTPD:
        pytest.skip('no stdlib smtpd on this Python')
    return _stdlib_recording_server()


def _session(raw_client, live, lines):
    """Send each line, return the list of replies (b'' once closed)."""
    sock, greeting = raw_client(live.address)
    assert greeting.startswith(b'220 ')
    replies = []
    for line in lines:
        sock.sendall(line if isinstance(line, bytes) else line.encode() + b'\r\n')
        replies.append(recv_reply(sock, timeout=2))
    return sock, replies


def _closed_or_silent(sock, timeout=0.5):
    """True when the server has closed the connection or stays silent."""
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b''
    except (socket.timeout, ConnectionError):
        return True


ENVELOPE = ['HELO c', 'MAIL FROM:<a@b>', 'RCPT TO:<c@d>']


# -- (a) empty message -------------------------------------------------------

@pytest.mark.parametrize('decode_data', [False, True], ids=['bytes', 'str'])
@pytest.mark.parametrize('split', [False, True], ids=['one-write', 'byte-by-byte'])
def test_a_empty_message_is_delivered(live_server, raw_client, decode_data, split):
    live = live_server(RecordingServer, decode_data=decode_data)
    sock, replies = _session(raw_client, live, ENVELOPE + ['DATA'])
    assert replies[-1] == b'354 End data with <CR><LF>.<CR><LF>\r\n'
    if split:
        for byte in b'.\r':
            sock.sendall(bytes([byte]))
    sock.sendall(b'\n' if split else b'.\r\n')
    assert recv_reply(sock, timeout=2) == b'250 OK\r\n'
    assert live.server.messages[0][3] == ('' if decode_data else b'')
    sock.sendall(b'NOOP\r\n')
    assert recv_reply(sock) == b'250 OK\r\n'


def test_a_dot_line_later_is_still_content(live_server, raw_client):
    # Only the very first line may end an empty message; ".." stays stuffing.
    live = live_server(RecordingServer)
    sock, replies = _session(raw_client, live, ENVELOPE + ['DATA'])
    sock.sendall(b'..\r\n.\r\n')
    assert recv_reply(sock) == b'250 OK\r\n'
    assert live.server.messages[0][3] == b'.'


@needs_stdlib
def test_a_stdlib_hangs(live_server, raw_client):
    live = live_server(_stdlib_recording_server())
    sock, replies = _session(raw_client, live, ENVELOPE + ['DATA'])
    sock.sendall(b'.\r\n')
    with pytest.raises(socket.timeout):
        recv_reply(sock, timeout=0.5)
    assert live.server.messages == []


# -- (b) client input that made the stdlib raise ----------------------------

CRASHERS = [
    # (id, config, command, reply smtpd_compat sends)
    ('non-utf8', {}, b'NOOP \xff\xfe', b'500 Error: bad syntax\r\n'),
    ('non-utf8-decode', {'decode_data': True}, b'NOOP \xff', b'500 Error: bad syntax\r\n'),
    ('non-utf8-verb', {}, b'\xc3(', b'500 Error: bad syntax\r\n'),
    ('angle-unclosed', {}, b'MAIL FROM:<a@',
     b'501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
    ('bracket', {}, b'MAIL FROM:<a@[',
     b'501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
    ('quote', {}, b'MAIL FROM:"',
     b'501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
    ('rcpt-parse-error', {}, b'RCPT TO:<@',
     b'501 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n'),
    ('size-no-value', {}, b'MAIL FROM:<a@b> SIZE',
     b'501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
    ('size-superscript', {}, 'MAIL FROM:<a@b> SIZE=\u00b2'.encode(),
     b'501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
    ('echo-unknown-verb', {}, 'F\u00dc\u00dc x'.encode(),
     b'500 Error: command "F\\xdc\\xdc" not recognized\r\n'),
    ('echo-vrfy', {}, '\u00fc@'.join(['VRFY ', '']).encode(),
     b'502 Could not VRFY \\xfc@\r\n'),
    ('vrfy-parse-error', {}, b'VRFY ;[:]', b'502 Could not VRFY ;[:]\r\n'),
    ('invalid-header-defect', {}, b'MAIL FROM:\xe2\x80\xa8a@[',
     b'501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n'),
]


@pytest.mark.parametrize('config,command,reply', [c[1:] for c in CRASHERS],
                         ids=[c[0] for c in CRASHERS])
def test_b_bad_input_gets_a_reply(live_server, raw_client, capsys, config, command, reply):
    live = live_server(RecordingServer, **config)
    lines = ['EHLO c']
    if command.startswith(b'RCPT'):
        lines.append('MAIL FROM:<a@b>')
    sock, replies = _session(raw_client, live, lines + [command + b'\r\n'])
    assert replies[-1] == reply
    # The session goes on as after any rejected command.
    sock.sendall(b'RSET\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\nhi\r\n.\r\n')
    got = b''
    while got.count(b'\r\n') < 5:
        got += recv_reply(sock)
    assert got.endswith(b'250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n')
    assert live.server.messages[-1][3] == ('hi' if config else b'hi')
    assert capsys.readouterr().out == ''


@needs_stdlib
@pytest.mark.parametrize('config,command', [c[1:3] for c in CRASHERS],
                         ids=[c[0] for c in CRASHERS])
def test_b_stdlib_drops_the_connection(live_server, raw_client, capsys, config, command):
    live = live_server(_stdlib_recording_server(), **config)
    lines = ['EHLO c']
    if command.startswith(b'RCPT'):
        lines.append('MAIL FROM:<a@b>')
    sock, replies = _session(raw_client, live, lines)
    sock.sendall(command + b'\r\n')
    assert _closed_or_silent(sock)
    assert 'uncaptured python exception' in capsys.readouterr().out


# -- (c) decode_data=True with bytes that are not UTF-8 ---------------------

def test_c_invalid_utf8_content_is_refused(live_server, raw_client):
    live = live_server(RecordingServer, decode_data=True)
    sock, replies = _session(raw_client, live, ENVELOPE + ['DATA'])
    sock.sendall(b'Subject: x\r\n\r\n\xff\xfe\r\n.\r\n')
    assert recv_reply(sock) == b'554 Error: message data is not valid UTF-8\r\n'
    assert live.server.messages == []
    # The transaction is over, the session is not.
    sock.sendall(b'RCPT TO:<c@d>\r\n')
    assert recv_reply(sock) == b'503 Error: need MAIL command\r\n'
    for line in ENVELOPE[1:] + ['DATA']:
        sock.sendall(line.encode() + b'\r\n')
        recv_reply(sock)
    sock.sendall('gr\u00fc\u00dfe\r\n.\r\n'.encode())
    assert recv_reply(sock) == b'250 OK\r\n'
    assert live.server.messages[0][3] == 'gr\u00fc\u00dfe'


@pytest.mark.parametrize('where', ['command', 'data'])
def test_c_character_split_across_reads(live_server, raw_client, where):
    live = live_server(RecordingServer, decode_data=True)
    sock, replies = _session(raw_client, live, ENVELOPE + (['DATA'] if where == 'data' else []))
    text = '\u00fc\u20ac' if where == 'data' else 'RCPT TO:<\u00fc\u20ac@d>'
    raw = text.encode('utf-8') + b'\r\n' + (b'.\r\n' if where == 'data' else b'')
    # Byte by byte, with the peer's ACK in between, so each arrives in its
    # own read: every multi-byte character is split.
    for i in range(len(raw)):
        sock.sendall(raw[i:i + 1])
    assert recv_reply(sock) == b'250 OK\r\n'
    if where == 'data':
        assert live.server.messages[0][3] == text
    else:
        sock.sendall(b'DATA\r\n')
        recv_reply(sock)
        sock.sendall(b'x\r\n.\r\n')
        recv_reply(sock)
        assert live.server.messages[0][2] == ['c@d', '\u00fc\u20ac@d']


@needs_stdlib
def test_c_stdlib_crashes_on_invalid_utf8(live_server, raw_client, capsys):
    live = live_server(_stdlib_recording_server(), decode_data=True)
    sock, replies = _session(raw_client, live, ENVELOPE + ['DATA'])
    sock.sendall(b'\xff\r\n.\r\n')
    assert _closed_or_silent(sock)
    assert 'UnicodeDecodeError' in capsys.readouterr().out


# -- (d) per-connection command_size_limits ---------------------------------

def _mail_line(length):
    line = 'MAIL FROM:<a@b> XPAD=' + 'x' * 600
    return line[:length]


@pytest.mark.parametrize('module', ['ours', 'stdlib'])
def test_d_command_size_limits_per_connection(live_server, raw_client, module):
    server_class = _recording_server(module)
    live = live_server(server_class)
    a, _ = _session(raw_client, live, ['EHLO a'])
    # A second connection used to clear the shared dict: A's MAIL limit fell
    # from 538 back to 512.
    b, _ = _session(raw_client, live, ['HELO b'])
    a.sendall(_mail_line(530).encode() + b'\r\n')
    reply_a = recv_reply(a)
    # And its EHLO raised everyone's: C's MAIL limit grew to 564.
    c, _ = _session(raw_client, live, [])
    d, _ = _session(raw_client, live, [])
    for sock in (c, d):
        sock.sendall(b'EHLO x\r\n')
        recv_reply(sock)
    c.sendall(_mail_line(550).encode() + b'\r\n')
    reply_c = recv_reply(c)
    if module == 'ours':
        assert reply_a == b'555 MAIL FROM parameters not recognized or not implemented\r\n'
        assert reply_c == b'500 Error: line too long\r\n'
    else:
        assert reply_a == b'500 Error: line too long\r\n'
        assert reply_c == b'555 MAIL FROM parameters not recognized or not implemented\r\n'


def test_d_class_attribute_still_exists():
    limits = smtpd_compat.SMTPChannel.command_size_limits
    assert limits['NOSUCHCOMMAND'] == 512


# -- (e) PureProxy relays ----------------------------------------------------

class RefusingChannel(smtpd_compat.SMTPChannel):
    def smtp_RCPT(self, arg):
        if arg and 'bad' in arg:
            self.push('550 5.1.1 No such user here')
            return
        super().smtp_RCPT(arg)


class Upstream(RecordingServer):
    channel_class = RefusingChannel


def _send_through(raw_client, live, rcpts, body=b'Subject: s\r\n\r\nhello\r\n'):
    sock, replies = _session(raw_client, live, ['EHLO c', 'MAIL FROM:<a@b>']
                             + ['RCPT TO:<%s>' % r for r in rcpts] + ['DATA'])
    sock.sendall(body + b'.\r\n')
    return recv_reply(sock, timeout=10)


def test_e_pureproxy_relays(live_server, raw_client):
    upstream = live_server(Upstream)
    proxy = live_server(smtpd_compat.PureProxy, remoteaddr=upstream.address)
    assert _send_through(raw_client, proxy, ['c@d', 'e@f']) == b'250 OK\r\n'
    (peer, mailfrom, rcpttos, data, kwargs), = upstream.server.messages
    assert (mailfrom, rcpttos) == ('a@b', ['c@d', 'e@f'])
    assert data == b'Subject: s\nX-Peer: 127.0.0.1\n\nhello'


def test_e_pureproxy_all_refused(live_server, raw_client):
    upstream = live_server(Upstream)
    proxy = live_server(smtpd_compat.PureProxy, remoteaddr=upstream.address)
    assert _send_through(raw_client, proxy, ['bad1@d', 'bad2@d']) == \
        b'550 5.1.1 No such user here\r\n'
    assert upstream.server.messages == []


def test_e_pureproxy_partly_refused(live_server, raw_client):
    upstream = live_server(Upstream)
    proxy = live_server(smtpd_compat.PureProxy, remoteaddr=upstream.address)
    # Relayed to the accepted recipient; the client hears 250 (documented).
    assert _send_through(raw_client, proxy, ['bad@d', 'ok@d']) == b'250 OK\r\n'
    assert upstream.server.messages[0][2] == ['ok@d']


def test_e_pureproxy_upstream_down(live_server, raw_client):
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    dead = probe.getsockname()
    probe.close()
    proxy = live_server(smtpd_compat.PureProxy, remoteaddr=dead)
    assert _send_through(raw_client, proxy, ['c@d']) == \
        b'451 Error: could not relay the message\r\n'


def test_e_pureproxy_data_refused_upstream(live_server, raw_client):
    upstream = live_server(Upstream)
    upstream.server.reply = '554 5.7.1 Rejected by policy'
    proxy = live_server(smtpd_compat.PureProxy, remoteaddr=upstream.address)
    assert _send_through(raw_client, proxy, ['c@d']) == b'554 5.7.1 Rejected by policy\r\n'


@needs_stdlib
def test_e_stdlib_pureproxy_raises_typeerror():
    smtpd = _stdlib()
    proxy = smtpd.PureProxy(('127.0.0.1', 0), ('127.0.0.1', 9), map={})
    try:
        with pytest.raises(TypeError):
            proxy.process_message(('127.0.0.1', 1), 'a@b', ['c@d'], b'x',
                                  mail_options=[], rcpt_options=[])
    finally:
        proxy.close()


# -- (f) one getfqdn() per server ---------------------------------------------

class CountingSocketModule:
    """Stands in for the ``socket`` global: counts getfqdn() calls."""

    def __init__(self):
        self.calls = 0

    def getfqdn(self, name=''):
        self.calls += 1
        return 'mx.example.test'

    def __getattr__(self, name):
        return getattr(socket, name)


@pytest.mark.parametrize('module', ['ours', 'stdlib'])
def test_f_getfqdn_once_per_server(live_server, raw_client, monkeypatch, module):
    fake = CountingSocketModule()
    server_class = _recording_server(module)
    monkeypatch.setattr(_stdlib() if module == 'stdlib' else smtpd_compat,
                        'socket', fake)
    live = live_server(server_class)
    for _ in range(3):
        sock, greeting = raw_client(live.address)
        assert greeting.startswith(b'220 mx.example.test ')
        sock.sendall(b'HELO x\r\n')
        assert recv_reply(sock) == b'250 mx.example.test\r\n'
    assert fake.calls == (1 if module == 'ours' else 3)


# -- (g) 552 ends the transaction ---------------------------------------------

@pytest.mark.parametrize('module', ['ours', 'stdlib'])
def test_g_552_ends_the_transaction(live_server, raw_client, module):
    server_class = _recording_server(module)
    live = live_server(server_class, data_size_limit=50)
    sock, replies = _session(raw_client, live, ENVELOPE + ['DATA'])
    sock.sendall(b'x' * 100 + b'\r\n.\r\n')
    assert recv_reply(sock) == b'552 Error: Too much mail data\r\n'
    sock.sendall(b'RSET\r\n')
    if module == 'stdlib':
        # Swallowed as content; the next "." delivers it to the old envelope.
        with pytest.raises(socket.timeout):
            recv_reply(sock, timeout=0.3)
        sock.sendall(b'.\r\n')
        assert recv_reply(sock) == b'250 OK\r\n'
        assert live.server.messages[0][1:4] == ('a@b', ['c@d'], b'RSET')
        return
    assert recv_reply(sock) == b'250 OK\r\n'
    sock.sendall(b'RCPT TO:<c@d>\r\n')
    assert recv_reply(sock) == b'503 Error: need MAIL command\r\n'
    sock.sendall(b'.\r\n')
    assert recv_reply(sock) == b'500 Error: command "." not recognized\r\n'
    assert live.server.messages == []


def test_g_552_without_rset(live_server, raw_client):
    live = live_server(RecordingServer, data_size_limit=50)
    sock, replies = _session(raw_client, live, ENVELOPE + ['DATA'])
    sock.sendall(b'y' * 60 + b'\r\n.\r\nDATA\r\n')
    got = b''
    while got.count(b'\r\n') < 2:
        chunk = recv_reply(sock)
        assert chunk
        got += chunk
    assert got == b'552 Error: Too much mail data\r\n503 Error: need RCPT command\r\n'
    assert live.server.messages == []


# -- (h) running out of descriptors does not kill the listener --------------

# A server started with RLIMIT_NOFILE lowered to FD_LIMIT: LOOP is
# 'asyncore' (asyncore.loop, what legacy code runs) or 'smtpd_compat'
# (smtpd_compat.loop.loop); MODULE is smtpd_compat or the stdlib's smtpd.
_FD_SERVER = r'''
import resource, sys, warnings
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    if sys.argv[3] == 'stdlib':
        import asyncore, smtpd
    else:
        import smtpd_compat as smtpd
        asyncore = smtpd.asyncore
server = smtpd.DebuggingServer(('127.0.0.1', int(sys.argv[2])), None)
print('listening', flush=True)
if sys.argv[4] == 'asyncore':
    asyncore.loop(timeout=1)
else:
    from smtpd_compat import loop
    loop.loop(timeout=1)
'''

FD_LIMIT = 40


def _fd_flood(port, count):
    """Open ``count`` connections (the server runs out of descriptors on
    the way), hold them a moment, then close them all."""
    import time
    socks = []
    try:
        for _ in range(count):
            try:
                socks.append(socket.create_connection(('127.0.0.1', port),
                                                      timeout=5))
            except OSError:
                break
        time.sleep(1.0)
    finally:
        for sock in socks:
            sock.close()
    return len(socks)


def _greeted(port, timeout):
    """True when a new client gets a greeting and a reply within timeout."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=5) as sock:
                if not recv_reply(sock, timeout=timeout).startswith(b'220 '):
                    return False
                sock.sendall(b'NOOP\r\n')
                return recv_reply(sock, timeout=5) == b'250 OK\r\n'
        except OSError:
            time.sleep(0.2)
    return False


def _start_fd_server(python_path_env, module, loop_name):
    import subprocess
    # (DebuggingServer sets SO_REUSEADDR: it can listen on a reserved port.)
    with helpers.reserved_port() as port:
        proc = subprocess.Popen(
            [sys.executable, '-c', _FD_SERVER, str(FD_LIMIT), str(port), module,
             loop_name],
            env=python_path_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        helpers.wait_for_port(proc, port)
    return proc, port


@pytest.mark.parametrize('loop_name', ['asyncore', 'smtpd_compat'])
def test_h_listener_survives_running_out_of_descriptors(python_path_env, loop_name):
    proc, port = _start_fd_server(python_path_env, 'ours', loop_name)
    try:
        assert _fd_flood(port, 2 * FD_LIMIT) > FD_LIMIT
        assert _greeted(port, 20), 'no greeting after the flood'
        assert proc.poll() is None
    finally:
        proc.kill()
        out, err = proc.communicate()
    # Logged (once, rate-limited), and no traceback from a closed listener.
    assert 'accept() failed' in err and 'Too many open files' in err
    assert 'Traceback' not in err and 'uncaptured' not in err + out


@needs_stdlib
def test_h_stdlib_listener_dies(python_path_env):
    proc, port = _start_fd_server(python_path_env, 'stdlib', 'asyncore')
    try:
        _fd_flood(port, 2 * FD_LIMIT)
        assert not _greeted(port, 3)
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert 'uncaptured python exception' in out + err


# -- (e) PureProxy: an address smtplib cannot send ----------------------------

def test_e_pureproxy_non_ascii_address(live_server, raw_client, capsys):
    # smtplib sends commands in ASCII and raised UnicodeEncodeError from
    # inside the channel; now a 553 reply, and the session goes on.
    upstream = live_server(Upstream)
    proxy = live_server(smtpd_compat.PureProxy, remoteaddr=upstream.address)
    sock, replies = _session(raw_client, proxy, [
        'EHLO c', 'MAIL FROM:<a@b>', 'RCPT TO:<j\u00fcrgen@example.org>', 'DATA'])
    assert replies[1:] == [b'250 OK\r\n', b'250 OK\r\n',
                           b'354 End data with <CR><LF>.<CR><LF>\r\n']
    sock.sendall(b'Subject: s\r\n\r\nhello\r\n.\r\n')
    assert recv_reply(sock, timeout=10) == \
        b'553 Error: cannot relay a non-ASCII address\r\n'
    sock.sendall(b'NOOP\r\n')
    assert recv_reply(sock) == b'250 OK\r\n'
    assert upstream.server.messages == []
    assert 'Traceback' not in capsys.readouterr().out


# -- (b)/(c) answered where the exception escapes, in composed channels -----
# The core raises the stdlib's exception and answers it in _handle_input
# (tests/test_subclass_faithful.py has the subclasses that catch it); the
# answer goes through the channel's push chain like any reply.

def test_b_escaped_reply_counts_as_an_error_for_limits(live_server, raw_client):
    from smtpd_compat.limits import LimitsServerMixin

    class Limited(LimitsServerMixin, RecordingServer):
        pass

    live = live_server(Limited, max_errors=2, loop='smtpd_compat')
    sock, replies = _session(raw_client, live, ['HELO c', 'F\u00dc x', 'MAIL FROM:<a@'])
    assert replies[1] == b'500 Error: command "F\\xdc" not recognized\r\n'
    # The second error (a parser crash in 3.11) reaches the limit.
    rest = replies[2] + read_to_eof(sock)
    assert rest.startswith(b'501 Syntax: MAIL FROM: <address>\r\n421 4.7.0 ')


def test_b_lmtp_escapes_every_recipients_reply(live_server, raw_client):
    from smtpd_compat.lmtp import LMTPServer

    class Server(LMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            return {r: '550 %s r\u00e9fus\u00e9' % r for r in rcpttos}

    live = live_server(Server)
    sock, replies = _session(raw_client, live, [
        'LHLO c', 'MAIL FROM:<a@b>', 'RCPT TO:<c@d>', 'RCPT TO:<e@f>', 'DATA'])
    sock.sendall(b'x\r\n.\r\nNOOP\r\n')
    got = b''
    while got.count(b'\r\n') < 3:
        got += recv_reply(sock)
    assert got == (b'550 c@d r\\xe9fus\\xe9\r\n550 e@f r\\xe9fus\\xe9\r\n'
                   b'250 OK\r\n')


@pytest.mark.parametrize('line', ['MAIL FROM:<a@', 'F\u00dc x'], ids=['parser', 'echo'])
def test_b_answered_line_moves_the_idle_deadline(live_server, raw_client, line):
    # The answer is given where the exception leaves the user's channel
    # class, so the limits' work after each line (a new idle deadline)
    # still runs for a line that crashed 3.11.
    from smtpd_compat.limits import LimitsServerMixin

    class Limited(LimitsServerMixin, RecordingServer):
        pass

    live = live_server(Limited, idle_timeout=300, loop='smtpd_compat',
                       clock=True)
    sock, _ = _session(raw_client, live, ['HELO c'])
    channel, = live.channels()
    # The server is done with HELO (its deadline is set after the reply
    # went out) once the deadline is armed from the time of HELO.
    helo_at = live.clock.now
    live.wait_until(lambda: channel.deadline == helo_at + 300)
    # Later on the manual clock, the only thing that can move the deadline
    # to sent_at + idle_timeout is handling the line.
    live.advance(100)
    sent_at = live.clock.now
    sock.sendall(line.encode() + b'\r\n')
    assert recv_reply(sock).startswith(b'50')
    live.wait_until(lambda: channel.deadline == sent_at + 300, timeout=10)


# -- the command line --------------------------------------------------------

def _run(argv, env=None, cwd=None):
    import subprocess
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _stdlib_cli(*args):
    """``python -m smtpd ARGS`` of a CPython that has it (this one on
    <= 3.11, else python3.11 from PATH), run outside the checkout."""
    import os
    import shutil
    python = sys.executable if HAVE_STDLIB_SMTPD else shutil.which('python3.11')
    if python is None:
        pytest.skip('no Python <= 3.11 to run the stdlib command line')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return _run([python, '-W', 'ignore', '-m', 'smtpd'] + list(args), env=env,
                cwd='/')


def _our_cli(python_path_env, *args):
    return _run([sys.executable, '-m', 'smtpd_compat'] + list(args),
                env=python_path_env)


def test_cli_options_may_follow_the_address(cli):
    import signal
    import smtplib

    with helpers.reserved_port() as port:
        proc = cli.popen('127.0.0.1:%d' % port, '-n', '-c', 'DebuggingServer',
                         '--log-level', 'WARNING')
        helpers.wait_for_port(proc, port)
    try:
        with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
            client.sendmail('a@example.org', ['b@example.org'], 'Subject: after\r\n\r\nx\r\n')
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert 'Subject: after' in out     # -c DebuggingServer was taken
    assert proc.returncode == 0


def test_cli_stdlib_refused_options_after_the_address():
    out = _stdlib_cli('127.0.0.1:0', '-n', '-c', 'DebuggingServer')
    assert out.returncode == 1
    assert out.stderr.rstrip().splitlines()[-1] == \
        'Invalid arguments: 127.0.0.1:0, -n, -c, DebuggingServer'


def test_cli_usage_error_is_the_reason_and_a_pointer(python_path_env):
    ours = _our_cli(python_path_env, '-n', 'nocolon')
    assert (ours.returncode, ours.stdout) == (1, '')
    assert ours.stderr == ('python -m smtpd_compat: Bad local spec: nocolon\n'
                           "Try 'python -m smtpd_compat -h' for help.\n")
    # The stdlib: the whole help text, the reason last; the same status.
    theirs = _stdlib_cli('-n', 'nocolon')
    assert theirs.returncode == 1
    assert len(theirs.stderr.splitlines()) > 30
    assert theirs.stderr.rstrip().splitlines()[-1] == 'Bad local spec: nocolon'


def test_cli_address_in_use_is_one_line(python_path_env):
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        ours = _our_cli(python_path_env, '-n', '127.0.0.1:%d' % port)
        theirs = _stdlib_cli('-n', '127.0.0.1:%d' % port)
    assert (ours.returncode, ours.stdout) == (1, '')
    assert ours.stderr == ('python -m smtpd_compat: cannot listen on 127.0.0.1 '
                           'port %d: Address already in use\n' % port)
    # The stdlib: a traceback that does not name the port.
    assert theirs.returncode == 1
    assert 'Traceback' in theirs.stderr
    last = theirs.stderr.rstrip().splitlines()[-1]
    assert last.startswith('OSError: [Errno ') and 'Address already in use' in last

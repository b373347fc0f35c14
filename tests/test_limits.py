"""Timeouts, connection/recipient/error/line limits and the session log,
on live loopback servers driven by smtpd_compat.loop (whose timers fire
the deadlines).  The timeout tests run on a manual clock
(helpers.ManualClock): time passes when the test says so, not while the
machine is busy."""
import logging
import selectors
import smtplib
import socket
import time

import pytest

import smtpd_compat
from smtpd_compat import loop as sloop
from smtpd_compat.__main__ import CLI
from smtpd_compat.cli_options import GROUPS
from smtpd_compat.cli_options import configure_limits as cli_configure
from smtpd_compat.extensions import ExtensionsMixin
from smtpd_compat.limits import (
    LimitedServer, LimitsServerMixin, PRODUCTION_DEFAULTS)
from smtpd_compat.logging_ import SessionLogServerMixin
from smtpd_compat.session import SessionStateMixin

from conftest import RecordingServer, read_to_eof, recv_reply


class Limited(LimitsServerMixin, RecordingServer):
    pass


@pytest.fixture
def serve(live_server):
    """Factory: a live server (Limited by default) served by
    smtpd_compat.loop, whose timers drive the timeouts (``clock=True``: on
    a manual clock)."""
    def start(server_class=Limited, **kwargs):
        return live_server(server_class, loop='smtpd_compat', **kwargs)

    return start


@pytest.fixture
def connect():
    socks = []

    def open_(address, source='127.0.0.1', greet=True):
        sock = socket.socket()
        socks.append(sock)
        # Each write goes out at once (see helpers.Served.settle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(address)
        return sock, (recv_reply(sock) if greet else None)

    yield open_
    for sock in socks:
        sock.close()


def command(sock, line):
    sock.sendall(line + b'\r\n')
    return recv_reply(sock)


# -- timeouts ----------------------------------------------------------------

def test_idle_timeout_sends_421_and_closes(serve, connect):
    runner = serve(idle_timeout=0.3, clock=True)
    sock, greeting = connect(runner.address)
    assert greeting.startswith(b'220 ')
    runner.advance(0.3)
    rest = read_to_eof(sock)
    assert rest.startswith(b'421 4.4.2 ')
    assert b'timeout exceeded' in rest
    assert runner.server.connection_count == 0


def test_idle_timeout_is_reset_by_commands_not_by_bytes(serve, connect):
    runner = serve(idle_timeout=1.5, clock=True)
    sock, _ = connect(runner.address)
    # Complete commands keep the session alive past the timeout (2.1 s)...
    for _ in range(6):
        runner.advance(0.35)
        assert command(sock, b'NOOP').startswith(b'250 ')
    # ...a line dripped byte by byte does not.
    started = runner.clock.now
    reply = b''
    sock.settimeout(0)
    for _ in range(50):          # at most 10 s on the server's clock
        try:
            sock.sendall(b'N')
        except OSError:
            break
        # The server has read the byte before its clock moves on.
        runner.settle(sock)
        runner.advance(0.2)
        if not runner.channels():
            break
    sock.settimeout(10)
    reply = read_to_eof(sock)
    assert reply.startswith(b'421 4.4.2 ')
    assert runner.clock.now - started < 5


def test_data_timeout_uses_minimum_rate(serve, connect):
    runner = serve(data_timeout=1.5, min_data_rate=2000, clock=True)
    fast, _ = connect(runner.address)
    slow, _ = connect(runner.address)
    for sock in (fast, slow):
        for line in (b'HELO c', b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>'):
            assert command(sock, line).startswith(b'250')
        assert command(sock, b'DATA').startswith(b'354')
    # The fast client sends 1000 bytes per 0.1 s (10 kB/s, well above the
    # minimum) for longer than data_timeout; the slow one 10 bytes (100
    # B/s).  A fixed total timeout would cut both; a per-read timeout
    # neither.
    slow.settimeout(0)
    slow_reply = b''
    for _ in range(25):          # 2.5 s, longer than data_timeout
        fast.sendall(b'x' * 998 + b'\r\n')
        try:
            slow.sendall(b'y' * 8 + b'\r\n')
        except OSError:
            pass
        try:
            slow_reply += slow.recv(100)
        except (BlockingIOError, socket.timeout):
            pass
        runner.settle(fast, slow)
        runner.advance(0.1)
    slow.settimeout(10)
    assert command(fast, b'.').startswith(b'250 ')
    assert len(runner.server.messages) == 1
    # 25 lines of 998 bytes; the last line end belongs to the terminator.
    assert len(runner.server.messages[0][3]) == 25 * 999 - 1
    slow_reply += read_to_eof(slow)
    assert slow_reply.startswith(b'421 4.4.2 ')


def test_data_timeout_without_rate_is_reset_by_progress(serve, connect):
    runner = serve(data_timeout=1.5, min_data_rate=None, idle_timeout=1.5,
                   clock=True)
    sock, _ = connect(runner.address)
    for line in (b'HELO c', b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>'):
        command(sock, line)
    assert command(sock, b'DATA').startswith(b'354')
    for _ in range(12):          # 2.4 s in all, 0.2 s apart
        sock.sendall(b'z\r\n')
        runner.settle(sock)
        runner.advance(0.2)
    assert command(sock, b'.').startswith(b'250 ')


def test_set_deadline_hook_for_other_phases(serve, connect):
    runner = serve(idle_timeout=30, clock=True)
    sock, _ = connect(runner.address)
    channel, = runner.channels()
    # What a TLS handshake would do: a short deadline of its own.
    runner.call(channel.set_deadline, 0.2)
    runner.advance(0.2)
    assert read_to_eof(sock).startswith(b'421 4.4.2 ')


# -- connection limits -------------------------------------------------------

def test_max_connections(serve, connect):
    runner = serve(max_connections=2, max_connections_per_ip=None)
    a, ga = connect(runner.address)
    b, gb = connect(runner.address)
    c, gc = connect(runner.address)
    assert ga.startswith(b'220 ') and gb.startswith(b'220 ')
    assert gc.startswith(b'421 4.7.0 ') and b'too many connections' in gc
    assert read_to_eof(c) == b''
    command(a, b'QUIT')
    read_to_eof(a)
    runner.wait_until(lambda: runner.server.connection_count <= 1)
    d, gd = connect(runner.address)
    assert gd.startswith(b'220 ')


def test_max_connections_per_ip(serve, connect):
    runner = serve(max_connections_per_ip=2)
    connect(runner.address)
    connect(runner.address)
    third, greeting = connect(runner.address)
    assert greeting.startswith(b'421 4.7.0 ')
    assert b'from your address' in greeting
    # Another address is not affected (127.0.0.2 is loopback too).
    other, greeting = connect(runner.address, source='127.0.0.2')
    assert greeting.startswith(b'220 ')


def test_flood_beyond_limit_does_not_stall_session(serve, connect):
    runner = serve(max_connections=3, max_connections_per_ip=None)
    client = smtplib.SMTP(*runner.address, timeout=10)
    client.ehlo()
    flood = []
    try:
        for _ in range(300):
            s = socket.create_connection(runner.address, timeout=5)
            flood.append(s)
        refused = 0
        for n, s in enumerate(flood):
            if n < 2:
                assert recv_reply(s).startswith(b'220 ')
                continue
            data = read_to_eof(s)
            if n >= 2:
                assert data.startswith(b'421 4.7.0 '), (n, data)
                refused += 1
        assert refused == 298
        # The session that was already going completes normally.
        client.sendmail('a@b', ['c@d'], b'Subject: x\r\n\r\nbody\r\n')
        client.quit()
    finally:
        for s in flood:
            s.close()
    assert len(runner.server.messages) == 1


def test_slowloris_2000_dripping_sockets(serve, connect):
    """2,000 attacker sockets drip bytes; a normal client still delivers,
    and the idle timeout then closes every attacker socket."""
    n = 2000
    if sloop.raise_fd_limit(2 * n + 200) < 2 * n + 200:
        pytest.skip('cannot raise the open file limit for 4,000 sockets')
    # On a manual clock: however long accepting 2,000 connections and a
    # delivery take on a loaded machine, no idle timeout passes meanwhile.
    runner = serve(idle_timeout=6.0, max_connections=None,
                   max_connections_per_ip=None, clock=True)
    attackers = []
    sel = selectors.DefaultSelector()
    received = {}
    try:
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            s.connect_ex(runner.address)
            attackers.append(s)
        for s in attackers:
            sel.register(s, selectors.EVENT_READ)
            received[s] = b''
        # Drip: one byte of a never-ending EHLO line per socket per round.
        for drip in b'EHL':
            for s in attackers:
                try:
                    s.send(bytes([drip]))
                except OSError:
                    pass
            runner.settle(*attackers)
        # Meanwhile, a normal client delivers.
        client = smtplib.SMTP(*runner.address, timeout=10)
        client.sendmail('a@b', ['c@d'], b'Subject: hi\r\n\r\nbody\r\n')
        client.quit()
        assert len(runner.server.messages) == 1
        # It got through while every attacker was still connected: none has
        # been disconnected or sent the timeout reply yet.
        for key, _ in sel.select(0):
            chunk = key.fileobj.recv(4096)
            assert chunk, 'an attacker was disconnected before the client finished'
            received[key.fileobj] += chunk
        assert not any(b'421' in data for data in received.values()), [d for d in received.values() if b'421' in d][:3]
        # Then, once the idle timeout has passed, every attacker gets the
        # timeout reply and EOF.
        # (Every attacker is a session by then, its deadline armed.)
        runner.wait_until(lambda: runner.server.connection_count >= n)
        runner.advance(6.0)
        closed = 0
        deadline = time.monotonic() + 30
        while closed < n and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                s = key.fileobj
                try:
                    chunk = s.recv(4096)
                except OSError:
                    chunk = b''
                received[s] += chunk
                if not chunk:
                    sel.unregister(s)
                    closed += 1
        assert closed == n
        assert all(b'421 4.4.2 ' in data for data in received.values())
    finally:
        sel.close()
        for s in attackers:
            s.close()


# -- recipients, errors, line length -----------------------------------------

def test_max_recipients(serve, connect):
    runner = serve(max_recipients=2)
    sock, _ = connect(runner.address)
    command(sock, b'EHLO c')
    command(sock, b'MAIL FROM:<a@b>')
    assert command(sock, b'RCPT TO:<r1@x>').startswith(b'250 ')
    assert command(sock, b'RCPT TO:<r2@x>').startswith(b'250 ')
    assert command(sock, b'RCPT TO:<r3@x>') == (
        b'452 4.5.3 Error: too many recipients\r\n')
    assert command(sock, b'DATA').startswith(b'354')
    assert command(sock, b'x\r\n.').startswith(b'250 ')
    assert runner.server.messages[0][2] == ['r1@x', 'r2@x']
    # The limit is per message.
    command(sock, b'MAIL FROM:<a@b>')
    assert command(sock, b'RCPT TO:<r4@x>').startswith(b'250 ')


def test_max_errors_hangs_up_and_ignores_pipelined_input(serve, connect):
    runner = serve(max_errors=3)
    sock, _ = connect(runner.address)
    assert command(sock, b'BOGUS1').startswith(b'500 ')
    assert command(sock, b'BOGUS2').startswith(b'500 ')
    sock.sendall(b'BOGUS3\r\nNOOP\r\nNOOP\r\n')
    rest = read_to_eof(sock)
    assert rest.startswith(b'500 ')
    assert rest.split(b'\r\n')[1].startswith(b'421 4.7.0 ')
    assert b'too many errors' in rest
    assert b'250' not in rest


def test_errors_reset_after_delivered_message(serve, connect):
    runner = serve(max_errors=2)
    sock, _ = connect(runner.address)
    command(sock, b'HELO c')
    assert command(sock, b'BOGUS').startswith(b'500 ')
    for line in (b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>', b'DATA'):
        command(sock, line)
    assert command(sock, b'x\r\n.').startswith(b'250 ')
    assert command(sock, b'BOGUS').startswith(b'500 ')
    assert command(sock, b'NOOP').startswith(b'250 ')


def test_max_line_length(serve, connect):
    runner = serve(max_line_length=64)
    sock, _ = connect(runner.address)
    assert command(sock, b'NOOP ' + b'x' * 100) == (
        b'500 Error: line too long\r\n')
    assert command(sock, b'HELO ' + b'h' * 50).startswith(b'250 ')


# -- configuration, stdlib defaults, log, CLI --------------------------------

@pytest.mark.parametrize('kwargs', [
    {'max_errors': 0}, {'max_connections': -1}, {'idle_timeout': 0},
    {'max_recipients': 1.5}, {'min_data_rate': 'fast'},
    {'max_line_length': True},
], ids=lambda kw: next(iter(kw)))
def test_bad_configuration_raises(kwargs):
    with pytest.raises((TypeError, ValueError)):
        Limited(('127.0.0.1', 0), ('127.0.0.1', 9), map={}, **kwargs)


def test_stdlib_server_has_no_limits(live_server, raw_client):
    server = live_server(RecordingServer)
    sock, _ = raw_client(server.address)
    for _ in range(25):
        assert command(sock, b'BOGUS').startswith(b'500 ')
    assert command(sock, b'NOOP').startswith(b'250 ')
    assert not hasattr(server.server, 'max_errors')


def test_production_defaults_on_new_class():
    server = LimitedServer(('127.0.0.1', 0), ('127.0.0.1', 9), map={})
    try:
        for name, value in PRODUCTION_DEFAULTS.items():
            assert getattr(server, name) == value
        assert server.idle_timeout >= 300     # RFC 5321 §4.5.3.2.7
    finally:
        server.close()


def test_session_log_lines(serve, caplog):
    class Logged(SessionLogServerMixin, Limited):
        pass
    caplog.set_level(logging.INFO, logger='smtpd_compat')
    runner = serve(Logged)
    client = smtplib.SMTP(*runner.address, timeout=10)
    client.sendmail('a@b', ['c@d', 'e@f'], b'Subject: x\r\n\r\n12345\r\n')
    client.quit()

    def logged():
        return [r.getMessage() for r in caplog.records
                if r.name.startswith('smtpd_compat')]
    # (The session ends on the server after the 221 has reached the client.)
    runner.wait_until(lambda: any(m.startswith('disconnect') for m in logged()))
    messages = logged()
    assert any(m.startswith('connect from 127.0.0.1:') for m in messages)
    assert any('size=17 recipients=2' in m and "reply='250 OK'" in m
               for m in messages), messages
    assert any(m.startswith('disconnect from 127.0.0.1:') and
               'messages=1' in m for m in messages)


def make_cli(argv):
    longopts = [name for group in GROUPS for name, _, _ in group.options]
    options = smtpd_compat._parseargs(argv, longopts)
    return CLI(options, smtpd_compat.DebuggingServer)


def test_cli_stdlib_invocation_adds_nothing():
    cli = make_cli(['-n', '127.0.0.1:0'])
    cli_configure(cli)
    assert cli.mixins == [] and cli.server_kwargs == {}


def test_cli_flags_turn_on_defaults_and_overrides():
    cli = make_cli(['-n', '--max-recipients', '5', '--idle-timeout=7',
                    '127.0.0.1:0'])
    try:
        cli_configure(cli)
        assert LimitsServerMixin in cli.mixins
        assert SessionLogServerMixin in cli.mixins
        # (max_connections is only added where the descriptor limit is
        # too low for the default.)
        kwargs = dict(cli.server_kwargs)
        kwargs.pop('max_connections', None)
        assert kwargs == {'max_recipients': 5, 'idle_timeout': 7.0}
    finally:
        logging.getLogger('smtpd_compat').handlers.clear()
        logging.getLogger('smtpd_compat').setLevel(logging.NOTSET)


# -- junk commands ---------------------------------------------------------

def test_junk_commands_limit(serve, connect):
    runner = serve(max_junk_commands=5, max_errors=None)
    sock, _ = connect(runner.address)
    for line in (b'NOOP', b'RSET', b'VRFY <a@b>', b'HELP', b'noop'):
        assert command(sock, line)[:1] in (b'2', b'5')
    # Other commands are not junk.
    assert command(sock, b'HELO c').startswith(b'250 ')
    # The sixth junk command: 421 instead of an answer, then closed, and
    # pipelined input after it is ignored.
    sock.sendall(b'NOOP\r\nNOOP\r\n')
    rest = read_to_eof(sock)
    assert rest.startswith(b'421 4.7.0 ') and b'too many junk commands' in rest
    assert rest.count(b'\r\n') == 1


def test_junk_count_starts_again_after_a_message(serve, connect):
    runner = serve(max_junk_commands=3)
    sock, _ = connect(runner.address)
    assert command(sock, b'HELO c').startswith(b'250')
    for _ in range(3):
        assert command(sock, b'NOOP').startswith(b'250')
    for line in (b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>', b'DATA'):
        assert command(sock, line)[:1] in (b'2', b'3')
    assert command(sock, b'x\r\n.').startswith(b'250')
    for _ in range(3):
        assert command(sock, b'NOOP').startswith(b'250')
    assert command(sock, b'NOOP').startswith(b'421 4.7.0 ')


class LimitedExtended(LimitsServerMixin, ExtensionsMixin, RecordingServer):
    pass


def test_layers_work_out_a_command_verb_once(serve, connect, monkeypatch):
    # Limits (junk commands) and extensions (the enhanced status code of
    # the reply) both need the command's verb: worked out once a line, and
    # not kept once the read is handled.
    seen = []
    original = SessionStateMixin._command_verb

    def spy(self):
        known = self._verb_of
        verb = original(self)
        seen.append((verb, self._verb_of is not known))     # worked out
        channels.add(self)
        return verb

    channels = set()
    monkeypatch.setattr(SessionStateMixin, '_command_verb', spy)
    runner = serve(LimitedExtended, max_junk_commands=2,
                   esmtp_extensions=['ENHANCEDSTATUSCODES'])
    sock, _ = connect(runner.address)
    assert command(sock, b'EHLO c').startswith(b'250')
    # (The core takes a line that starts with a blank for an unknown
    # command; to the layers its verb is RSET: junk.)
    for line, verb, answer in (
            (b'NOOP', 'NOOP', b'250 2.0.0 OK'),
            (b'mail FROM:<a@b>', 'MAIL', b'250 2.1.0 OK'),
            (b'  rset', 'RSET', b'500 5.5.2 Error: command "" not')):
        del seen[:]
        assert command(sock, line).startswith(answer)
        assert seen == [(verb, True), (verb, False)]
        assert [c._verb_of for c in channels] == [None]
    # The third junk command (NOOP, RSET before it) is one too many.
    assert command(sock, b'NOOP').startswith(b'421 4.7.0 ')


def test_junk_limit_default_and_off(serve, connect):
    assert PRODUCTION_DEFAULTS['max_junk_commands'] == 100   # Postfix's
    runner = serve(max_junk_commands=None)
    sock, _ = connect(runner.address)
    sock.sendall(b'NOOP\r\n' * 150)
    replies = b''
    while replies.count(b'\r\n') < 150:
        chunk = sock.recv(65536)
        assert chunk
        replies += chunk
    assert replies == b'250 OK\r\n' * 150


# -- message size ---------------------------------------------------------

@pytest.mark.parametrize('given, expected', [
    ({}, 10240000), ({'data_size_limit': None}, 10240000),
    ({'data_size_limit': 5000}, 5000), ({'data_size_limit': 0}, 0),
], ids=['absent', 'none', 'given', 'off'])
def test_default_message_size(given, expected):
    server = Limited(('127.0.0.1', 0), ('127.0.0.1', 9), map={}, **given)
    try:
        assert server.data_size_limit == expected
    finally:
        server.close()


def test_default_message_size_positional_and_advertised(serve, connect):
    server = Limited(('127.0.0.1', 0), ('127.0.0.1', 9), None, map={})
    server.close()
    assert server.data_size_limit == 10240000
    runner = serve()
    sock, _ = connect(runner.address)
    assert b'250-SIZE 10240000\r\n' in command(sock, b'EHLO c')
    assert command(sock, b'MAIL FROM:<a@b> SIZE=10240001').startswith(b'552 ')


def test_cli_junk_option():
    cli = make_cli(['-n', '--max-junk-commands', '7', '127.0.0.1:0'])
    try:
        cli_configure(cli)
        assert cli.server_kwargs['max_junk_commands'] == 7
    finally:
        logging.getLogger('smtpd_compat').handlers.clear()
        logging.getLogger('smtpd_compat').setLevel(logging.NOTSET)


@pytest.mark.parametrize('soft, given, expected', [
    (1024, {}, 960), (100000, {}, 1000), (40, {}, 30),
    (1024, {'max_connections': 5000}, 960), (1024, {'max_connections': 10}, 10),
    (1024, {'max_connections': None}, 960),
], ids=['default-1024', 'default-plenty', 'tiny', 'too-many', 'fits', 'off'])
def test_connections_fit_descriptors(soft, given, expected):
    from smtpd_compat.cli_options import _fit_connections_to_descriptors
    kwargs = dict(given)
    _fit_connections_to_descriptors(kwargs, soft)
    assert kwargs.get('max_connections', 1000) == expected


# -- exceptions in process_message -------------------------------------------

class Exploding(LimitedServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if b'boom' in data:
            raise RuntimeError('boom')
        return None


def test_exception_in_process_message_is_451(serve, connect, caplog, capsys):
    caplog.set_level(logging.ERROR, logger='smtpd_compat')
    runner = serve(Exploding)
    sock, _ = connect(runner.address)
    assert command(sock, b'HELO c').startswith(b'250')
    for body, reply in ((b'boom', b'451 4.3.0 '), (b'fine', b'250 OK')):
        for line in (b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>', b'DATA'):
            assert command(sock, line)[:1] in (b'2', b'3')
        assert command(sock, body + b'\r\n.').startswith(reply)
    assert command(sock, b'NOOP') == b'250 OK\r\n'
    records = [r for r in caplog.records if r.exc_info]
    assert records and records[0].exc_info[0] is RuntimeError
    assert 'Traceback' not in capsys.readouterr().out


# -- descriptors under --production -----------------------------------------

_FD_CLI = r'''
import resource, runpy, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
sys.argv = ['smtpd_compat'] + sys.argv[2:]
runpy.run_module('smtpd_compat', run_name='__main__')
'''


def test_production_survives_running_out_of_descriptors(cli_server):
    import sys
    limit = 40
    proc, port = cli_server('--production', '-c', 'DebuggingServer',
                            command=[sys.executable, '-c', _FD_CLI, str(limit)])
    try:
        socks, refused = [], 0
        try:
            for _ in range(2 * limit):
                sock = socket.create_connection(('127.0.0.1', port), timeout=10)
                socks.append(sock)
                if recv_reply(sock, timeout=10).startswith(b'421 4.7.0'):
                    refused += 1
        finally:
            for sock in socks:
                sock.close()
        # max_connections was fitted below the limit: the surplus was
        # refused with 421 instead of failing accept().
        assert 0 < refused < 2 * limit
        # The server counts a session until it has read the client's end
        # of it: a client that comes before then may still be refused
        # (421), and one that comes after is served.
        for _ in range(50):
            try:
                client = smtplib.SMTP('127.0.0.1', port, timeout=20)
                break
            except smtplib.SMTPConnectError as e:
                assert e.smtp_code == 421
        assert client.noop()[0] == 250
        client.quit()
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert 'max_connections lowered from 1000' in err
    assert 'Traceback' not in err

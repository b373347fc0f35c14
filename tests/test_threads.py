"""Blocking work off the loop (smtpd_compat.threads): replies stay in order
under pipelining, other clients are not stalled, disconnects and shutdown
during work, saturation, both loops; the built-in offloads (AUTH, relay,
mbox) and --threads on the command line."""
import logging
import os
import smtplib
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import RecordingServer, read_to_eof, recv_reply
import helpers
import smtpd_compat
import smtpd_compat.loop
from smtpd_compat import threads
from smtpd_compat.auth import AuthServerMixin, FileAuthenticator, hash_password
from smtpd_compat.delivery import MaildirServer, MboxServer
from smtpd_compat.extensions import ExtensionsMixin
from smtpd_compat.limits import LimitedServer
from smtpd_compat.lmtp import LMTPServer
from smtpd_compat.relay import RelayServer
from smtpd_compat.shutdown import GracefulShutdown

# Wall-clock bounds below are far above the figures measured on an idle
# machine (docs/threads.rst), and far below what blocking the loop costs.
FAST = 1.0


class SlowServer(threads.ThreadedServerMixin, RecordingServer):
    """Records each message after ``delay`` seconds (or, when the test
    gives it a ``release`` event, once that is set), with the thread it ran
    in; a message whose body holds "boom" raises."""

    delay = 0.3

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        started = getattr(self, 'started', None)
        if started is not None:
            started.set()
        release = getattr(self, 'release', None)
        if release is not None:
            assert release.wait(30)
        else:
            # Work that takes a while (the replies must wait for it).
            time.sleep(self.delay)
        if b'boom' in data:
            raise RuntimeError('handler bug')
        self.threads_seen = getattr(self, 'threads_seen', set())
        self.threads_seen.add(threading.current_thread().name)
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


def replies(sock, count, timeout=20.0):
    """The first ``count`` reply lines (complete replies only)."""
    sock.settimeout(timeout)
    data = b''
    lines = []
    while True:
        lines = [line for line in data.split(b'\r\n')[:-1] if line[3:4] != b'-']
        if len(lines) >= count:
            return [line.decode() for line in lines[:count]]
        chunk = sock.recv(65536)
        if not chunk:
            return [line.decode() for line in lines]
        data += chunk


def greet_ehlo_quit(address):
    """Seconds for connect + greeting + EHLO + QUIT."""
    start = time.monotonic()
    with socket.create_connection(address, timeout=30) as sock:
        assert recv_reply(sock, 30).startswith(b'220')
        sock.sendall(b'EHLO other\r\n')
        assert recv_reply(sock, 30).startswith(b'250')
        sock.sendall(b'QUIT\r\n')
        assert recv_reply(sock, 30).startswith(b'221')
    return time.monotonic() - start


def connect_noop(address):
    """Seconds for connect + greeting + NOOP."""
    start = time.monotonic()
    with socket.create_connection(address, timeout=30) as sock:
        assert recv_reply(sock, 30).startswith(b'220')
        sock.sendall(b'NOOP\r\n')
        assert recv_reply(sock, 30) == b'250 OK\r\n'
    return time.monotonic() - start


PIPELINED = (b'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n'
             b'first\r\n.\r\nMAIL FROM:<c@x>\r\nRCPT TO:<d@x>\r\nDATA\r\n'
             b'second\r\n.\r\nNOOP\r\nQUIT\r\n')


@pytest.mark.parametrize('loop', ['asyncore', 'smtpd_compat'], ids=['asyncore', 'smtpd_compat.loop'])
def test_pipelined_replies_stay_in_order(live_server, loop):
    live = live_server(SlowServer, loop=loop)
    with socket.create_connection(live.address, timeout=10) as sock:
        recv_reply(sock)
        sock.sendall(PIPELINED)
        got = replies(sock, 11)
        # Meanwhile the loop is free: another client gets through.
        assert greet_ehlo_quit(live.address) < FAST
        rest = read_to_eof(sock)
    assert got[0] == '250 HELP'
    assert got[1:] == ['250 OK', '250 OK', '354 End data with <CR><LF>.<CR><LF>',
                       '250 OK', '250 OK', '250 OK',
                       '354 End data with <CR><LF>.<CR><LF>', '250 OK',
                       '250 OK', '221 Bye']
    assert rest == b''
    messages = live.server.messages
    assert [(m[1], m[2], m[3]) for m in messages] == [
        ('a@x', ['b@x'], b'first'), ('c@x', ['d@x'], b'second')]
    assert messages[0][4] == {'mail_options': [], 'rcpt_options': []}
    assert threading.main_thread().name not in live.server.threads_seen
    assert all(name.startswith('smtpd_compat') for name in live.server.threads_seen)


class SlowESMTPServer(ExtensionsMixin, SlowServer):
    pass


def test_pipelined_bdat_stays_in_order(live_server):
    live = live_server(SlowESMTPServer)
    with socket.create_connection(live.address, timeout=10) as sock:
        recv_reply(sock)
        sock.sendall(b'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n'
                     b'BDAT 6\r\nchunk1BDAT 3 LAST\r\nxyzRSET\r\n'
                     b'MAIL FROM:<c@x>\r\nRCPT TO:<d@x>\r\nBDAT 2 LAST\r\nokQUIT\r\n')
        got = replies(sock, 10)
    assert got[1:] == ['250 2.1.0 OK', '250 2.1.5 OK', '250 2.0.0 OK 6 octets received',
                       '250 2.0.0 OK', '250 2.0.0 OK', '250 2.1.0 OK', '250 2.1.5 OK',
                       '250 2.0.0 OK', '221 2.0.0 Bye']
    assert [m[3] for m in live.server.messages] == [b'chunk1xyz', b'ok']


def test_handler_exception_is_451_and_session_goes_on(live_server, caplog):
    live = live_server(SlowServer)
    with caplog.at_level(logging.ERROR, logger='smtpd_compat.threads'):
        with smtplib.SMTP(*live.address, timeout=10) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail('a@x', ['b@x'], b'boom\r\n')
            assert info.value.smtp_code == 451
            assert info.value.smtp_error == b'4.3.0 Error: internal server error'
            assert client.noop()[0] == 250
            assert client.sendmail('a@x', ['b@x'], b'fine\r\n') == {}
    failures = [r for r in caplog.records if 'process_message failed' in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info[0] is RuntimeError


def test_disconnect_during_work(live_server, caplog):
    live = live_server(SlowServer)
    live.server.started = threading.Event()
    live.server.release = threading.Event()
    with caplog.at_level(logging.INFO, logger='smtpd_compat.threads'):
        sock = socket.create_connection(live.address, timeout=10)
        recv_reply(sock)
        sock.sendall(b'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n'
                     b'gone\r\n.\r\n')
        assert replies(sock, 4)[-1].startswith('354')
        # Reset (not just close) the connection while the handler runs;
        # the handler ends after that.  (The server's socket has the reset
        # once close() returns: loopback delivers it within the call.)
        assert live.server.started.wait(10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        sock.close()
        live.server.release.set()
        helpers.poll_until(lambda: any('result dropped' in r.getMessage()
                                       for r in caplog.records),
                           10, 'the result was dropped')
    # The work finished; the server goes on serving.
    assert [m[3] for m in live.server.messages] == [b'gone']
    assert connect_noop(live.address) < FAST


def test_half_closed_client_still_gets_its_replies(live_server):
    live = live_server(SlowServer)
    with socket.create_connection(live.address, timeout=10) as sock:
        recv_reply(sock)
        sock.sendall(b'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n'
                     b'x\r\n.\r\nQUIT\r\n')
        sock.shutdown(socket.SHUT_WR)
        data = read_to_eof(sock)
    assert data.endswith(b'354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n221 Bye\r\n')


def test_saturated_pool_queues_in_order(live_server, caplog):
    class Narrow(SlowServer):
        delay = 0.1

    live = live_server(Narrow, process_message_threads=2)
    clients, per_client = 6, 3

    def session(n, results):
        with smtplib.SMTP(*live.address, timeout=30) as client:
            for i in range(per_client):
                results.append(client.sendmail('c%d@x' % n, ['r@x'],
                                               b'%d-%d\r\n' % (n, i)))

    results = []
    with caplog.at_level(logging.WARNING, logger='smtpd_compat.threads'):
        workers = [threading.Thread(target=session, args=(n, results))
                   for n in range(clients)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
    assert results == [{}] * (clients * per_client)
    for n in range(clients):
        mine = [m[3] for m in live.server.messages if m[1] == 'c%d@x' % n]
        assert mine == [b'%d-%d' % (n, i) for i in range(per_client)]
    assert len(live.server.threads_seen) == 2
    saturated = [r for r in caplog.records if 'saturated' in r.getMessage()]
    # Rate-limited: one line for the whole burst (two if a loaded machine
    # stretched it past the interval), not one per queued job.
    assert 1 <= len(saturated) <= 2


class ClosingChannel(smtpd_compat.SMTPChannel):
    def smtp_QUIT(self, arg):
        self.smtp_server.close()     # on the loop thread
        super().smtp_QUIT(arg)


@pytest.mark.parametrize('use_timers', [False, True], ids=['asyncore', 'smtpd_compat.loop'])
def test_loop_ends_when_only_the_waker_is_left(use_timers):
    # The waker stays in the map between jobs (no socketpair per message),
    # but never keeps a loop running on its own.
    class Server(SlowServer):
        channel_class = ClosingChannel
        delay = 0

    map = {}
    server = Server(('127.0.0.1', 0), None, map=map)
    run = smtpd_compat.loop.loop if use_timers else smtpd_compat.asyncore.loop
    runner = threading.Thread(target=run, kwargs={'timeout': 0.05, 'map': map})
    runner.start()
    try:
        with smtplib.SMTP(*server.socket.getsockname(), timeout=10) as client:
            client.sendmail('a@x', ['b@x'], b'x\r\n')
            assert any(isinstance(d, smtpd_compat.loop._Waker) for d in list(map.values()))
        runner.join(10)
        assert not runner.is_alive(), 'the loop did not end'
        assert map == {}
    finally:
        if runner.is_alive():
            smtpd_compat.asyncore.close_all(map=map)
            runner.join(10)


# -- shutdown -------------------------------------------------------------

check_started = threading.Event()
check_release = threading.Event()


def slow_check(mechanism, login, password, channel):
    # A check that runs until the test releases it.
    check_started.set()
    assert check_release.wait(30)
    return password == 'right'


def test_closed_server_leaves_no_worker_threads(live_server):
    """Closing a server ends its worker threads (before, each closed
    server kept its idle threads until the server object was collected:
    a test suite that started 700 servers ended with 700 threads)."""
    live = live_server(SlowServer)
    live.server.delay = 0.2
    before = set(threading.enumerate())

    def send(n):
        with smtplib.SMTP(*live.address, timeout=10) as c:
            c.sendmail('a@x', ['b%d@x' % n], b'x\r\n')
    clients = [threading.Thread(target=send, args=(n,)) for n in range(3)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(20)
    assert len(live.server.messages) == 3
    workers = [t for t in set(threading.enumerate()) - before
               if t.name.startswith('smtpd_compat-worker')]
    assert len(workers) == 3    # three handlers slept at once
    live.stop()
    for t in workers:
        t.join(5)
    assert [t for t in workers if t.is_alive()] == []


class SlowAuthServer(AuthServerMixin, RecordingServer):
    pass


def test_shutdown_waits_for_work_in_flight():
    map = {}
    server = SlowAuthServer(('127.0.0.1', 0), None, map=map,
                            authenticator=slow_check, auth_allow_plaintext=True)
    address = server.socket.getsockname()
    shutdown = GracefulShutdown(map, grace_period=10)
    runner = threading.Thread(target=shutdown.run)
    runner.start()
    try:
        with socket.create_connection(address, timeout=10) as sock:
            recv_reply(sock)
            sock.sendall(b'EHLO c\r\n')
            recv_reply(sock)
            # AUTH PLAIN \0user\0right: the check is in flight (COMMAND
            # state, not DATA) when the shutdown begins.
            check_started.clear()
            check_release.clear()
            sock.sendall(b"AUTH PLAIN AHVzZXIAcmlnaHQ=\r\n")
            assert check_started.wait(10)
            shutdown.request()
            # The check ends once the shutdown has begun (listener closed).
            helpers.poll_until(lambda: not server.accepting)
            check_release.set()
            data = read_to_eof(sock)
    finally:
        check_release.set()
        shutdown.request()
        runner.join(20)
    assert data.startswith(b'235 2.7.0 Authentication successful\r\n421 4.3.2 ')
    assert not runner.is_alive()


def test_shutdown_waits_for_a_threaded_message():
    map = {}
    server = SlowServer(('127.0.0.1', 0), None, map=map)
    server.started, server.release = threading.Event(), threading.Event()
    address = server.socket.getsockname()
    shutdown = GracefulShutdown(map, grace_period=10)
    runner = threading.Thread(target=shutdown.run)
    runner.start()
    try:
        with socket.create_connection(address, timeout=10) as sock:
            recv_reply(sock)
            sock.sendall(b'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n'
                         b'x\r\n.\r\n')
            assert replies(sock, 4)[-1].startswith('354')
            assert server.started.wait(10)
            shutdown.request()
            # The handler ends once the shutdown has begun.
            helpers.poll_until(lambda: not server.accepting)
            server.release.set()
            data = read_to_eof(sock)
    finally:
        server.release.set()
        shutdown.request()
        runner.join(20)
    assert data.startswith(b'250 OK\r\n421 4.3.2 ')
    assert [m[3] for m in server.messages] == [b'x']


# -- built-in offloads ------------------------------------------------------

def test_auth_brute_force_does_not_block_others(live_server, tmp_path, capsys):
    users = tmp_path / 'users'
    users.write_text('user:%s\n' % hash_password('right'))
    live = live_server(SlowAuthServer, loop='smtpd_compat',
                       authenticator=FileAuthenticator(str(users)),
                       auth_allow_plaintext=True, auth_max_failures=10 ** 6,
                       # Every guess really checked (no 454 from the
                       # throttle): this measures the offloaded checks.
                       auth_throttle=None)
    stop = threading.Event()
    attempts = []

    def attacker():
        with socket.create_connection(live.address, timeout=30) as sock:
            recv_reply(sock, 30)
            sock.sendall(b'EHLO evil\r\n')
            recv_reply(sock, 30)
            while not stop.is_set():
                # \0user\0wrong
                sock.sendall(b'AUTH PLAIN AHVzZXIAd3Jvbmc=\r\n')
                assert recv_reply(sock, 30).startswith(b'535')
                attempts.append(1)

    attackers = [threading.Thread(target=attacker) for _ in range(8)]
    for t in attackers:
        t.start()
    try:
        helpers.poll_until(lambda: len(attempts) >= 16, what='16 attempts')
        samples = []
        for _ in range(10):
            samples.append(connect_noop(live.address))
            time.sleep(0.05)
    finally:
        stop.set()
        for t in attackers:
            t.join(30)
    with capsys.disabled():
        print('\n[figure] AUTH brute force, 8 connections: connect+NOOP '
              'max %.0f ms, median %.0f ms (%d failed attempts)'
              % (max(samples) * 1000, sorted(samples)[5] * 1000, len(attempts)))
    assert max(samples) < FAST


class SlowUpstream(RecordingServer):
    """An upstream whose handler runs until the test releases it
    (``started``, ``release``)."""

    def process_message(self, *args, **kwargs):
        self.started.set()
        assert self.release.wait(30)
        return super().process_message(*args, **kwargs)


def test_relay_waiting_on_upstream_does_not_block_others(live_server, capsys):
    upstream = live_server(SlowUpstream)
    upstream.server.started = threading.Event()
    upstream.server.release = threading.Event()
    relay = live_server(RelayServer, remoteaddr=upstream.address,
                        relay_timeout=10, loop='smtpd_compat')
    outcome = {}

    def slow_sender():
        with smtplib.SMTP(*relay.address, timeout=20) as client:
            client.ehlo('slow')
            client.mail('a@x')
            client.rcpt('b@x')
            outcome['data'] = client.data(b'Subject: slow\r\n\r\nbody\r\n')

    sender = threading.Thread(target=slow_sender)
    sender.start()
    try:
        # The relay waits on the upstream's answer meanwhile.
        assert upstream.server.started.wait(10)
        samples = [greet_ehlo_quit(relay.address) for _ in range(20)]
        assert sender.is_alive()
    finally:
        upstream.server.release.set()
        sender.join(20)
    with capsys.disabled():
        print('\n[figure] relay, upstream holding the message: greeting+EHLO+QUIT '
              'max %.0f ms over %d samples' % (max(samples) * 1000, len(samples)))
    assert samples and max(samples) < FAST
    assert outcome['data'] == (250, b'OK')
    assert len(upstream.server.messages) == 1


class PickyChannel(smtpd_compat.SMTPChannel):
    def smtp_RCPT(self, arg):
        time.sleep(0.2)        # a slow upstream, answering in order
        if arg and 'refused@' in arg:
            self.push('550 5.1.1 <refused@x>: Recipient address rejected')
            return
        super().smtp_RCPT(arg)


class PickyUpstream(RecordingServer):
    channel_class = PickyChannel


def test_relay_pipelined_transaction_in_order(live_server):
    upstream = live_server(PickyUpstream)
    relay = live_server(RelayServer, remoteaddr=upstream.address, relay_timeout=10)
    with socket.create_connection(relay.address, timeout=10) as sock:
        recv_reply(sock)
        sock.sendall(b'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<ok@x>\r\n'
                     b'RCPT TO:<refused@x>\r\nRCPT TO:<ok2@x>\r\nDATA\r\n'
                     b'body\r\n.\r\nQUIT\r\n')
        got = replies(sock, 8)
    assert got[1:] == ['250 OK', '250 OK',
                       '550 5.1.1 <refused@x>: Recipient address rejected',
                       '250 OK', '354 End data with <CR><LF>.<CR><LF>',
                       '250 OK', '221 Bye']
    (peer, mailfrom, rcpttos, data, kwargs), = upstream.server.messages
    assert (mailfrom, rcpttos) == ('a@x', ['ok@x', 'ok2@x'])
    assert data.startswith(b'Received: ') and data.endswith(b'\nbody')


LOCKER = '''
import fcntl, sys, time
with open(sys.argv[1], 'ab') as f:
    fcntl.lockf(f, fcntl.LOCK_EX)
    print('locked', flush=True)
    time.sleep(float(sys.argv[2]))
'''


class SignallingMbox(MboxServer):
    def store(self, mailfrom, data):
        self.storing.set()
        super().store(mailfrom, data)


def test_mbox_lock_held_elsewhere_does_not_stall_others(live_server, tmp_path):
    mbox = tmp_path / 'mbox'
    live = live_server(SignallingMbox, mbox=str(mbox), lock_timeout=10)
    live.server.storing = threading.Event()
    locker = subprocess.Popen([sys.executable, '-c', LOCKER, str(mbox), '2'],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline() == 'locked\n'
        outcome = {}

        def sender():
            with smtplib.SMTP(*live.address, timeout=20) as client:
                outcome['refused'] = client.sendmail('a@x', ['b@x'], b'locked out\r\n')
                outcome['at'] = time.monotonic()

        t = threading.Thread(target=sender)
        t.start()
        assert live.server.storing.wait(10)
        time.sleep(0.1)
        assert t.is_alive()         # waiting for the lock
        assert connect_noop(live.address) < FAST
        t.join(20)
    finally:
        locker.communicate(timeout=20)
    assert outcome['refused'] == {}
    assert b'locked out' in mbox.read_bytes()


# -- the command line -------------------------------------------------------

SLOW_MODULE = '''
import threading, time
import smtpd_compat

class Slow(smtpd_compat.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        time.sleep(1)
        return '250 OK in %s' % threading.current_thread().name
'''


@pytest.fixture
def slow_cli(tmp_path, python_path_env, cli_server):
    (tmp_path / 'mymod.py').write_text(SLOW_MODULE)
    env = dict(python_path_env)
    env['PYTHONPATH'] = str(tmp_path) + os.pathsep + env['PYTHONPATH']

    def start(*flags):
        proc, port = cli_server('-c', 'mymod.Slow', *flags, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return ('127.0.0.1', port)

    return start


def send_one(address, results):
    with smtplib.SMTP(*address, timeout=30) as client:
        client.ehlo('c')
        client.mail('a@x')
        client.rcpt('b@x')
        results.append((client.data(b'x\r\n'), time.monotonic()))


def test_cli_threads_runs_eight_slow_handlers_at_once(slow_cli, capsys):
    address = slow_cli('--threads', '8')
    results = []
    clients = [threading.Thread(target=send_one, args=(address, results))
               for _ in range(8)]
    start = time.monotonic()
    for t in clients:
        t.start()
    time.sleep(0.3)
    ehlo = greet_ehlo_quit(address)
    for t in clients:
        t.join(30)
    total = max(at for _, at in results) - start
    with capsys.disabled():
        print('\n[figure] --threads 8, 1 s handler: 8 messages in %.2f s; '
              'other client greeting+EHLO+QUIT %.0f ms' % (total, ehlo * 1000))
    assert len(results) == 8
    for (code, text), _ in results:
        assert code == 250 and text.startswith(b'OK in smtpd_compat')
    assert total < 6        # 8 s when run one after another
    assert ehlo < FAST


def test_cli_without_threads_keeps_the_stdlib_behaviour(slow_cli):
    address = slow_cli()
    results = []
    send_one(address, results)
    assert results[0][0] == (250, b'OK in MainThread')


@pytest.mark.parametrize('value', ['0', 'x', '-2'])
def test_cli_bad_threads_value(python_path_env, value):
    proc = subprocess.run([sys.executable, '-m', 'smtpd_compat', '-n', '--threads', value],
                          env=python_path_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert '--threads: not a positive integer' in proc.stderr


@pytest.mark.parametrize('value', [0, -1, True, 1.5])
def test_bad_pool_size_raises(value):
    with pytest.raises(ValueError):
        SlowServer(('127.0.0.1', 0), None, map={}, process_message_threads=value)


# -- with the other capabilities -------------------------------------------

class HeldLimited(LimitedServer):
    """Production limits and the session log, with a threaded handler that
    runs until the test releases it (``started``, ``release``)."""

    def process_message(self, *args, **kwargs):
        self.started.set()
        assert self.release.wait(30)


def test_server_work_does_not_count_as_client_idleness(live_server, caplog):
    caplog.set_level(logging.INFO, logger='smtpd_compat')
    live = live_server(type('S', (threads.ThreadedServerMixin, HeldLimited), {}),
                       loop='smtpd_compat', idle_timeout=1.0, clock=True)
    live.server.started, live.server.release = threading.Event(), threading.Event()
    with socket.create_connection(live.address, timeout=10) as sock:
        recv_reply(sock)
        sock.sendall(b'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n'
                     b'x\r\n.\r\n')
        assert live.server.started.wait(10)
        # The handler takes twice the idle timeout on the server's clock:
        # still answered.
        live.advance(2.0)
        live.server.release.set()
        assert replies(sock, 5)[-1] == '250 OK'
        # Then the idle deadline runs again, from the answer.
        answered = live.clock.now
        channel, = live.channels()
        live.wait_until(lambda: channel.deadline == answered + 1.0)
        live.advance(0.9)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(100)
        sock.settimeout(10)
        live.advance(0.1)
        assert read_to_eof(sock).startswith(b'421 4.4.2 ')
    messages = [r.getMessage() for r in caplog.records]
    assert sum('message from' in m and "reply='250 OK'" in m for m in messages) == 1


class SlowLMTP(LMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        time.sleep(0.3)
        return {r: None if r.startswith('ok') else '452 4.2.2 Over quota'
                for r in rcpttos}


def test_lmtp_threaded_per_recipient_replies_in_order(live_server):
    live = live_server(type('S', (threads.ThreadedServerMixin, SlowLMTP), {}))
    with socket.create_connection(live.address, timeout=10) as sock:
        recv_reply(sock)
        sock.sendall(b'LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<ok@x>\r\n'
                     b'RCPT TO:<full@x>\r\nDATA\r\nx\r\n.\r\nNOOP\r\nQUIT\r\n')
        got = replies(sock, 9)
    assert got[1:] == ['250 OK', '250 OK', '250 OK', '354 End data with <CR><LF>.<CR><LF>',
                       '250 <ok@x> OK', '452 4.2.2 Over quota', '250 OK', '221 Bye']


def test_lmtp_into_maildir_is_offloaded(live_server, tmp_path):
    class Local(MaildirServer, LMTPServer):
        def store(self, mailfrom, data):
            self.stored_in = threading.current_thread().name
            super().store(mailfrom, data)

    live = live_server(Local, maildir=str(tmp_path / 'md'))
    with socket.create_connection(live.address, timeout=10) as sock:
        recv_reply(sock)
        sock.sendall(b'LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n'
                     b'RCPT TO:<c@x>\r\nDATA\r\nx\r\n.\r\n')
        assert replies(sock, 7)[-2:] == ['250 <b@x> OK', '250 <c@x> OK']
    assert live.server.stored_in.startswith('smtpd_compat')
    assert len(os.listdir(tmp_path / 'md' / 'new')) == 1

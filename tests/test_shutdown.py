"""Graceful shutdown: SIGTERM to a real server process during uploads."""
import itertools
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import helpers
from conftest import read_to_eof, recv_reply

if not hasattr(signal, 'SIGTERM') or sys.platform == 'win32':
    pytest.skip('POSIX signals needed', allow_module_level=True)

# A server class that appends each message to a file before answering 250
# (what a real delivery does), importable by the subprocess.
SPOOL_SERVER = '''
import itertools
import os
import smtpd_compat

class SpoolServer(smtpd_compat.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        with open(os.environ['SPOOL'], 'ab') as f:
            f.write(data + b'\\n--END--\\n')
            f.flush()
            os.fsync(f.fileno())
'''


@pytest.fixture
def start_server(tmp_path, python_path_env, cli_server):
    (tmp_path / 'spoolserver.py').write_text(SPOOL_SERVER)

    def start(*flags):
        spool = tmp_path / 'spool'
        env = dict(python_path_env, SPOOL=str(spool))
        env['PYTHONPATH'] = str(tmp_path) + os.pathsep + env['PYTHONPATH']
        # stderr to a file (kept in tmp_path): a pipe nobody reads could
        # fill up and stall the server.
        with open(tmp_path / 'stderr', 'w') as err:
            proc, port = cli_server('-c', 'spoolserver.SpoolServer', *flags,
                                    env=env, stdout=subprocess.DEVNULL,
                                    stderr=err)
        return proc, ('127.0.0.1', port), spool

    return start


def open_transaction(address):
    sock = socket.create_connection(address, timeout=10)
    assert recv_reply(sock).startswith(b'220 ')
    for line in (b'HELO c', b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>'):
        sock.sendall(line + b'\r\n')
        assert recv_reply(sock).startswith(b'250')
    sock.sendall(b'DATA\r\n')
    assert recv_reply(sock).startswith(b'354')
    return sock


def wait_until_refused(address):
    """Wait until the server (another process) stopped listening: its
    shutdown has begun."""
    helpers.poll_until(lambda: helpers.refused(address), what='refused',
                       interval=0.02)


def test_sigterm_during_data_loses_nothing(start_server):
    proc, address, spool = start_server('--grace-period', '10')
    uploading = open_transaction(address)
    uploading.sendall(b'Subject: in flight\r\n\r\nfirst half\r\n')
    idle = socket.create_connection(address, timeout=10)
    assert recv_reply(idle).startswith(b'220 ')
    proc.send_signal(signal.SIGTERM)
    # The idle session is told at once and closed.
    goodbye = read_to_eof(idle)
    assert goodbye.startswith(b'421 4.3.2 ')
    idle.close()
    # No new connections once the shutdown began.
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()
    # The upload in DATA finishes: 250, then 421.
    uploading.sendall(b'second half\r\n.\r\n')
    rest = read_to_eof(uploading)
    uploading.close()
    assert rest.startswith(b'250 OK\r\n421 4.3.2 '), rest
    assert proc.wait(15) == 0
    assert spool.read_bytes() == (
        b'Subject: in flight\n\nfirst half\nsecond half\n--END--\n')


def test_grace_period_expires_with_421_nothing_half_delivered(start_server):
    proc, address, spool = start_server('--grace-period', '0.5')
    stalled = open_transaction(address)
    stalled.sendall(b'Subject: never finished\r\n\r\npartial')
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    reply = read_to_eof(stalled)
    stalled.close()
    assert reply.startswith(b'421 4.3.2 ')
    assert proc.wait(15) == 0
    assert time.monotonic() - started < 10
    assert not spool.exists()          # no 250, no delivery


def test_sigint_is_graceful_too(start_server):
    proc, address, spool = start_server('--production', '--grace-period', '5')
    uploading = open_transaction(address)
    proc.send_signal(signal.SIGINT)
    # The body must arrive after the shutdown began.
    wait_until_refused(address)
    uploading.sendall(b'Subject: x\r\n\r\nbody\r\n.\r\n')
    assert read_to_eof(uploading).startswith(b'250 OK\r\n421 ')
    uploading.close()
    assert proc.wait(15) == 0
    assert b'--END--' in spool.read_bytes()


# ---------------------------------------------------------------------------
# Repeated stop signals (issue 12, finding 10): an operator who presses
# Ctrl-C twice, or a supervisor that sends SIGTERM again while the first
# shutdown is under way, must get a quiet exit with status 0.

def signal_storm(proc, first, timeout=30.0):
    """Send ``first``, then SIGTERM and SIGINT in turn every 2 ms until the
    process exits, so that signals land in every phase of its shutdown
    (unwinding, closing, interpreter exit).  Returns how many were sent."""
    deadline = time.monotonic() + timeout
    sent = 0
    for signum in itertools.chain([first], itertools.cycle(
            [signal.SIGTERM, signal.SIGINT])):
        if proc.poll() is not None:
            return sent
        proc.send_signal(signum)
        sent += 1
        assert time.monotonic() < deadline, 'still running after %d signals' % sent
        time.sleep(0.002)


@pytest.mark.parametrize('first', [signal.SIGTERM, signal.SIGINT],
                         ids=['SIGTERM', 'SIGINT'])
@pytest.mark.parametrize('flags, in_data', [
    ([], False),
    ([], True),
    (['--production', '--grace-period', '1'], False),
    (['--production', '--grace-period', '1'], True),
], ids=['plain-idle', 'plain-data', 'graceful-idle', 'graceful-data'])
def test_repeated_stop_signals_exit_quietly(cli_server, tmp_path, first, flags,
                                            in_data, sigint_default_in_children):
    out_path, err_path = tmp_path / 'stdout', tmp_path / 'stderr'
    with open(out_path, 'w') as out, open(err_path, 'w') as err:
        proc, port = cli_server('-c', 'DebuggingServer', *flags,
                                stdout=out, stderr=err)
    address = ('127.0.0.1', port)
    if in_data:
        session = open_transaction(address)
        session.sendall(b'Subject: interrupted\r\n\r\nhalf')
    else:
        session = socket.create_connection(address, timeout=10)
        assert recv_reply(session).startswith(b'220 ')
        session.sendall(b'EHLO c\r\n')
        assert recv_reply(session).startswith(b'250')
    try:
        sent = signal_storm(proc, first)
    finally:
        session.close()
    output = out_path.read_text() + err_path.read_text()
    assert sent >= 2
    assert 'Traceback' not in output, output
    assert proc.wait(10) == 0, (proc.returncode, output)


# The switch to SIG_IGN when a stop begins (_ignore_stop_signals in
# __main__) must not race a signal that lands halfway through it:
# signal.signal() runs the handlers of pending signals, then installs the
# new one, and a signal noted in between finds no Python handler when its
# turn comes.  CPython then prints "OSError: Signal 15 ignored due to race
# condition" (seen about once in 250 runs of the storm test above).  Here
# the switch runs over and over while signals rain on the process.
SWITCHING = r'''
import signal, sys
from smtpd_compat import __main__ as cli
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('ready', flush=True)
switches = interrupted = 0
while interrupted < int(sys.argv[1]) and switches < int(sys.argv[2]):
    switches += 1
    try:
        cli._handle_stop_signals()
        cli._ignore_stop_signals()
    except KeyboardInterrupt:
        # A signal that came while _terminate was the handler.
        interrupted += 1
        cli._ignore_stop_signals()
print(switches, interrupted, flush=True)
'''


def test_switching_to_ignore_does_not_race_a_signal(python_path_env):
    proc = subprocess.Popen([sys.executable, '-c', SWITCHING, '200', '100000'],
                            env=python_path_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == 'ready\n'
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    switches, interrupted = map(int, out.split())
    # The signals did land while the handlers changed...
    assert interrupted > 0, (switches, interrupted)
    # ...and none was reported as lost.
    assert 'race condition' not in err, err
    assert err == ''
    assert proc.returncode == 0


# In production mode the graceful shutdown handles the stop signals while
# it serves and puts _terminate back when it ends, one signal at a time.  A
# SIGTERM landing between the two raised KeyboardInterrupt there, SIGINT
# kept the shutdown's handler, and the switch to SIG_IGN passed it over:
# Python reset it to SIG_DFL at exit and a late SIGINT killed the process
# (status -2; seen about once in 80 runs of the storm test).  Here the
# SIGTERM lands exactly there.
RESTORING = r'''
import os, signal
from smtpd_compat import __main__ as cli
from smtpd_compat import loop
cli._handle_stop_signals()
services = loop.services({})
for signum in (signal.SIGTERM, signal.SIGINT):
    services.add_signal_handler(signum, print)
try:
    services.remove_signal_handler(signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, [])    # runs the handler
    print('not interrupted')
except KeyboardInterrupt:
    print('interrupted')
finally:
    cli._ignore_stop_signals()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN,
      signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
'''


def test_stop_signals_ignored_after_a_signal_interrupts_the_restore(
        python_path_env, sigint_default_in_children):
    out = subprocess.run([sys.executable, '-c', RESTORING], env=python_path_env,
                         capture_output=True, text=True, timeout=60)
    assert (out.stdout, out.stderr) == ('interrupted\nTrue True\n', '')


# ---------------------------------------------------------------------------
# The grace period is read from the socket map's clock

def test_grace_period_runs_on_the_maps_clock():
    """An hour's grace period passes at once on a clock that jumps: the
    client still in DATA gets the 421 (its message never acknowledged,
    nothing delivered), without anyone waiting an hour."""
    import threading

    import smtpd_compat
    from smtpd_compat import loop
    from smtpd_compat.shutdown import GracefulShutdown

    from conftest import RecordingServer

    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    now = [0.0]

    def jumping():
        now[0] += 5000.0
        return now[0]
    shutdown = GracefulShutdown(map, grace_period=3600)
    thread = threading.Thread(target=shutdown.run, daemon=True)
    thread.start()
    sock = open_transaction(server.socket.getsockname()[:2])
    try:
        sock.sendall(b'Subject: unfinished\r\n\r\nhalf')
        loop.services(map).clock = jumping
        shutdown.request()
        assert recv_reply(sock, timeout=10).startswith(b'421 4.3.2 ')
    finally:
        sock.close()
        thread.join(15)
    assert not thread.is_alive()
    assert server.messages == []
    assert map == {}
    smtpd_compat.asyncore.close_all(map=map)

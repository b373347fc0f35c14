"""Fixtures shared by the whole test suite.

Live tests run real servers on 127.0.0.1, port 0, each on its own asyncore
socket map in a background thread, and talk to them with real clients.
"""
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from typing import NamedTuple

import pytest

import smtpd_compat

# Imported once, up front: cryptography (under trustme) is a PyO3 module that
# cannot be initialised twice in one process, and pytester's in-process runs
# drop modules first imported during them from sys.modules.
with warnings.catch_warnings():
    # cryptography warns about old Pythons (3.8) when imported.
    warnings.simplefilter('ignore')
    try:
        import trustme as _trustme
    except ImportError:
        _trustme = None

# CI sets this so that a test needing an outside tool fails instead of
# skipping when the tool is missing (a CI run can never pass by skipping).
REQUIRE_TOOLS = os.environ.get('SMTPD_COMPAT_REQUIRE_TOOLS') == '1'


def require_tool(name):
    """The path of the command-line tool ``name``; skips the test when it is
    not installed (fails instead under SMTPD_COMPAT_REQUIRE_TOOLS=1)."""
    path = shutil.which(name)
    if path is None:
        message = '%s is not installed (Debian package needed; .ci/run installs it)' % name
        if REQUIRE_TOOLS:
            pytest.fail(message)
        pytest.skip(message)
    return path


# Server configurations the channel and differential tests run sessions
# under: name -> keyword arguments for SMTPServer/SMTPChannel.
CONFIGS = {
    'default': {},
    'decode': {'decode_data': True},
    'utf8': {'enable_SMTPUTF8': True},
    'small': {'data_size_limit': 64},
    'nolimit': {'data_size_limit': 0},
}


class LiveServer:
    """A server instance running its own socket map in a daemon thread.

    The map is served by ``asyncore.loop`` (what legacy code runs), or with
    ``use_timers=True`` by ``smtpd_compat.loop.loop``, the only loop in
    which timers (``smtpd_compat.loop.call_later``: idle timeouts,
    handshake deadlines, ...) fire."""

    def __init__(self, server, map, use_timers=False):
        self.server = server
        self.map = map
        name = server.socket.getsockname()
        if isinstance(name, tuple):
            self.host, self.port = name[:2]
        else:                   # an AF_UNIX socket: its path
            self.host, self.port = name, None
        if use_timers:
            from smtpd_compat import loop as timer_loop
            self._loop, self._timeout = timer_loop.loop, 0.05
        else:
            self._loop, self._timeout = smtpd_compat.asyncore.loop, 0.01
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set() and self.map:
            self._loop(timeout=self._timeout, map=self.map, count=1)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        smtpd_compat.asyncore.close_all(map=self.map)

    @property
    def address(self):
        return (self.host, self.port)


@pytest.fixture
def live_server():
    """Factory: ``live_server(ServerClass, **kwargs)`` starts the server on
    127.0.0.1 port 0 (or ``localaddr``) and returns a LiveServer; all are
    stopped at teardown.  ``use_timers=True`` serves it with
    smtpd_compat.loop instead of asyncore.loop (see LiveServer)."""
    started = []

    def start(server_class, remoteaddr=('127.0.0.1', 9), *,
              localaddr=('127.0.0.1', 0), use_timers=False, **kwargs):
        map = {}
        server = server_class(localaddr, remoteaddr, map=map, **kwargs)
        live = LiveServer(server, map, use_timers=use_timers)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


class RecordingServer(smtpd_compat.SMTPServer):
    """Records every process_message call as (peer, mailfrom, rcpttos, data,
    kwargs) and answers with ``self.reply`` (None = 250 OK)."""

    reply = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((peer, mailfrom, rcpttos, data, kwargs))
        return self.reply


@pytest.fixture
def recording_server(live_server):
    """A live RecordingServer with the stdlib's defaults."""
    return live_server(RecordingServer)


def recv_reply(sock, timeout=5.0):
    """Read one complete (possibly multi-line) SMTP reply from a raw
    socket; returns the bytes."""
    sock.settimeout(timeout)
    data = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b'\r\n')
        # Complete when the last full line has a space (or nothing) after
        # the code.
        if len(lines) >= 2 and len(lines[-2]) >= 3 and lines[-2][3:4] != b'-' and lines[-1] == b'':
            return data


def read_to_eof(sock, timeout=10.0):
    """Everything a raw socket receives until the peer closes it."""
    sock.settimeout(timeout)
    data = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def raw_client():
    """Factory: ``raw_client(address)`` opens a TCP socket, reads the
    greeting and returns (sock, greeting)."""
    socks = []

    def connect(address):
        sock = socket.create_connection(address, timeout=5)
        socks.append(sock)
        return sock, recv_reply(sock)

    yield connect
    for sock in socks:
        sock.close()


class TLSCerts(NamedTuple):
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext
    ca_file: str
    cert_file: str      # certificate chain and private key, PEM


@pytest.fixture(scope='module')
def tls_certs(tmp_path_factory):
    """A TLSCerts for 127.0.0.1 and localhost, issued at test time by a
    trustme CA that client_context (and ca_file) trusts; skips without
    trustme."""
    if _trustme is None:
        pytest.skip('trustme is not installed')
    ca = _trustme.CA()
    cert = ca.issue_cert('127.0.0.1', 'localhost')
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    d = tmp_path_factory.mktemp('tls')
    ca.cert_pem.write_to_path(str(d / 'ca.pem'))
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / 'server.pem'))
    return TLSCerts(server_ctx, client_ctx, str(d / 'ca.pem'), str(d / 'server.pem'))


def free_ports(count):
    """``count`` distinct TCP ports free on 127.0.0.1 (bound all at once so
    none repeats), for servers started in another process."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(('127.0.0.1', 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port():
    """A TCP port free on 127.0.0.1."""
    return free_ports(1)[0]


def wait_for_port(proc, port, timeout=30.0):
    """Wait until 127.0.0.1:``port`` accepts connections; fail (with the
    process's output when it was piped) if ``proc`` exits first or after
    ``timeout`` seconds (generous: interpreter start-up on a loaded CI
    machine)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail('process exited with %r before port %d was open: '
                        'stdout %r, stderr %r' % (proc.returncode, port, out, err))
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail('port %d not open after %ss: stdout %r, stderr %r'
                            % (port, timeout, out, err))
            time.sleep(0.05)


@pytest.fixture
def cli_server(python_path_env):
    """Factory: ``cli_server(*args, env=None, remoteaddr=None, **popen)``
    runs ``python -m smtpd_compat -n ARGS 127.0.0.1:PORT [REMOTEADDR]``
    (stdout and stderr piped as text unless ``popen`` says otherwise),
    waits until it listens and returns ``(proc, port)``.  Processes still
    running at teardown are killed."""
    procs = []

    def start(*args, env=None, remoteaddr=None, **popen):
        port = free_port()
        argv = [sys.executable, '-m', 'smtpd_compat', '-n'] + list(args)
        argv.append('127.0.0.1:%d' % port)
        if remoteaddr is not None:
            argv.append('%s:%d' % tuple(remoteaddr))
        popen.setdefault('stdout', subprocess.PIPE)
        popen.setdefault('stderr', subprocess.PIPE)
        popen.setdefault('text', True)
        proc = subprocess.Popen(argv, env=python_path_env if env is None else env,
                                **popen)
        procs.append(proc)
        wait_for_port(proc, port)
        return proc, port

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture
def python_path_env():
    """Environment for subprocesses that must import this checkout's
    smtpd_compat."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(smtpd_compat.__file__)))
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
    return env


HAVE_STDLIB_SMTPD = sys.version_info < (3, 12)

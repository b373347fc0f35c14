"""Fixtures shared by the whole test suite.

Live tests run real servers on 127.0.0.1, port 0, each on its own asyncore
socket map in a background thread, and talk to them with real clients.
"""
import os
import shutil
import socket
import sys
import threading

import pytest

import smtpd_compat

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


class LiveServer:
    """A server instance running its own socket map in a daemon thread."""

    def __init__(self, server, map):
        self.server = server
        self.map = map
        self.host, self.port = server.socket.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set() and self.map:
            smtpd_compat.asyncore.loop(timeout=0.01, map=self.map, count=1)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        smtpd_compat.asyncore.close_all(map=self.map)

    @property
    def address(self):
        return (self.host, self.port)


@pytest.fixture
def live_server():
    """Factory: ``live_server(ServerClass, **kwargs)`` starts the server on
    127.0.0.1 port 0 and returns a LiveServer; all are stopped at teardown."""
    started = []

    def start(server_class, remoteaddr=('127.0.0.1', 9), **kwargs):
        map = {}
        server = server_class(('127.0.0.1', 0), remoteaddr, map=map, **kwargs)
        live = LiveServer(server, map)
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


@pytest.fixture
def python_path_env():
    """Environment for subprocesses that must import this checkout's
    smtpd_compat."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(smtpd_compat.__file__)))
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
    return env


HAVE_STDLIB_SMTPD = sys.version_info < (3, 12)

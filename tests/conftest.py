"""Fixtures shared by the whole test suite.

Live tests run real servers on 127.0.0.1, port 0, each on its own asyncore
socket map in a background thread, and talk to them with real clients.
Servers are started one way in process and one way as a process: see
helpers.py (the live_server and cli_server fixtures here are its
functions, cleaned up after each test).
"""
import os
import shutil
import socket
import ssl
import sys
import warnings
from typing import NamedTuple

import pytest

import smtpd_compat

import helpers
from helpers import free_port, free_ports, reserved_port, reserved_ports, wait_for_port  # noqa: F401 (for test modules)

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


@pytest.fixture
def live_server():
    """Factory: ``live_server(ServerClass, remoteaddr=..., *, localaddr=...,
    loop='asyncore', clock=False, **kwargs)`` starts the server in a
    Controller thread (127.0.0.1 port 0 unless ``localaddr`` says
    otherwise) and returns a :class:`helpers.Served`; all are stopped at
    teardown.  ``loop='smtpd_compat'`` serves it with smtpd_compat.loop,
    where timers fire; ``clock=True`` gives it a manual clock (see
    helpers.start_server)."""
    started = []

    def start(server_class, remoteaddr=('127.0.0.1', 9), **kwargs):
        served = helpers.start_server(server_class, remoteaddr, **kwargs)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


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


@pytest.fixture
def cli_server(python_path_env):
    """Factory: ``cli_server(*args, env=None, remoteaddr=None, **popen)``
    runs ``python -m smtpd_compat -n ARGS 127.0.0.1:PORT [REMOTEADDR]``
    (stdout and stderr piped as text unless ``popen`` says otherwise),
    waits until it listens and returns ``(proc, port)``.  Processes still
    running at teardown are killed (helpers.CLIServers.start)."""
    servers = helpers.CLIServers(python_path_env)
    yield servers.start
    servers.close()


@pytest.fixture
def cli():
    """A helpers.CLIServers for the test: ``cli.run(*args)`` runs
    ``python -m smtpd_compat ARGS`` to its end, ``cli.start(*args)`` a
    listening server, ``cli.popen(*args)`` anything else; whatever still
    runs at teardown is killed."""
    servers = helpers.CLIServers()
    yield servers
    servers.close()


@pytest.fixture
def python_path_env():
    """Environment for subprocesses that must import this checkout's
    smtpd_compat."""
    return helpers.python_path_env()


@pytest.fixture(name='sigint_default_in_children')
def _sigint_default_in_children():
    """SIGINT at its default disposition in the children the test starts
    (see helpers.sigint_default_in_children)."""
    with helpers.sigint_default_in_children():
        yield


HAVE_STDLIB_SMTPD = sys.version_info < (3, 12)

"""The web inbox's live events: /api/events, a websocket (RFC 6455) with
Mailpit's event types and payloads.

The frame parser is tested whole, byte by byte and with trailing bytes;
the server with a raw-socket client, and with the event listener of the
npm package mailpit-api (1.9.1, the last whose MailpitClient has
onEvent; later ones moved it to a package not on the registry), installed
into a temporary folder.
"""
import base64
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.parse

import pytest

from smtpd_compat.web import Inbox, events, store
from smtpd_compat.web.http import WebServer
from smtpd_compat.web.transport import IOThread
from smtpd_compat.web.events import (
    CLOSE, PING, PONG, TEXT, BINARY, CONTINUATION, Frame, ProtocolError, accept_key,
    encode_frame, parse_frame)

import test_web
from conftest import REQUIRE_TOOLS, require_tool
from test_web import make_message

inbox_web = test_web.inbox_web
w = test_web.w

# Generous: "it did not hang", not a speed target (benchmarks measure that).
WAIT = 15.0


def masked(opcode, payload=b'', fin=True, mask=b'\x01\x02\x03\x04', rsv=0):
    """A client frame (masked, RFC 6455 section 5.3)."""
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = struct.pack('!BB', first, 0x80 | n)
    elif n < 65536:
        head = struct.pack('!BBH', first, 0x80 | 126, n)
    else:
        head = struct.pack('!BBQ', first, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


# ---------------------------------------------------------------------------
# the sans-IO frame parser

FRAMES = {
    'text': (masked(TEXT, b'hello'), Frame(True, TEXT, b'hello')),
    'empty': (masked(TEXT), Frame(True, TEXT, b'')),
    'ping': (masked(PING, b'p'), Frame(True, PING, b'p')),
    'fragment': (masked(BINARY, b'ab', fin=False), Frame(False, BINARY, b'ab')),
    'continuation': (masked(CONTINUATION, b'c'), Frame(True, CONTINUATION, b'c')),
    '16-bit length': (masked(TEXT, b'x' * 300), Frame(True, TEXT, b'x' * 300)),
    '64-bit length': (masked(BINARY, b'y' * 70000), Frame(True, BINARY, b'y' * 70000)),
    'close': (masked(CLOSE, struct.pack('!H', 1000) + b'bye'),
              Frame(True, CLOSE, b'\x03\xe8bye')),
}


@pytest.mark.parametrize('name', list(FRAMES))
def test_parse_frame_whole_byte_by_byte_and_with_trailing_bytes(name):
    data, frame = FRAMES[name]
    assert parse_frame(data, 1 << 20) == (frame, len(data))
    # Byte by byte: "need more" until the last byte.
    for end in range(len(data)):
        assert parse_frame(data[:end], 1 << 20) is None
    # Trailing bytes are left alone (and parse as the next frame).
    two = data + masked(PING, b'next')
    got, used = parse_frame(two, 1 << 20)
    assert (got, used) == (frame, len(data))
    assert parse_frame(memoryview(two)[used:], 1 << 20)[0] == Frame(True, PING, b'next')


@pytest.mark.parametrize('data, code', [
    (masked(TEXT, b'x', rsv=0x40), 1002),                   # reserved bit
    (masked(0x3, b'x'), 1002),                              # unknown opcode
    (masked(PING, b'x', fin=False), 1002),                  # fragmented control
    (masked(PING, b'x' * 126), 1002),                       # long control
    (encode_frame(TEXT, b'unmasked'), 1002),                # not masked
    (struct.pack('!BBH', 0x81, 0xFE, 5) + b'\0' * 9, 1002),  # 16-bit for 5 bytes
    (struct.pack('!BBQ', 0x82, 0xFF, 1 << 63) + b'\0' * 4, 1002),
    (masked(BINARY, b'z' * 2000), 1009),                    # over the limit
], ids=['rsv', 'opcode', 'fragmented-ping', 'long-ping', 'unmasked', 'non-minimal',
        'top-bit', 'too-big'])
def test_parse_frame_refuses(data, code):
    with pytest.raises(ProtocolError) as info:
        parse_frame(data, 1000)
    assert info.value.code == code


def test_too_big_is_known_from_the_header_alone():
    header = struct.pack('!BBQ', 0x82, 0xFF, 10 ** 9)
    with pytest.raises(ProtocolError) as info:
        parse_frame(header, 1000)
    assert info.value.code == 1009


def test_encode_frame_round_trips_as_a_server_frame():
    for size in (0, 125, 126, 65535, 65536):
        data = encode_frame(BINARY, b'q' * size)
        assert parse_frame(data, 1 << 20, masked=False) == (
            Frame(True, BINARY, b'q' * size), len(data))


def test_accept_key_of_rfc_6455_example():
    # RFC 6455 section 1.3.
    assert accept_key('dGhlIHNhbXBsZSBub25jZQ==') == 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='


# ---------------------------------------------------------------------------
# a raw-socket client

class WSClient:
    """A websocket client on a raw socket."""

    def __init__(self, url, headers=(), version=b'13'):
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=WAIT)
        self.key = base64.b64encode(os.urandom(16)).decode()
        extra = b''.join(b'%s: %s\r\n' % (k.encode(), v.encode()) for k, v in headers)
        self.sock.sendall(
            b'GET /api/events HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n'
            b'Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n'
            b'Sec-WebSocket-Version: %s\r\n%s\r\n'
            % (parts.hostname.encode(), parts.port, self.key.encode(), version, extra))
        self.buffer = b''
        head = self._until(b'\r\n\r\n')
        self.status_line, _, rest = head.partition(b'\r\n')
        self.headers = {}
        for line in rest.split(b'\r\n'):
            name, _, value = line.partition(b':')
            self.headers[name.strip().lower().decode()] = value.strip().decode()

    def _until(self, marker):
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def frame(self):
        while True:
            parsed = parse_frame(self.buffer, 1 << 24, masked=False)
            if parsed is not None:
                frame, used = parsed
                self.buffer = self.buffer[used:]
                return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError('connection closed')
            self.buffer += chunk

    def event(self, skip=('stats',)):
        """The next JSON event whose Type is not in ``skip``."""
        while True:
            frame = self.frame()
            if frame.opcode == TEXT:
                event = json.loads(frame.payload)
                if event['Type'] not in skip:
                    return event

    def send(self, data):
        self.sock.sendall(data)

    def closed_with(self):
        """The code of the close frame that ends the stream."""
        while True:
            frame = self.frame()
            if frame.opcode == CLOSE:
                return struct.unpack('!H', frame.payload[:2])[0]

    def eof(self):
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        return True

    def close(self):
        self.sock.close()


@pytest.fixture
def ws(w):
    clients = []

    def connect(**kw):
        client = WSClient(w.url, **kw)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def wait_for_clients(hub, n):
    deadline = time.monotonic() + WAIT
    while hub.clients != n or hub._adopted:
        assert time.monotonic() < deadline, 'the hub never had %d clients' % n
        time.sleep(0.01)


def test_handshake_and_a_new_event_with_the_summary(w, ws):
    client = ws()
    assert client.status_line == b'HTTP/1.1 101 Switching Protocols'
    assert client.headers['sec-websocket-accept'] == accept_key(client.key)
    assert client.headers['upgrade'].lower() == 'websocket'
    wait_for_clients(w.controller.server.web_server.events, 1)
    started = time.monotonic()
    w.send(make_message(subject='live', X_Tags='ci'))
    event = client.event()
    elapsed = time.monotonic() - started
    assert event['Type'] == 'new'
    summary = event['Data']
    assert summary == w.json('/api/v1/messages')['messages'][0]
    assert summary['Subject'] == 'live' and summary['Tags'] == ['ci']
    assert elapsed < WAIT
    stats = client.event(skip=())
    assert stats == {'Type': 'stats', 'Data': {'Total': 1, 'Unread': 1,
                                               'Version': stats['Data']['Version']}}


def test_update_delete_truncate_and_tag_events(w, ws):
    client = ws()
    wait_for_clients(w.controller.server.web_server.events, 1)
    w.send(make_message(subject='one'))
    w.send(make_message(subject='two'))
    first, second = client.event()['Data']['ID'], client.event()['Data']['ID']
    w.request('/api/v1/messages', method='PUT', body={'IDs': [first], 'Read': True})
    assert client.event() == {'Type': 'update', 'Data': {'ID': first, 'Read': True}}
    # Nothing changes: no event (the next one is the tags').
    w.request('/api/v1/messages', method='PUT', body={'IDs': [first], 'Read': True})
    w.request('/api/v1/tags', method='PUT', body={'IDs': [second], 'Tags': ['T']})
    assert client.event() == {'Type': 'update', 'Data': {'ID': second, 'Tags': ['T']}}
    w.request('/api/v1/tags/T', method='PUT', body={'Name': 'U'})
    assert client.event() == {'Type': 'prune', 'Data': None}
    w.request('/api/v1/messages', method='DELETE', body={'IDs': [first]})
    assert client.event() == {'Type': 'delete', 'Data': {'ID': first}}
    w.request('/api/v1/messages', method='DELETE')
    assert client.event() == {'Type': 'truncate', 'Data': None}


def test_the_inbox_bounds_dropping_a_message_is_a_delete_event(inbox_web):
    web = inbox_web(web_max_messages=1)
    client = WSClient(web.url)
    try:
        wait_for_clients(web.controller.server.web_server.events, 1)
        web.send(make_message(subject='old'))
        old = client.event()['Data']['ID']
        web.send(make_message(subject='new'))
        assert client.event()['Type'] == 'new'
        assert client.event() == {'Type': 'delete', 'Data': {'ID': old}}
    finally:
        client.close()


def test_ping_is_answered_and_close_is_echoed(w, ws):
    client = ws()
    client.send(masked(PING, b'are you there'))
    frame = client.frame()
    while frame.opcode == TEXT:     # (the stats of a new client)
        frame = client.frame()
    assert frame == Frame(True, PONG, b'are you there')
    client.send(masked(CLOSE, struct.pack('!H', 1000)))
    assert client.closed_with() == 1000
    assert client.eof()
    wait_for_clients(w.controller.server.web_server.events, 0)


def test_frames_sent_with_the_handshake_are_read(w):
    # A client that does not wait for the 101 (RFC 6455 says it must):
    # its ping, in the same packet as the request, is still answered.
    parts = urllib.parse.urlsplit(w.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=WAIT) as sock:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b'GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n'
                     b'Connection: Upgrade\r\nSec-WebSocket-Key: ' + key +
                     b'\r\nSec-WebSocket-Version: 13\r\n\r\n' + masked(PING, b'early'))
        data = b''
        while encode_frame(PONG, b'early') not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk


@pytest.mark.parametrize('data, code', [
    (encode_frame(TEXT, b'unmasked'), 1002),
    (masked(TEXT, b'\xff\xfe'), 1007),
    (masked(TEXT, b'\xe2\x82', fin=False) + masked(CONTINUATION, b'('), 1007),
    (masked(CONTINUATION, b'x'), 1002),
    (masked(TEXT, b'a', fin=False) + masked(TEXT, b'b'), 1002),
    (masked(BINARY, b'x' * 70000), 1009),
    (masked(BINARY, b'x' * 40000, fin=False) + masked(CONTINUATION, b'x' * 40000), 1009),
    (masked(CLOSE, b'\x03'), 1002),
    (masked(CLOSE, struct.pack('!H', 999)), 1002),
    (masked(CLOSE, struct.pack('!H', 1000) + b'\xff'), 1007),
    (masked(TEXT, b'ok', rsv=0x40), 1002),
], ids=['unmasked', 'bad-utf8', 'bad-utf8-split', 'stray-continuation',
        'interleaved', 'too-big', 'too-big-in-pieces', 'short-close', 'bad-code',
        'bad-reason', 'rsv'])
def test_protocol_errors_close_with_their_code(w, ws, data, code):
    client = ws()
    client.send(data)
    assert client.closed_with() == code
    assert client.eof()
    # The server and the other clients carry on.
    other = ws()
    wait_for_clients(w.controller.server.web_server.events, 1)
    w.send(make_message(subject='still here'))
    assert other.event()['Data']['Subject'] == 'still here'


def test_valid_messages_in_pieces_are_ignored(w, ws):
    client = ws()
    client.send(masked(TEXT, '€'.encode()[:2], fin=False)
                + masked(PING, b'between')
                + masked(CONTINUATION, '€'.encode()[2:]))
    frame = client.frame()
    while frame.opcode == TEXT:
        frame = client.frame()
    assert frame == Frame(True, PONG, b'between')


@pytest.mark.parametrize('headers, version, status', [
    ([], b'8', b'426'),
    ([('Origin', 'http://evil.example')], b'13', b'403'),
])
def test_refused_handshakes(w, headers, version, status):
    client = WSClient(w.url, headers=headers, version=version)
    try:
        assert client.status_line.split()[1] == status
        if status == b'426':
            assert client.headers['sec-websocket-version'] == '13'
    finally:
        client.close()


def test_a_plain_get_is_400_in_plain_text(w):
    status, headers, body = w.request('/api/events')
    assert status == 400 and headers['Content-Type'].startswith('text/plain')


def test_clients_are_capped(w):
    hub = w.controller.server.web_server.events
    hub.max_clients = 2
    clients = [WSClient(w.url) for _ in range(2)]
    try:
        wait_for_clients(hub, 2)
        third = WSClient(w.url)
        assert third.status_line.split()[1] == b'503'
        third.close()
    finally:
        for client in clients:
            client.close()


def test_a_reader_that_does_not_read_is_dropped_and_costs_bounded_memory(w):
    hub = w.controller.server.web_server.events
    hub.max_pending = 64 * 1024
    parts = urllib.parse.urlsplit(w.url)
    sock = socket.socket()
    # A tiny receive window, and we never read: the server's sends stall.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b'GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n'
                 b'Connection: Upgrade\r\nSec-WebSocket-Key: ' + key +
                 b'\r\nSec-WebSocket-Version: 13\r\n\r\n')
    try:
        reader = WSClient(w.url)
        wait_for_clients(hub, 2)
        big = 'x' * 4000
        for i in range(900):
            w.controller.server.inbox.add(make_message(subject='%d %s' % (i, big)).as_bytes())
            client_pending = [c.pending for c in hub._clients.values()]
            assert all(p <= hub.max_pending for p in client_pending)
            if hub.clients == 1:
                break
        wait_for_clients(hub, 1)
        # The reader that reads got every event, and SMTP still works.
        subjects = []
        while len(subjects) <= i:
            subjects.append(reader.event()['Data']['Subject'].split()[0])
        assert subjects == [str(n) for n in range(i + 1)]
        w.send(make_message(subject='smtp'))
        assert reader.event()['Data']['Subject'] == 'smtp'
        reader.close()
    finally:
        sock.close()


def test_the_listener_is_quick_without_clients():
    inbox = Inbox()
    io = IOThread()
    hub = events.Hub(inbox, io)
    try:
        inbox.add(b'Subject: x\r\n\r\ny\r\n')
        # Nothing queued, nothing handed to the IOThread.
        assert not hub._changes and not io._ready
    finally:
        hub.close()
        io.stop()


def test_the_io_thread_never_parses_a_new_message(monkeypatch):
    # The thread that serves every socket of the page does not make a new
    # message's summary for its event: the inbox's thread does (here one
    # of an inbox that does not ingest by itself, as a test's Mailbox),
    # and the events wait for it, in order.
    summarised_on = []
    summarise = store.summarise

    def recording(message, *args):
        # (Other tests' inboxes may still be ingesting in this process.)
        if b'\nX-Hub-Test: 1' in message.raw:
            summarised_on.append(threading.current_thread())
        return summarise(message, *args)

    monkeypatch.setattr(store, 'summarise', recording)
    inbox = Inbox(ingest=False)
    server = WebServer(('127.0.0.1', 0), inbox).start()
    client = WSClient(server.url)
    try:
        wait_for_clients(server.events, 1)
        first = inbox.add(make_message(subject='first', X_Hub_Test='1').as_bytes(),
                          'a@example.org', ['b@example.org'])
        inbox.delete([first.id])
        inbox.add(make_message(subject='second', X_Hub_Test='1').as_bytes(),
                  'a@example.org', ['b@example.org'])
        got = [client.event() for _ in range(3)]
        assert [(e['Type'], e['Data'].get('Subject')) for e in got] == [
            ('new', 'first'), ('delete', None), ('new', 'second')]
        assert got[1]['Data'] == {'ID': first.id}
        io_thread = server.events.io._thread
    finally:
        client.close()
        server.stop()
        inbox.close()
    assert len(summarised_on) == 2 and io_thread not in summarised_on


def test_one_thread_waits_on_the_connections_and_the_websockets(w, ws):
    # One mechanism for one job: the events hub has no thread, selector
    # or wake-up of its own; the HTTP side's IOThread serves its clients.
    client = ws()
    hub = w.controller.server.web_server.events
    wait_for_clients(hub, 1)
    w.send(make_message(subject='one thread'))
    assert client.event()['Data']['Subject'] == 'one thread'
    assert hub.io is w.controller.server.web_server._server.io
    assert hub.io._thread.is_alive()
    names = [t.name for t in threading.enumerate()]
    assert 'smtpd_compat web events' not in names
    assert not any(hasattr(hub, name) for name in ('_thread', '_selector', '_wake_r'))


def test_closing_the_server_says_going_away(inbox_web):
    web = inbox_web()
    client = WSClient(web.url)
    wait_for_clients(web.controller.server.web_server.events, 1)
    web.controller.stop()
    assert client.closed_with() == 1001
    client.close()


# ---------------------------------------------------------------------------
# a client library that listens for Mailpit's events

NODE_SCRIPT = r'''
const { MailpitClient } = require('mailpit-api');
const mailpit = new MailpitClient(process.argv[2]);
mailpit.onEvent('*', (event) => { console.log(JSON.stringify(event)); });
const ready = setInterval(() => {
  if (mailpit.webSocket && mailpit.webSocket.readyState === 1) {
    clearInterval(ready);
    console.log('READY');
  }
}, 10);
process.stdin.on('data', () => { mailpit.disconnect(); process.exit(0); });
'''


def node_environment():
    """The environment for npm and node: Node.js reads only its own bundled
    CA list unless NODE_EXTRA_CA_CERTS names more, so where the machine's
    trust store is given to Python and curl as SSL_CERT_FILE (tox passes
    that on), Node.js is given it too; otherwise npm cannot reach a
    registry behind a TLS-inspecting proxy and hangs until the timeout."""
    env = dict(os.environ)
    if 'NODE_EXTRA_CA_CERTS' not in env and env.get('SSL_CERT_FILE'):
        env['NODE_EXTRA_CA_CERTS'] = env['SSL_CERT_FILE']
    return env


def npm_install(tmp_path_factory, *packages):
    """A folder with these npm packages installed (skipped without npm or
    the registry; a failure under SMTPD_COMPAT_REQUIRE_TOOLS=1)."""
    npm = require_tool('npm')
    require_tool('node')
    folder = tmp_path_factory.mktemp('npm')
    proc = subprocess.run([npm, 'install', '--no-audit', '--no-fund', '--silent',
                           '--prefix', str(folder)] + list(packages),
                          capture_output=True, text=True, timeout=300,
                          env=node_environment())
    if proc.returncode != 0:
        message = 'npm install %s failed: %s' % (' '.join(packages), proc.stderr[-500:])
        if REQUIRE_TOOLS:
            pytest.fail(message)
        pytest.skip(message)
    return folder


def test_mailpit_api_event_listener(w, tmp_path_factory):
    folder = npm_install(tmp_path_factory, 'mailpit-api@1.9.1')
    script = folder / 'listen.js'
    script.write_text(NODE_SCRIPT)
    with subprocess.Popen(['node', str(script), w.url.rstrip('/')], cwd=folder,
                          env=node_environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        listen(w, proc)


def listen(w, proc):
    try:
        assert proc.stdout.readline().strip() == 'READY'
        w.send(make_message(subject='for node'))
        seen = {}
        while 'new' not in seen or 'stats' not in seen:
            event = json.loads(proc.stdout.readline())
            seen.setdefault(event['Type'], event)
        assert seen['new']['Data']['Subject'] == 'for node'
        assert seen['new']['Data']['From'] == {'Name': 'Ann Example',
                                               'Address': 'ann@example.org'}
        assert seen['stats']['Data']['Total'] == 1
        w.request('/api/v1/messages', method='DELETE')
        while json.loads(proc.stdout.readline())['Type'] != 'truncate':
            pass
    finally:
        proc.stdin.write('stop\n')
        proc.stdin.flush()
        proc.wait(WAIT)

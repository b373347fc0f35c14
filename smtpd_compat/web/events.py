"""Live events: Mailpit's ``/api/events`` websocket (RFC 6455), on the
standard library.

Every change of the inbox reaches the connected clients as Mailpit's JSON
text messages, ``{"Type": ..., "Data": ...}``:

=============  ==============================================================
``new``        a message arrived: its summary (as in the list)
``stats``      ``{"Total", "Unread", "Version"}``, at most four a second
``update``     ``{"ID", "Read"}`` or ``{"ID", "Tags"}`` for a changed message
``delete``     ``{"ID"}`` for a deleted message (also one the inbox's bounds
               dropped)
``truncate``   everything was deleted (``Data`` null)
``prune``      many changed at once, or tag names did: reload (``Data``
               null)
=============  ==============================================================

The events come from the store's listeners (:meth:`Inbox.subscribe`), never
from polling.  The listener runs on whichever thread changed the inbox --
the SMTP loop too -- so it only appends to a bounded queue and, when that
was empty, hands the queue to the web side's
:class:`~smtpd_compat.web.transport.IOThread`, the thread that serves the
HTTP connections too; there each event is encoded once and written to
every client, without blocking, in the order of the changes.  That thread
never parses: a new message's event waits for its summary, which the
inbox's thread makes (:meth:`Inbox.when_summarised`).

Bounds: at most ``max_clients`` connections (more get 503); each client's
unsent output is at most ``max_pending`` bytes and must move within
``write_timeout`` seconds, else the client is dropped (Mailpit's page
reconnects and reloads), so a slow reader costs a bounded amount of memory
and never holds up anyone else; a client's message is at most
``max_message`` bytes (more: close 1009); a client silent for
``idle_timeout`` seconds, pinged after ``ping_interval``, is dropped.
What clients send is read (pings are answered, close is echoed) and
otherwise ignored, as Mailpit ignores it.

States of a connection: open (frames parsed, events sent), closing (our
close frame is queued; the socket is closed once it has gone out, or after
``write_timeout``), closed.  The frame parser (:func:`parse_frame`) is
sans-IO: bytes in, a frame or None ("more bytes needed") out.
"""
import base64
import codecs
import collections
import functools
import hashlib
import json
import logging
import selectors
import socket
import struct
import threading
import time
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Protocol, Tuple, Union

from smtpd_compat.web.api import VERSION_TEXT, BadRequest, HTTPError, Request, message_summary
from smtpd_compat.web.store import Inbox, StoredMessage
from smtpd_compat.web.transport import EventHandler, IOThread

__all__ = ['Frame', 'ProtocolError', 'parse_frame', 'encode_frame', 'accept_key',
           'Hub', 'get_events', 'GUID']

log = logging.getLogger(__name__)

#: RFC 6455 section 1.3: appended to the client's key for the accept key.
GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = {CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG}
# RFC 6455 section 7.4: the close codes a peer may send.
_CLOSE_CODES = set(range(1000, 1004)) | set(range(1007, 1012)) | set(range(3000, 5000))
# More changes than this waiting for the hub: drop them, send "prune".
_MAX_CHANGES = 10000
# Per-ID events of one change beyond this: one "prune" instead.
_MAX_IDS = 200
_STATS_DELAY = 0.25


class Frame(NamedTuple):
    """One websocket frame: ``fin``, ``opcode``, the (unmasked) payload."""

    fin: bool
    opcode: int
    payload: bytes


class ProtocolError(Exception):
    """The peer broke RFC 6455: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _unmask(data: bytes, mask: bytes) -> bytes:
    # XOR with the repeated 4-byte key, as one big integer (linear time).
    if not data:
        return b''
    key = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, 'big') ^ int.from_bytes(key, 'big')).to_bytes(
        len(data), 'big')


def parse_frame(data: Union[bytes, bytearray, memoryview], max_payload: int,
                masked: bool = True) -> Optional[Tuple[Frame, int]]:
    """The frame at the start of ``data`` and how many bytes it took, or
    None when ``data`` ends before the frame does.  ProtocolError for what
    RFC 6455 section 5 forbids: reserved bits (no extension is agreed),
    an unknown opcode, a fragmented or long (over 125 bytes) control frame,
    a length not in its shortest form or with the top bit set, an unmasked
    frame from a client (``masked``); a payload over ``max_payload`` is
    1009.  Trailing bytes are left for the next call."""
    if len(data) < 2:
        return None
    first, second = data[0], data[1]
    fin, opcode = bool(first & 0x80), first & 0x0F
    if first & 0x70:
        raise ProtocolError(1002, 'reserved bits set')
    if opcode not in _OPCODES:
        raise ProtocolError(1002, 'unknown opcode %d' % opcode)
    length = second & 0x7F
    if opcode >= CLOSE and (not fin or length > 125):
        raise ProtocolError(1002, 'control frames must be whole and short')
    at = 2
    if length == 126:
        if len(data) < 4:
            return None
        length = struct.unpack('!H', bytes(data[2:4]))[0]
        at = 4
        if length < 126:
            raise ProtocolError(1002, 'length not in its shortest form')
    elif length == 127:
        if len(data) < 10:
            return None
        length = struct.unpack('!Q', bytes(data[2:10]))[0]
        at = 10
        if length >> 63 or length < 65536:
            raise ProtocolError(1002, 'invalid 64-bit length')
    if length > max_payload:
        raise ProtocolError(1009, 'message too big')
    if bool(second & 0x80) != masked:
        raise ProtocolError(1002, 'client frames must be masked' if masked
                            else 'server frames must not be masked')
    if masked:
        if len(data) < at + 4 + length:
            return None
        mask = bytes(data[at:at + 4])
        at += 4
        payload = _unmask(bytes(data[at:at + length]), mask)
    else:
        if len(data) < at + length:
            return None
        payload = bytes(data[at:at + length])
    return Frame(fin, opcode, payload), at + length


def encode_frame(opcode: int, payload: bytes = b'') -> bytes:
    """A whole, unmasked frame (what a server sends, RFC 6455 section
    5.1)."""
    n = len(payload)
    if n < 126:
        head = struct.pack('!BB', 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack('!BBH', 0x80 | opcode, 126, n)
    else:
        head = struct.pack('!BBQ', 0x80 | opcode, 127, n)
    return head + payload


def _close_frame(code: int, reason: str = '') -> bytes:
    return encode_frame(CLOSE, struct.pack('!H', code) + reason.encode('utf-8')[:120])


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client's key (RFC 6455
    section 4.2.2)."""
    digest = hashlib.sha1((key + GUID).encode('ascii')).digest()
    return base64.b64encode(digest).decode('ascii')


# ---------------------------------------------------------------------------
# One client

class _Client:
    """A connection's state, used by the IOThread only."""

    def __init__(self, sock: socket.socket, address: Any, now: float) -> None:
        self.sock = sock
        self.address = address
        #: What the IOThread calls when the socket is ready.
        self.handler: EventHandler = lambda mask: None
        self.inbuf = bytearray()
        self.out: Deque[memoryview] = collections.deque()
        self.pending = 0
        self.last_input = now
        self.last_output = now
        self.pinged = False
        self.closing = False
        # A fragmented message being received: its opcode, size, decoder.
        self.message_opcode: Optional[int] = None
        self.message_size = 0
        self.decoder: Optional[codecs.IncrementalDecoder] = None


class _Upgradable(Request, Protocol):
    """What the upgrade uses of a request besides :class:`Request`."""

    connection: socket.socket
    rfile: Any
    request_version: str
    close_connection: bool

    @property
    def events(self) -> 'Hub': ...


class Hub:
    """The event stream of one inbox to its websocket clients, served by
    ``io`` (the IOThread of the HTTP connections; see the module's
    description for the bounds)."""

    def __init__(self, inbox: Inbox, io: IOThread, max_clients: int = 64,
                 max_pending: int = 1024 * 1024, max_message: int = 64 * 1024,
                 write_timeout: float = 30.0, ping_interval: float = 30.0,
                 idle_timeout: float = 75.0) -> None:
        self.inbox = inbox
        self.io = io
        self.max_clients = max_clients
        self.max_pending = max_pending
        self.max_message = max_message
        self.write_timeout = write_timeout
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        # Changes not yet turned into events (a call to take them is on
        # its way to the IOThread while this is not empty).
        self._changes: Deque[Tuple[str, Any]] = collections.deque()
        self._overflow = False
        # The IOThread's: changes taken, in order, not yet sent (the first
        # may be a new message waiting for its summary), and the message
        # whose summary the inbox's thread is asked to make.
        self._backlog: Deque[Tuple[str, Any]] = collections.deque()
        self._asked: Optional[StoredMessage] = None
        self._waiting = False
        self._adopted: Dict[socket.socket, Tuple[Any, bytes]] = {}
        self._clients: Dict[socket.socket, _Client] = {}
        self._count = 0         # clients, adopted or served
        self._closed = False
        self._stats_due = False
        self._ticking = False
        inbox.subscribe(self._on_change)

    # -- any thread ----------------------------------------------------------

    @property
    def clients(self) -> int:
        """How many clients are connected."""
        return self._count

    def owns(self, sock: socket.socket) -> bool:
        """Is this connection a websocket of the hub's (so the HTTP server
        must not close it)?"""
        with self._lock:
            return sock in self._adopted or sock in self._clients

    def _on_change(self, kind: str, data: Any) -> None:
        # The inbox's listener: on the thread that changed it (the SMTP
        # loop too), under its lock.  Only a bounded append, and a call
        # handed to the IOThread when there was nothing queued.
        if not self._count:
            return
        with self._lock:
            if len(self._changes) >= _MAX_CHANGES:
                self._overflow = True
                self._changes.clear()
            first = not self._changes and not self._overflow
            self._changes.append((kind, data))
        if first:
            self.io.call_soon(self._take_changes)

    def adopt(self, sock: socket.socket, address: Any, leftover: bytes = b'') -> bool:
        """Take over a connection whose handshake was answered; False when
        the hub is full or closed (the caller answers 503)."""
        with self._lock:
            if self._closed or self._count >= self.max_clients:
                return False
            self._count += 1
            self._adopted[sock] = (address, leftover)
        if not self.io.call_soon(self._take_adopted):
            with self._lock:
                self._adopted.pop(sock, None)
                self._count -= 1
            return False
        return True

    def has_room(self) -> bool:
        with self._lock:
            return not self._closed and self._count < self.max_clients

    def close(self) -> None:
        """Say goodbye (1001) to every client; the hub takes no more."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.inbox.unsubscribe(self._on_change)
        self.io.call(self._goodbye)

    # -- the IOThread -------------------------------------------------------------

    def _goodbye(self) -> None:
        self._backlog.clear()
        for client in list(self._clients.values()):
            try:
                client.sock.send(_close_frame(1001, 'server going away'))
            except OSError:
                pass
            self._drop(client)
        with self._lock:
            adopted, self._adopted = list(self._adopted), {}
            self._count -= len(adopted)
        for sock in adopted:
            sock.close()

    def _take_adopted(self) -> None:
        with self._lock:
            adopted = list(self._adopted.items())
        now = time.monotonic()
        for sock, (address, leftover) in adopted:
            client = _Client(sock, address, now)
            client.handler = functools.partial(self._on_event, client)
            sock.setblocking(False)
            with self._lock:
                if self._adopted.pop(sock, None) is None:
                    continue        # said goodbye to already
                self._clients[sock] = client
            self.io.register(sock, selectors.EVENT_READ, client.handler)
            if not self._ticking:
                self._ticking = True
                self.io.call_later(1.0, self._tick)
            # Mailpit sends the stats to a new client.
            self._schedule_stats()
            if leftover:
                self._received(client, leftover)

    def _on_event(self, client: _Client, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                self._read(client)
            if mask & selectors.EVENT_WRITE and client.sock in self._clients:
                self._flush(client)
        except Exception:
            log.exception('web inbox: events client %s failed', client.address)
            self._drop(client)

    def _take_changes(self) -> None:
        with self._lock:
            changes = list(self._changes)
            self._changes.clear()
            overflow, self._overflow = self._overflow, False
        if overflow or len(self._backlog) + len(changes) > _MAX_CHANGES:
            # Too many to tell one by one: the clients reload.
            self._backlog.clear()
            self._broadcast('prune', None)
        self._backlog.extend(changes)
        self._send_backlog()

    def _send_backlog(self) -> None:
        # The events, in order.  A new message's waits until its summary
        # is made, by the inbox's thread (at ingest, or asked here): this
        # thread serves every socket of the page, and never parses.
        while self._backlog and not self._waiting:
            if not self._clients:
                self._backlog.clear()
                return
            kind, data = self._backlog[0]
            if kind == 'new' and data._summary is None and data is not self._asked:
                self._asked = data
                self._waiting = True
                self.inbox.when_summarised(data, self._summarised)
                continue
            self._backlog.popleft()
            self._asked = None
            if kind == 'new' and data._summary is None:
                continue    # (the inbox was closed before it was made)
            self._event(kind, data)

    def _summarised(self) -> None:
        # Any thread: the summary asked for is made.
        self.io.call_soon(self._resume)

    def _resume(self) -> None:
        self._waiting = False
        self._send_backlog()

    def _event(self, kind: str, data: Any) -> None:
        if kind == 'new':
            assert isinstance(data, StoredMessage)
            summary = message_summary(self.inbox, data)
            # Mailpit sends an empty address, not null, in this event.
            summary['From'] = summary['From'] or {'Name': '', 'Address': ''}
            self._broadcast('new', summary)
        elif kind in ('truncate', 'prune'):
            self._broadcast(kind, None)
        elif len(data) > _MAX_IDS:
            self._broadcast('prune', None)
        elif kind == 'delete':
            for id in data:
                self._broadcast('delete', {'ID': id})
        elif kind == 'read':
            for id, read in data:
                self._broadcast('update', {'ID': id, 'Read': read})
        elif kind == 'tags':
            for id, tags in data:
                self._broadcast('update', {'ID': id, 'Tags': tags})
        if kind != 'prune':
            self._schedule_stats()

    def _schedule_stats(self) -> None:
        # At most one stats event each _STATS_DELAY, after changes.
        if not self._stats_due:
            self._stats_due = True
            self.io.call_later(_STATS_DELAY, self._send_stats)

    def _send_stats(self) -> None:
        self._stats_due = False
        if not self._clients:
            return
        stats = self.inbox.stats()
        self._broadcast('stats', {'Total': stats['total'], 'Unread': stats['unread'],
                                  'Version': VERSION_TEXT})

    def _tick(self) -> None:
        # Each second while there are clients: the timeouts and pings.
        if not self._clients:
            self._ticking = False
            return
        self.io.call_later(1.0, self._tick)
        self._check_timers(time.monotonic())

    def _broadcast(self, kind: str, data: Any) -> None:
        text = json.dumps({'Type': kind, 'Data': data}, separators=(',', ':'))
        frame = encode_frame(TEXT, text.encode('utf-8'))
        for client in list(self._clients.values()):
            if not client.closing:
                self._queue(client, frame)

    def _queue(self, client: _Client, frame: bytes) -> None:
        if client.pending + len(frame) > self.max_pending:
            # A reader this slow would pin ever more memory: drop it.
            log.info('web inbox: dropping a slow events client %s', client.address)
            self._drop(client)
            return
        if not client.pending:
            client.last_output = time.monotonic()
        client.out.append(memoryview(frame))
        client.pending += len(frame)
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        while client.out:
            try:
                sent = client.sock.send(client.out[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return
            client.pending -= sent
            client.last_output = time.monotonic()
            if sent == len(client.out[0]):
                client.out.popleft()
            else:
                client.out[0] = client.out[0][sent:]
        if not client.out and client.closing:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        self.io.modify(client.sock, events, client.handler)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b''
        if not data:
            self._drop(client)
            return
        self._received(client, data)

    def _received(self, client: _Client, data: bytes) -> None:
        client.last_input = time.monotonic()
        client.pinged = False
        if client.closing:
            return      # after our close frame, input is discarded
        client.inbuf += data
        view = memoryview(client.inbuf)
        at = 0
        try:
            while True:
                parsed = parse_frame(view[at:], self.max_message)
                if parsed is None:
                    break
                frame, used = parsed
                at += used
                self._frame(client, frame)
                if client.closing or client.sock not in self._clients:
                    break
        except ProtocolError as e:
            view.release()
            self._close(client, e.code, str(e))
            return
        view.release()
        del client.inbuf[:at]

    def _frame(self, client: _Client, frame: Frame) -> None:
        if frame.opcode == PING:
            self._queue(client, encode_frame(PONG, frame.payload))
        elif frame.opcode == PONG:
            pass
        elif frame.opcode == CLOSE:
            code, reason = 1000, ''
            if len(frame.payload) == 1:
                raise ProtocolError(1002, 'invalid close frame')
            if frame.payload:
                code = struct.unpack('!H', frame.payload[:2])[0]
                if code not in _CLOSE_CODES:
                    raise ProtocolError(1002, 'invalid close code')
                try:
                    reason = frame.payload[2:].decode('utf-8')
                except UnicodeDecodeError:
                    raise ProtocolError(1007, 'invalid UTF-8 in close reason') from None
            # (The reason is only checked: the echo carries the code.)
            del reason
            self._close(client, code, '')
        else:
            self._data(client, frame)

    def _data(self, client: _Client, frame: Frame) -> None:
        # Messages are read (size, UTF-8 of text) and then ignored.
        if frame.opcode == CONTINUATION:
            if client.message_opcode is None:
                raise ProtocolError(1002, 'continuation of no message')
        else:
            if client.message_opcode is not None:
                raise ProtocolError(1002, 'a new message inside a fragmented one')
            client.message_opcode = frame.opcode
            client.message_size = 0
            client.decoder = (codecs.getincrementaldecoder('utf-8')('strict')
                              if frame.opcode == TEXT else None)
        client.message_size += len(frame.payload)
        if client.message_size > self.max_message:
            raise ProtocolError(1009, 'message too big')
        if client.decoder is not None:
            try:
                client.decoder.decode(frame.payload, final=frame.fin)
            except UnicodeDecodeError:
                raise ProtocolError(1007, 'invalid UTF-8 in a text message') from None
        if frame.fin:
            client.message_opcode = None
            client.decoder = None

    def _close(self, client: _Client, code: int, reason: str) -> None:
        """Queue our close frame; the socket closes once it has gone."""
        if client.closing or client.sock not in self._clients:
            return
        frame = _close_frame(code, reason)
        client.out.clear()
        client.pending = 0
        client.closing = True
        client.last_output = time.monotonic()
        client.out.append(memoryview(frame))
        client.pending = len(frame)
        self._flush(client)

    def _drop(self, client: _Client) -> None:
        with self._lock:
            if self._clients.pop(client.sock, None) is None:
                return
            self._count -= 1
        self.io.unregister(client.sock)
        try:
            client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.sock.close()
        client.out.clear()
        client.inbuf = bytearray()

    def _check_timers(self, now: float) -> None:
        for client in list(self._clients.values()):
            if client.out and now - client.last_output > self.write_timeout:
                self._drop(client)      # output that does not move
            elif client.closing:
                continue
            elif now - client.last_input > self.idle_timeout:
                self._close(client, 1001, 'idle')
            elif now - client.last_input > self.ping_interval and not client.pinged:
                client.pinged = True
                self._queue(client, encode_frame(PING))


# ---------------------------------------------------------------------------
# The route

def _tokens(value: Optional[str]) -> List[str]:
    return [t.strip().lower() for t in (value or '').split(',')]


def get_events(h: _Upgradable) -> None:
    """``GET /api/events``: the opening handshake (RFC 6455 section 4.2),
    then the connection belongs to the hub."""
    headers = h.headers
    if 'websocket' not in _tokens(headers.get('Upgrade')) \
            or 'upgrade' not in _tokens(headers.get('Connection')):
        raise BadRequest('websocket: the client is not using the websocket protocol')
    if h.request_version < 'HTTP/1.1':
        raise BadRequest('websocket: HTTP/1.1 or later is needed')
    if (headers.get('Sec-WebSocket-Version') or '').strip() != '13':
        raise _UpgradeRequired('websocket: unsupported version (13 is)',
                               headers=[('Sec-WebSocket-Version', '13')])
    key = (headers.get('Sec-WebSocket-Key') or '').strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise BadRequest("websocket: 'Sec-WebSocket-Key' is missing or invalid")
    hub = h.events
    if not hub.has_room():
        raise _Unavailable('too many event listeners')
    h.connection.sendall(
        b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n'
        b'Connection: Upgrade\r\nSec-WebSocket-Accept: '
        + accept_key(key).encode('ascii') + b'\r\n\r\n')
    # Bytes the client sent after its handshake and the HTTP server read
    # ahead go with the connection.
    h.connection.setblocking(False)
    try:
        leftover = h.rfile.read1(65536) or b''
    except (BlockingIOError, OSError, ValueError):
        leftover = b''
    h.close_connection = True
    if not hub.adopt(h.connection, h.client_address, leftover):
        h.connection.setblocking(True)
        h.connection.sendall(_close_frame(1013, 'try again later'))


class _UpgradeRequired(HTTPError):
    status = 426


class _Unavailable(HTTPError):
    status = 503

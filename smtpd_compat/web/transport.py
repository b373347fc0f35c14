"""The inbox's HTTP connections: a bounded number of them, served by a
bounded number of threads, with timeouts, and responses streamed.

One thread (the *connection thread*, an :class:`IOThread`) owns every
connection that is not being answered: it accepts, reads request heads
with non-blocking sockets, enforces the caps and timeouts, and writes
responses as the client takes them.  It is the one thread of the web side
that waits on sockets: the live events' websockets
(:mod:`smtpd_compat.web.events`) are served by it too.  A small pool of *workers* answers requests: a worker
gets a connection whose request head is complete, runs the handler
(which may read a request body, with a deadline) and hands back a
:class:`Response`: its head, and a body of bytes, of text, or of chunks
made as they are sent.  So

* a client that connects and sends nothing, or drips its request a byte
  at a time, costs a socket and a buffer, never a thread, and is dropped
  after :attr:`Server.header_timeout` (from its first byte) or
  :attr:`Server.idle_timeout` (a kept-alive connection with no request);
* a client that reads its response slowly costs the socket and the
  chunk being sent (the body is produced a chunk at a time, from data
  the inbox shares), never a thread; it is dropped when it takes nothing
  for :attr:`Server.io_timeout` seconds;
* at most :attr:`Server.max_connections` connections are open; at the
  cap, a new one takes the place of the one that has waited longest
  without sending a whole request, or, when all are being answered, gets
  a short 503;
* at most :attr:`Server.threads` requests are answered at once; more wait
  in order.

Nothing is written to a client before its handler returned, so the
status of a response is decided before its first byte: an error in a
handler replaces whatever it had prepared by a whole error response.
"""
from __future__ import annotations

import collections
import functools
import heapq
import itertools
import json
import logging
import os
import queue
import selectors
import socket
import sys
import threading
import time
from typing import (
    Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union)

__all__ = [
    'IOThread', 'Server', 'Connection', 'Response', 'Stream', 'ResponseBody', 'DETACH',
    'json_chunks', 'RawJSON',
    'text_chunks', 'DEFAULT_MAX_CONNECTIONS', 'DEFAULT_THREADS',
    'HEADER_TIMEOUT', 'IDLE_TIMEOUT', 'IO_TIMEOUT', 'MAX_HEAD', 'CHUNK',
]

log = logging.getLogger(__name__)

#: Connections open at once.
DEFAULT_MAX_CONNECTIONS = 128
#: Requests answered at once (worker threads).  Few: they share the
#: interpreter (the GIL) with the SMTP loop, which waits longer for it the
#: more threads want it at once.
DEFAULT_THREADS = 2
#: Seconds a request head may take, from its first byte (or from the
#: connection, for its first request).
HEADER_TIMEOUT = 10.0
#: Seconds a kept-alive connection may wait for its next request.
IDLE_TIMEOUT = 30.0
#: Seconds without progress reading a request body or writing a
#: response before the connection is dropped.
IO_TIMEOUT = 30.0
#: Bytes of a request head (request line and headers).
MAX_HEAD = 64 * 1024
#: Bytes of a response body sent at a time.
CHUNK = 64 * 1024

# How often the connection thread looks for expired deadlines.
_SWEEP = 0.5
# Seconds a closing connection is read (and what comes discarded) after
# its last response, so that the close does not reset it while the
# client still sends (which could lose the response, RFC 9112 9.6).
_LINGER = 2.0
# How much nicer (lower CPU priority) workers are than the rest, on
# Linux: what they compute never crowds out the SMTP loop.
_WORKER_NICENESS = 5


#: What :meth:`IOThread.register` calls with the events that are ready
#: (``selectors.EVENT_READ`` and/or ``EVENT_WRITE``).
EventHandler = Callable[[int], None]


def _no_events(mask: int) -> None:
    pass


class _Timer:
    """A call :meth:`IOThread.call_later` scheduled; ``cancel()`` withdraws
    it."""

    __slots__ = ('when', 'callback', 'cancelled')

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class IOThread:
    """One thread that waits on sockets for the web side: one selector,
    one wake-up, the calls other threads hand it, and timers.

    The HTTP connections that wait (:class:`Server`) and the websockets of
    the live events (:class:`smtpd_compat.web.events.Hub`) are served by
    one IOThread: sockets are non-blocking, and a handler does a bounded
    amount of work each time it is called, so no socket waits on another.
    The SMTP loop, the workers and the inbox's listeners reach it only
    through :meth:`call_soon`.

    :meth:`register`, :meth:`modify`, :meth:`unregister` and
    :meth:`call_later` are for the thread itself (the handlers and the
    calls it runs); :meth:`call_soon`, :meth:`start` and :meth:`stop` for
    any thread.  An exception in a handler or a call is logged and the
    thread goes on.
    """

    def __init__(self, name: str = 'smtpd_compat web') -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ready: Deque[Callable[[], object]] = collections.deque()
        self._timers: List[Tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        # 'new', 'running', 'stopping' (the thread ends after this pass),
        # 'stopped' (calls are refused).
        self._state = 'new'

    # -- any thread ---------------------------------------------------------

    def start(self) -> None:
        """Start the thread (once)."""
        with self._lock:
            if self._state != 'new':
                return
            self._state = 'running'
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """Does the thread serve (or will it, once started)?  False once
        :meth:`stop` was called."""
        return self._state in ('new', 'running')

    def in_thread(self) -> bool:
        """Is the caller the thread itself?"""
        return self._thread is threading.current_thread()

    def call_soon(self, callback: Callable[[], object]) -> bool:
        """Run ``callback()`` on the thread, soon (in the order asked);
        False when the thread is stopping or stopped (it will not run)."""
        with self._lock:
            if self._state not in ('new', 'running'):
                return False
            self._ready.append(callback)
        self._wake()
        return True

    def call(self, callback: Callable[[], object], timeout: float = 30.0) -> None:
        """Run ``callback()`` on the thread and wait until it has run (or
        at once, here, when the thread is not serving: never started,
        stopped, or the caller itself)."""
        if self.in_thread() or self._thread is None:
            callback()
            return
        done = threading.Event()

        def run() -> None:
            try:
                callback()
            finally:
                done.set()
        if not self.call_soon(run):
            callback()
            return
        if not done.wait(timeout):
            log.warning('web: %s did not run a call within %s s', self.name, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread after the calls already asked for, and close the
        selector and the wake-up.  (What is registered is its owners' to
        close first.)"""
        with self._lock:
            if self._state == 'stopped':
                return
            started = self._state == 'running'
            self._state = 'stopping'
        self._wake()
        thread = self._thread
        if started and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self._state = 'stopped'
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b'\0')
        except OSError:
            pass    # a wake-up is pending already (the buffer is full), or closed

    # -- the thread ---------------------------------------------------------

    def register(self, sock: socket.socket, events: int, handler: EventHandler) -> None:
        """Call ``handler(events)`` when ``sock`` is ready for ``events``."""
        self._selector.register(sock, events, handler)

    def modify(self, sock: socket.socket, events: int, handler: EventHandler) -> None:
        """Change what ``sock`` waits for (a no-op when it is that already)."""
        key = self._selector.get_key(sock)
        if key.events != events or key.data is not handler:
            self._selector.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> None:
        """Stop waiting on ``sock`` (not registered: nothing happens)."""
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Timer:
        """Run ``callback()`` on the thread after ``delay`` seconds."""
        timer = _Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def _run(self) -> None:
        while self._state == 'running' or self._ready:
            timeout: Optional[float] = None
            if self._ready:
                timeout = 0.0
            elif self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                events = self._selector.select(timeout)
            except OSError:
                if self._state != 'running':
                    break
                raise
            for key, mask in events:
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                self._guard(functools.partial(key.data, mask))
            with self._lock:
                ready, self._ready = self._ready, collections.deque()
            for callback in ready:
                self._guard(callback)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                if not timer.cancelled:
                    self._guard(timer.callback)

    def _guard(self, callback: Callable[[], object]) -> None:
        try:
            callback()
        except Exception:
            log.exception('web: %s: an error in %r', self.name, callback)


class Stream:
    """A response body made as it is sent: ``chunks`` of bytes, and their
    total ``length`` when known (then sent with a Content-Length)."""

    __slots__ = ('chunks', 'length')

    def __init__(self, chunks: Iterable[bytes], length: Optional[int] = None) -> None:
        self.chunks = chunks
        self.length = length


#: What a handler may answer with: bytes, text (sent as UTF-8, a slice at
#: a time), or a :class:`Stream`.
ResponseBody = Union[bytes, str, Stream]


def text_chunks(text: str, size: int = CHUNK // 4) -> Iterator[bytes]:
    """``text`` as UTF-8, ``size`` characters at a time (a lone surrogate
    becomes '?')."""
    for i in range(0, len(text), size):
        yield text[i:i + size].encode('utf-8', 'replace')


_JSON = json.JSONEncoder(separators=(',', ':'), ensure_ascii=False)


class RawJSON:
    """A value of :func:`json_chunks` whose JSON text is made as it is
    sent, ``pieces`` of it at a time (a value in one of the top two levels:
    an item of a list that the response holds)."""

    __slots__ = ('pieces',)

    def __init__(self, pieces: Iterable[str]) -> None:
        self.pieces = pieces


def _json_pieces(value: Any, depth: int) -> Iterator[str]:
    # The top levels piece by piece, long strings a slice at a time;
    # the rest (small) by the C encoder in one go.
    if isinstance(value, RawJSON):
        yield from value.pieces
    elif isinstance(value, str) and len(value) > CHUNK // 4:
        yield '"'
        for i in range(0, len(value), CHUNK // 4):
            yield _JSON.encode(value[i:i + CHUNK // 4])[1:-1]
        yield '"'
    elif isinstance(value, dict) and depth < 2:
        yield '{'
        for i, (key, item) in enumerate(value.items()):
            yield (',' if i else '') + _JSON.encode(str(key)) + ':'
            yield from _json_pieces(item, depth + 1)
        yield '}'
    elif isinstance(value, (list, tuple)) and depth < 2:
        yield '['
        for i, item in enumerate(value):
            if i:
                yield ','
            yield from _json_pieces(item, depth + 1)
        yield ']'
    else:
        yield _JSON.encode(value)


def json_chunks(value: Any) -> Iterator[bytes]:
    """``value`` as compact UTF-8 JSON, about :data:`CHUNK` bytes at a
    time: a long string is never encoded (nor copied) whole."""
    pending: List[str] = []
    size = 0
    for piece in _json_pieces(value, 0):
        pending.append(piece)
        size += len(piece)
        if size >= CHUNK // 4:
            yield ''.join(pending).encode('utf-8', 'replace')
            pending, size = [], 0
    if pending:
        yield ''.join(pending).encode('utf-8', 'replace')


class Response:
    """What a worker hands back: the response ``head`` (status line and
    headers, encoded), the ``body`` (None for none, as for HEAD),
    whether it goes out ``chunked``, and whether the connection is to be
    closed after it.  (:data:`DETACH`: the handler gave the connection to
    someone else, a websocket hub: forget it, do not close it.)"""

    __slots__ = ('head', 'body', 'chunked', 'close')

    def __init__(self, head: bytes, body: Optional[ResponseBody] = None,
                 chunked: bool = False, close: bool = False) -> None:
        self.head = head
        self.body = body
        self.chunked = chunked
        self.close = close


#: The answer of a handler that took the connection over (it is no
#: longer the server's: not written to, not closed, not counted).
DETACH = Response(b'')


class _Reader:
    """The request's input for the handler in a worker: what the
    connection thread read already, then the socket (blocking, each read
    within the time left).  Only ``readline`` and ``read``, as
    :class:`http.server.BaseHTTPRequestHandler` and a body reader use."""

    def __init__(self, conn: Connection, timeout: float) -> None:
        self._conn = conn
        # The whole request (its body) within this.
        self._deadline = time.monotonic() + timeout
        #: Bytes taken from the input so far.
        self.consumed = 0

    def _fill(self) -> bool:
        sock = self._conn.sock
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout('the request took too long')
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            return False
        self._conn.inbuf += data
        return True

    def _take(self, n: int) -> bytes:
        buf = self._conn.inbuf
        data = bytes(buf[:n])
        del buf[:n]
        self.consumed += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        buf = self._conn.inbuf
        start = 0
        while True:
            nl = buf.find(b'\n', start)
            if nl >= 0 and (limit < 0 or nl < limit):
                return self._take(nl + 1)
            if 0 <= limit <= len(buf):
                return self._take(limit)
            start = len(buf)
            if not self._fill():
                return self._take(len(buf))

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise ValueError('read() needs a length here')
        while len(self._conn.inbuf) < n:
            if not self._fill():
                break
        return self._take(n)

    def read1(self, n: int = -1) -> bytes:
        """What was read already and not taken (at most ``n`` bytes):
        never waits.  (A websocket takes what came after its handshake.)"""
        return self._take(len(self._conn.inbuf) if n < 0 else n)

    def close(self) -> None:
        pass


class _Collector:
    """The handler's ``wfile``: what the standard library writes there
    itself (it should not; kept and sent before the response)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Connection:
    """One client connection.  ``inbuf`` is what was read and not yet
    consumed; the worker answering it uses :meth:`reader`."""

    __slots__ = ('sock', 'address', 'inbuf', 'scanned', 'state', 'deadline',
                 'out', 'body', 'chunked', 'close_after', 'sent', 'promised',
                 'requests', 'io_timeout', 'handler')

    def __init__(self, sock: socket.socket, address: Any, io_timeout: float) -> None:
        self.sock = sock
        self.address = address
        self.inbuf = bytearray()
        # How much of inbuf was looked at for the end of the head.
        self.scanned = 0
        #: 'head' (reading a request head), 'busy' (a worker has it),
        #: 'write' (its response is being sent), 'drain' (closing: what
        #: comes is discarded), 'done' (to close) or 'gone' (taken over).
        self.state = 'head'
        self.deadline = 0.0
        self.out = memoryview(b'')
        self.body: Optional[Iterator[bytes]] = None
        self.chunked = False
        self.close_after = False
        self.sent = 0
        self.promised: Optional[int] = None
        self.requests = 0
        self.io_timeout = io_timeout
        #: What the IOThread calls when its socket is ready (set by the
        #: server that accepted it).
        self.handler: EventHandler = _no_events

    def reader(self) -> _Reader:
        """The input of the request a worker answers (see :class:`_Reader`)."""
        return _Reader(self, self.io_timeout)

    def writer(self) -> _Collector:
        """The handler's ``wfile`` (see :class:`_Collector`)."""
        return _Collector()

    def head_complete(self) -> bool:
        """Is a whole request head in ``inbuf``?  (Looks at each byte
        about once, however the head arrives.)"""
        buf = self.inbuf
        # Blank lines before a request line are ignored (RFC 9112 2.2).
        start = 0
        while buf[start:start + 2] == b'\r\n' or buf[start:start + 1] == b'\n':
            start += 2 if buf[start:start + 1] == b'\r' else 1
        if start:
            del buf[:start]
            self.scanned = 0
        at = max(0, self.scanned - 3)
        self.scanned = len(buf)
        return buf.find(b'\n\n', at) >= 0 or buf.find(b'\n\r\n', at) >= 0


def _slices(data: bytes) -> Iterator[bytes]:
    # Views of ``data``, not copies.
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        yield view[i:i + CHUNK]  # type: ignore[misc, unused-ignore]  # (memoryview slicing: an error on some mypy versions only)


def _plain_response(status: bytes, text: bytes, *headers: bytes) -> bytes:
    """A whole response the connection thread sends itself (then closes):
    plain text, with the CSP and nosniff as every response."""
    return b''.join([b'HTTP/1.1 ', status, b'\r\n',
                     b'Content-Type: text/plain; charset=utf-8\r\n',
                     b'Content-Length: %d\r\n' % len(text),
                     b"Content-Security-Policy: default-src 'none'; sandbox\r\n",
                     b'X-Content-Type-Options: nosniff\r\n']
                    + [h + b'\r\n' for h in headers]
                    + [b'Connection: close\r\n\r\n', text])


_BUSY = _plain_response(b'503 Service Unavailable', b'Too many connections\n',
                        b'Retry-After: 1')
_TOO_LARGE = _plain_response(b'431 Request Header Fields Too Large',
                             b'Request header fields too large\n')


def _nice() -> None:
    if sys.platform.startswith('linux') and hasattr(threading, 'get_native_id'):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           min(19, os.getpriority(os.PRIO_PROCESS, 0) + _WORKER_NICENESS))
        except OSError:
            pass


class Server:
    """Serve the connections of a listening ``sock`` with ``handle``,
    which a worker calls with a :class:`Connection` whose request head is
    complete and which returns a :class:`Response` (or None to close the
    connection).  The connections that wait are served by ``io`` (its
    own :class:`IOThread` when not given)."""

    def __init__(self, sock: socket.socket,
                 handle: Callable[[Connection], Optional[Response]], *,
                 io: Optional[IOThread] = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 threads: int = DEFAULT_THREADS,
                 header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT,
                 io_timeout: float = IO_TIMEOUT,
                 name: str = 'smtpd_compat web') -> None:
        for label, value in (('max_connections', max_connections), ('threads', threads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError('%s must be a positive integer, not %r' % (label, value))
        self.sock = sock
        self.handle = handle
        self.max_connections = max_connections
        self.threads = threads
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout
        self.name = name
        sock.setblocking(False)
        # (A thread of its own when none is shared: then it is ours to stop.)
        self._own_io = io is None
        self.io = IOThread(name) if io is None else io
        self._conns: Dict[int, Connection] = {}
        self._jobs: 'queue.SimpleQueue[Optional[Connection]]' = queue.SimpleQueue()
        self._workers: List[threading.Thread] = []
        self._sweeper: Optional[_Timer] = None
        self._stopping = False
        self._lock = threading.Lock()

    # -- life --------------------------------------------------------------

    def start(self) -> None:
        """Accept and serve (from the IOThread, started here if it is not
        yet)."""
        self.io.call_soon(self._listen)
        self.io.start()

    def _listen(self) -> None:
        self.io.register(self.sock, selectors.EVENT_READ, self._on_listener)
        self._sweeper = self.io.call_later(_SWEEP, self._sweep)

    def stop(self) -> None:
        """Stop accepting, close every connection (a request being
        answered is closed when its worker is done), end the workers (and
        the IOThread, when it is the server's own)."""
        self._stopping = True
        self.io.call(self._close_all)
        with self._lock:
            workers, self._workers = self._workers, []
        for _ in workers:
            self._jobs.put(None)
        if self._own_io:
            self.io.stop()

    def _close_all(self) -> None:
        # The IOThread (or the caller, once it has ended).
        self.io.unregister(self.sock)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._conns.values()):
            self._close(conn)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    # -- the connection thread ------------------------------------------------

    def _on_listener(self, mask: int) -> None:
        self._accept()

    def _on_event(self, conn: Connection, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ and conn.state == 'head':
                self._read(conn)
            elif mask & selectors.EVENT_READ and conn.state == 'drain':
                self._drain(conn)
            elif mask & selectors.EVENT_WRITE and conn.state == 'write':
                self._write(conn)
        except Exception:
            log.debug('web inbox: connection error', exc_info=True)
            self._close(conn)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of descriptors, or the client left: try later.
                log.debug('web inbox: accept failed', exc_info=True)
                return
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections and not self._make_room():
                try:
                    sock.send(_BUSY)
                except OSError:
                    pass
                sock.close()
                continue
            conn = Connection(sock, address, self.io_timeout)
            conn.handler = functools.partial(self._on_event, conn)
            conn.deadline = time.monotonic() + self.header_timeout
            self._conns[id(conn)] = conn
            self.io.register(sock, selectors.EVENT_READ, conn.handler)

    def _make_room(self) -> bool:
        """At the cap: close the connection that has waited longest for a
        request without sending a whole one (idle, or dripping its head),
        so that a new client is served rather than refused; False when
        every connection is being answered."""
        waiting = [c for c in self._conns.values() if c.state in ('head', 'drain')]
        if not waiting:
            return False
        # One closing anyway, else the earliest deadline: the one that has
        # had the longest.
        oldest = min(waiting, key=lambda c: (c.state != 'drain', c.deadline))
        log.debug('web inbox: %s closed to make room', oldest.address)
        self._close(oldest)
        return True

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        if not conn.inbuf:
            # The first byte of a request: its head has this long.
            conn.deadline = min(conn.deadline, time.monotonic() + self.header_timeout)
        conn.inbuf += data
        self._dispatch(conn)

    def _dispatch(self, conn: Connection) -> None:
        """Hand a connection whose request head is complete to a worker;
        refuse one whose head is too long."""
        if not conn.head_complete():
            if len(conn.inbuf) > MAX_HEAD:
                self._send_raw(conn, _TOO_LARGE)
            return
        conn.state = 'busy'
        conn.scanned = 0        # the worker consumes the head
        self.io.unregister(conn.sock)
        with self._lock:
            if len(self._workers) < self.threads:
                worker = threading.Thread(target=self._work, daemon=True,
                                          name='%s worker %d' % (self.name, len(self._workers) + 1))
                self._workers.append(worker)
                worker.start()
        self._jobs.put(conn)

    def _send_raw(self, conn: Connection, data: bytes) -> None:
        conn.inbuf.clear()
        conn.state = 'write'
        conn.out = memoryview(data)
        conn.body = None
        conn.close_after = True
        conn.deadline = time.monotonic() + self.io_timeout
        self.io.modify(conn.sock, selectors.EVENT_WRITE, conn.handler)

    def _resume(self, conn: Connection) -> None:
        # A worker is done with it: write its response.
        if conn.state == 'gone':
            self._conns.pop(id(conn), None)
            return
        if conn.state == 'done' or self._stopping or conn.sock.fileno() < 0:
            self._close(conn)
            return
        try:
            conn.sock.setblocking(False)
            self.io.register(conn.sock, selectors.EVENT_WRITE, conn.handler)
        except (OSError, ValueError):
            self._close(conn)
            return
        conn.state = 'write'
        conn.deadline = time.monotonic() + self.io_timeout
        self._write(conn)

    def _next_out(self, conn: Connection) -> bool:
        """Refill ``conn.out`` from the body; False when the body is done."""
        if conn.body is None:
            return False
        for chunk in conn.body:
            if not chunk:
                continue
            conn.sent += len(chunk)
            if conn.chunked:
                conn.out = memoryview(b'%x\r\n%s\r\n' % (len(chunk), chunk))
            else:
                conn.out = memoryview(chunk)
            return True
        conn.body = None
        if conn.chunked:
            conn.out = memoryview(b'0\r\n\r\n')
            conn.chunked = False
            return True
        if conn.promised is not None and conn.sent != conn.promised:
            log.warning('web inbox: a response of %d bytes sent %d', conn.promised,
                        conn.sent)
            conn.close_after = True
        return False

    def _write(self, conn: Connection) -> None:
        for _ in range(16):     # then the others get their turn
            if not conn.out and not self._next_out(conn):
                self._finished(conn)
                return
            try:
                n = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            conn.out = conn.out[n:]
            conn.deadline = time.monotonic() + self.io_timeout

    def _finished(self, conn: Connection) -> None:
        # The response is out: close, or wait for the next request.
        if self._stopping:
            self._close(conn)
            return
        if conn.close_after:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn)
                return
            conn.state = 'drain'
            conn.inbuf.clear()
            conn.deadline = time.monotonic() + _LINGER
            self.io.modify(conn.sock, selectors.EVENT_READ, conn.handler)
            return
        conn.state = 'head'
        conn.deadline = time.monotonic() + self.idle_timeout
        self.io.modify(conn.sock, selectors.EVENT_READ, conn.handler)
        if conn.inbuf:
            # Pipelined: the next request may be here already.
            conn.deadline = min(conn.deadline, time.monotonic() + self.header_timeout)
            self._dispatch(conn)

    def _drain(self, conn: Connection) -> None:
        # A closing connection: read and forget until the client closes.
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b''
        if not data:
            self._close(conn)

    def _sweep(self) -> None:
        # Every _SWEEP seconds: the connections past their deadline.
        self._sweeper = self.io.call_later(_SWEEP, self._sweep)
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if conn.state != 'busy' and conn.deadline <= now:
                log.debug('web inbox: %s timed out (%s)', conn.address, conn.state)
                self._close(conn)

    def _close(self, conn: Connection) -> None:
        # The connection thread (or stop(), once it has ended).
        self._conns.pop(id(conn), None)
        if conn.state in ('head', 'write', 'drain') and conn.sock.fileno() >= 0:
            self.io.unregister(conn.sock)
        conn.body = None
        conn.out = memoryview(b'')
        try:
            conn.sock.close()
        except OSError:
            pass

    # -- the workers -----------------------------------------------------------

    def _work(self) -> None:
        _nice()
        while True:
            conn = self._jobs.get()
            if conn is None:
                return
            try:
                response = self.handle(conn)
            except Exception:
                log.debug('web inbox: error answering %s', conn.address, exc_info=True)
                response = None
            self._hand_back(conn, response)
            conn = None
            response = None
            # Let the SMTP loop have the interpreter between requests, not
            # only when the GIL's switch interval forces it.
            time.sleep(0)

    def _hand_back(self, conn: Connection, response: Optional[Response]) -> None:
        # In a worker: give the connection and its response back to the
        # connection thread (which owns the selector).
        if response is DETACH:
            conn.state = 'gone'
            self._give_back(conn)
            return
        if self._stopping:
            # The connection thread is done with the server: close here.
            self._conns.pop(id(conn), None)
            conn.sock.close()
            return
        if response is None:
            conn.state = 'done'
            self._give_back(conn)
            return
        conn.requests += 1
        conn.out = memoryview(response.head)
        body = response.body
        conn.chunked = response.chunked
        conn.close_after = response.close
        conn.sent = 0
        conn.promised = None
        if body is None:
            conn.body = None
        elif isinstance(body, bytes):
            conn.promised = len(body)
            conn.body = _slices(body)
        elif isinstance(body, str):
            conn.body = text_chunks(body)
        else:
            conn.promised = body.length
            conn.body = iter(body.chunks)
        self._give_back(conn)

    def _give_back(self, conn: Connection) -> None:
        if not self.io.call_soon(functools.partial(self._resume, conn)):
            # The IOThread has ended: forget the connection here (a
            # websocket's belongs to its hub now).
            self._conns.pop(id(conn), None)
            if conn.state != 'gone':
                conn.sock.close()

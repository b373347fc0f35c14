"""Drive one SMTP server over real loopback TCP, step by step, and record
exactly what it answered and what reached process_message.

The server's socket map is pumped by the caller's thread, so every step is
deterministic: the channel counts the bytes it received and sent, and a step
ends once it has read everything the client wrote and flushed every reply.
The same driver works for CPython's smtpd and for smtpd_compat, which is what
the differential tests need.  A hang (the stdlib's empty-DATA bug) shows up as
"nothing answered" rather than a stuck test.
"""
import contextlib
import io
import select
import socket
import sys
import warnings

__all__ = ['Driver', 'Result', 'stdlib_smtpd']


def stdlib_smtpd():
    """CPython's own smtpd module, or None where it no longer exists (3.12+).

    Loaded from the standard library directory even if this checkout's
    top-level smtpd.py shim is on sys.path."""
    if sys.version_info >= (3, 12):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import smtpd
    return smtpd


class Result:
    """What one session produced: the greeting, one reply blob per step,
    the process_message calls, the exceptions the channel raised, whether
    the server closed the connection, and DebuggingServer's stdout."""

    def __init__(self):
        self.greeting = b''
        self.replies = []
        self.messages = []
        self.errors = []
        self.closed = False
        self.stdout = ''

    def __repr__(self):
        return ('Result(replies=%r, messages=%r, errors=%r, closed=%r)'
                % (self.replies, self.messages, self.errors, self.closed))


def _instrument(module, server_base, overriding=False):
    """A server class derived from ``server_base`` (a class of ``module``)
    whose channels count their traffic and record exceptions instead of
    printing them, and which records process_message calls.
    ``overriding``: the channels also override collect_incoming_data and
    found_terminator (calling the originals), as capability layers and
    many subclasses do, which takes smtpd_compat off its plain channel's
    fast paths."""

    class Channel(module.SMTPChannel):
        def __init__(self, server, conn, *args, **kwargs):
            # Timing only: the stdlib's one-push-per-line replies otherwise
            # wait for delayed ACKs (no effect on the bytes).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server.channel = self
            self.rx = self.tx = 0
            super().__init__(server, conn, *args, **kwargs)

        def recv(self, size):
            data = super().recv(size)
            self.rx += len(data)
            return data

        def send(self, data):
            sent = super().send(data)
            self.tx += sent or 0
            return sent

        def handle_error(self):
            self.smtp_server.result.errors.append(sys.exc_info()[1])
            self.close()

    if overriding:
        class Channel(Channel):
            def collect_incoming_data(self, data):
                super().collect_incoming_data(data)

            def found_terminator(self):
                super().found_terminator()

    class Server(server_base):
        channel_class = Channel
        reply = None
        record = server_base is module.SMTPServer

        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            self.result.messages.append((mailfrom, list(rcpttos), data, kwargs))
            if not self.record:
                return super().process_message(peer, mailfrom, rcpttos,
                                               data, **kwargs)
            return self.reply

    return Server


class Driver:
    """One server of ``module`` (CPython's smtpd or smtpd_compat) on
    127.0.0.1 port 0 with its own socket map.  ``run(steps)`` opens a
    connection, writes each step (bytes, one write each) and returns a
    Result.  ``server_class`` names a server class of the module
    ('SMTPServer' records messages; 'DebuggingServer' prints them)."""

    MAX_TURNS = 5000

    def __init__(self, module, server_class='SMTPServer', reply=None,
                 overriding=False, **kwargs):
        self.module = module
        self.map = {}
        cls = _instrument(module, getattr(module, server_class), overriding)
        self.server = cls(('127.0.0.1', 0), ('127.0.0.1', 9), map=self.map,
                          **kwargs)
        self.server.reply = reply
        self.address = self.server.socket.getsockname()[:2]

    def close(self):
        self.module.asyncore.close_all(map=self.map)

    def _pump(self, done):
        for _ in range(self.MAX_TURNS):
            if done():
                return True
            self.module.asyncore.loop(timeout=0.002, map=self.map, count=1)
        return done()

    def _read(self, sock, want):
        """Read exactly ``want`` bytes the server has already sent (and up
        to EOF when it closed)."""
        data = b''
        while len(data) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def run(self, steps):
        result = Result()
        self.server.result = result
        self.server.channel = None
        out = io.StringIO()
        sock = socket.create_connection(self.address, timeout=5)
        # Small writes back to back: without this, Nagle's algorithm holds
        # each one until the previous is acknowledged (delayed ACK, ~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with contextlib.redirect_stdout(out):
                self._pump(lambda: self.server.channel is not None
                           and not self.server.channel.producer_fifo)
                channel = self.server.channel
                read = 0
                result.greeting = self._read(sock, channel.tx)
                read = channel.tx
                written = 0
                for step in steps:
                    if channel.connected is False or channel.socket is None:
                        break
                    try:
                        sock.sendall(step)
                    except OSError:
                        break
                    written += len(step)
                    ok = self._pump(lambda: not channel.connected or (
                        channel.rx >= written and not channel.producer_fifo
                        and not _readable(channel)))
                    assert ok, 'server did not settle'
                    result.replies.append(self._read(sock, channel.tx - read))
                    read = channel.tx
                    if not channel.connected:
                        break
                result.closed = not channel.connected
        finally:
            sock.close()
            self._pump(lambda: self.server.channel is None
                       or not self.server.channel.connected)
        result.stdout = out.getvalue()
        return result


def _readable(channel):
    try:
        r, _, _ = select.select([channel.socket], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(r)

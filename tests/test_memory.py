"""Memory and CPU bounds against hostile clients (issue 12, findings 5
and 6): a server process started from the command line is measured
through /proc/PID/status while a client floods it.

The bounds are the issue's targets (RSS growth <= 16 MiB for pipelined
commands never read, <= 64 MiB for a 200 MiB message); the time bounds are
many times what the work takes, so that only a quadratic or unbounded
implementation fails them on a loaded machine.
"""
import os
import select
import socket
import sys
import threading
import time

import pytest

from conftest import recv_reply

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith('linux'), reason='reads /proc/PID/status')

MIB = 1024 * 1024


def status_kib(pid, field):
    """A /proc/PID/status field (VmRSS, VmHWM) in KiB."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise AssertionError('no %s for pid %d' % (field, pid))


def growth_mib(pid, before_kib):
    """Peak RSS of ``pid`` above ``before_kib``, in MiB."""
    return (status_kib(pid, 'VmHWM') - before_kib) / 1024


def warm_up(port, *lines):
    """One session that exercises the paths measured later (imports,
    buffers), so that RSS measured after it is the baseline."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=30)
    try:
        recv_reply(sock, timeout=30)
        for line in (b'EHLO warm',) + lines + (b'QUIT',):
            sock.sendall(line + b'\r\n')
            recv_reply(sock, timeout=30)
    finally:
        sock.close()


def send_for(sock, data, seconds):
    """Send ``data`` (repeated) without reading, for up to ``seconds`` or
    until ``len(data) * repeat`` bytes are gone; returns bytes sent."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(data)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _, writable, _ = select.select([], [sock], [], 0.2)
        if not writable:
            continue
        try:
            n = sock.send(view)
        except BlockingIOError:
            continue
        sent += n
        view = view[n:]
        if not view:
            return sent
    return sent


def assert_served(port):
    """A fresh client still gets a greeting and an answer."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=30)
    try:
        assert recv_reply(sock, timeout=30).startswith(b'220 ')
        sock.sendall(b'NOOP\r\n')
        assert recv_reply(sock, timeout=30).startswith(b'250')
    finally:
        sock.close()


# -- replies that are never read ------------------------------------------

@pytest.mark.parametrize('args', [
    ('-c', 'DebuggingServer'),
    ('--production', '--max-junk-commands', '0', '-c', 'DebuggingServer'),
], ids=['compat', 'production'])
def test_pipelined_commands_never_read(cli_server, args):
    # 18 MB of HELP, each answered with 76 bytes: without flow control the
    # server read it all and queued ~230 MB of replies.
    proc, port = cli_server(*args)
    warm_up(port, b'HELP')
    before = status_kib(proc.pid, 'VmRSS')
    flood = b'HELP\r\n' * (18 * 1000 * 1000 // 6)
    sock = socket.create_connection(('127.0.0.1', port), timeout=30)
    try:
        recv_reply(sock, timeout=30)
        sent = send_for(sock, flood, 8.0)
        time.sleep(0.5)
        grown = growth_mib(proc.pid, before)
        assert sent > MIB          # the server did read (some of) it
        assert grown <= 16, 'RSS grew %.1f MiB after %d bytes' % (grown, sent)
        print('%s: RSS grew %.1f MiB after %d bytes sent'
              % (args[0], grown, sent), file=sys.stderr)
    finally:
        sock.close()
    assert_served(port)
    assert proc.poll() is None


@pytest.mark.parametrize('loop_name, use_tls', [
    ('asyncore', False), ('smtpd_compat', False), ('smtpd_compat', True),
], ids=['asyncore', 'smtpd_compat', 'implicit-tls'])
def test_flow_control_resumes_when_replies_are_read(live_server, request,
                                                    loop_name, use_tls):
    # Reading stops while replies queue up and must start again once the
    # client reads them: every command is answered, in order.  Over TLS,
    # input already decrypted when reading stopped raises no socket event.
    import smtpd_compat
    from conftest import RecordingServer

    class Channel(smtpd_compat.SMTPChannel):
        paused = 0

        def __init__(self, server, conn, *args, **kwargs):
            # Small kernel buffers, so that the replies queue up here.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            super().__init__(server, conn, *args, **kwargs)

        def readable(self):
            readable = super().readable()
            if not readable:
                Channel.paused += 1
            return readable

    class Counting(RecordingServer):
        channel_class = Channel

    server_class, kwargs = Counting, {}
    if use_tls:
        from smtpd_compat.tls import TLSServerMixin
        certs = request.getfixturevalue('tls_certs')

        class server_class(TLSServerMixin, Counting):
            pass
        kwargs = {'tls_context': certs.server_context, 'implicit_tls': True}
    live = live_server(server_class, loop=loop_name, **kwargs)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(10)
    sock.connect(live.address)
    if use_tls:
        sock = certs.client_context.wrap_socket(sock,
                                                server_hostname='127.0.0.1')
    try:
        recv_reply(sock)
        count = 20000           # 1.5 MB of replies, far over the bound
        # Sent from a thread: once reading stops, the rest of it can only
        # go when the replies are read.
        sender = threading.Thread(target=sock.sendall, args=(
            b'HELO x\r\n' + b'HELP\r\n' * count + b'QUIT\r\n',))
        sender.start()
        # Let the queue fill up until the server stops reading, then read
        # it all.
        live.wait_until(lambda: Channel.paused)
        pieces = []
        while True:
            piece = sock.recv(1 << 16)
            if not piece:
                break
            pieces.append(piece)
        data = b''.join(pieces)
        sender.join(10)
    finally:
        sock.close()
    assert Channel.paused      # the flow control did stop reading
    lines = data.split(b'\r\n')
    assert lines[0].startswith(b'250 ')
    assert lines[1:count + 1] == [lines[1]] * count
    assert lines[1].startswith(b'250 Supported commands')
    assert lines[count + 1:] == [b'221 Bye', b'']


# -- one big message ----------------------------------------------------------

def _send_message(port, envelope, body_command, size, esmtp=False):
    """Send an envelope, then ``body_command`` and ``size`` bytes of
    content in 1 MiB writes; returns (socket, peak-RSS baseline)."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=60)
    recv_reply(sock, timeout=30)
    for line in (b'EHLO big',) + envelope:
        sock.sendall(line + b'\r\n')
        assert recv_reply(sock, timeout=30).startswith(b'250')
    sock.sendall(body_command + b'\r\n')
    block = (b'x' * 1022 + b'\r\n') * 1024
    assert len(block) == MIB
    sent = 0
    while sent < size:
        sock.sendall(block)
        sent += len(block)
    return sock


ENVELOPE = (b'MAIL FROM:<a@example.org>', b'RCPT TO:<b@example.org>')


@pytest.mark.parametrize('kind', ['DATA', 'BDAT'])
def test_200_mib_message_is_refused_in_bounded_memory(cli_server, kind):
    proc, port = cli_server('--production', '--esmtp', 'all',
                            '-c', 'DebuggingServer')
    warm_up(port, b'NOOP')
    before = status_kib(proc.pid, 'VmRSS')
    size = 200 * MIB
    if kind == 'DATA':
        sock = _send_message(port, ENVELOPE, b'DATA', 0)
        assert recv_reply(sock, timeout=30).startswith(b'354')
        _send_more(sock, size)
        sock.sendall(b'.\r\n')
    else:
        sock = _send_message(port, ENVELOPE, b'BDAT %d LAST' % size, size)
    try:
        reply = recv_reply(sock, timeout=120)
        assert reply.startswith(b'552 '), reply
        sock.sendall(b'NOOP\r\n')
        assert recv_reply(sock, timeout=30).startswith(b'250')
    finally:
        sock.close()
    grown = growth_mib(proc.pid, before)
    assert grown <= 64, 'RSS grew %.1f MiB' % grown
    print('200 MiB %s: RSS grew %.1f MiB' % (kind, grown), file=sys.stderr)


def _send_more(sock, size):
    block = (b'x' * 1022 + b'\r\n') * 1024
    sent = 0
    while sent < size:
        sock.sendall(block)
        sent += len(block)


def test_huge_bdat_size_is_not_buffered(cli_server):
    # RFC 3030: the chunk is read whatever the reply; a declared size far
    # over the limit must not make the server keep what it reads.
    proc, port = cli_server('--production', '--esmtp', 'all',
                            '-c', 'DebuggingServer')
    warm_up(port, b'NOOP')
    before = status_kib(proc.pid, 'VmRSS')
    sock = _send_message(port, ENVELOPE, b'BDAT 99999999999999', 200 * MIB)
    try:
        time.sleep(0.3)
        grown = growth_mib(proc.pid, before)
    finally:
        sock.close()
    assert grown <= 16, 'RSS grew %.1f MiB' % grown
    print('BDAT 99999999999999 + 200 MiB: RSS grew %.1f MiB' % grown,
          file=sys.stderr)
    assert_served(port)


def test_size_advertised_under_production(cli_server):
    for args, size in [(('--production',), b'10240000'),
                       (('--production', '-s', '5000'), b'5000')]:
        proc, port = cli_server(*args, '-c', 'DebuggingServer')
        sock = socket.create_connection(('127.0.0.1', port), timeout=30)
        try:
            recv_reply(sock, timeout=30)
            sock.sendall(b'EHLO c\r\n')
            assert b'250-SIZE ' + size + b'\r\n' in recv_reply(sock, timeout=30)
        finally:
            sock.close()


# -- BDAT cost per chunk ---------------------------------------------------

def test_60000_one_byte_chunks_are_linear(cli_server):
    proc, port = cli_server('--esmtp', 'PIPELINING,CHUNKING',
                            '-c', 'DebuggingServer')
    count = 60000
    sock = socket.create_connection(('127.0.0.1', port), timeout=60)
    recv_reply(sock, timeout=30)
    sock.sendall(b'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n')
    wire = b'BDAT 1\r\nx' * count + b'BDAT 0 LAST\r\n'
    latencies = []
    stop = threading.Event()

    def probe():
        # Another client's greeting while the chunks are processed.
        while not stop.is_set():
            started = time.monotonic()
            with socket.create_connection(('127.0.0.1', port), timeout=30) as s:
                assert recv_reply(s, timeout=30).startswith(b'220 ')
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)

    started = time.monotonic()
    sender = threading.Thread(target=sock.sendall, args=(wire,))
    prober = threading.Thread(target=probe)
    sender.start()
    prober.start()
    try:
        pieces = []
        tail = b''
        while not tail.endswith(b'250 OK 1 octets received\r\n250 OK\r\n'):
            chunk = sock.recv(1 << 20)
            assert chunk, 'closed after %r' % tail
            pieces.append(chunk)
            tail = (tail + chunk)[-64:]
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sender.join(30)
        prober.join(30)
        sock.close()
    got = b''.join(pieces)
    assert got.count(b'250 OK 1 octets received\r\n') == count
    # Quadratic bookkeeping took 34 s on an idle machine; linear takes
    # about a second.  Wide margins for a loaded one.
    assert elapsed < 20, elapsed
    assert latencies and max(latencies) < 5, latencies
    print('60000 chunks: %.2f s; greeting latency max %.3f s (%d probes)'
          % (elapsed, max(latencies), len(latencies)), file=sys.stderr)


if __name__ == '__main__':
    sys.exit(pytest.main([os.path.abspath(__file__), '-v', '-s']))

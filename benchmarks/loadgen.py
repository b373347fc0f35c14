"""Load generators for benchmarks/run.py.

Every function talks to 127.0.0.1 only, is bounded by a time limit and
returns plain numbers.  ``smtp_source`` drives Postfix's smtp-source;
``python_source`` is the built-in stand-in used when smtp-source is not
installed (threads speaking SMTP over raw sockets, one session each),
which also does what smtp-source cannot: STARTTLS and AUTH PLAIN (W6).
"""
import base64
import re
import selectors
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import threading
import time

SMTP_SOURCE = shutil.which('smtp-source')


def smtp_source(port, sessions, messages, length, rcpts=1, persistent=True,
                time_limit=10.0):
    """Run smtp-source; returns (messages completed, seconds)."""
    cmd = [SMTP_SOURCE, '-c', '-s', str(sessions), '-m', str(messages),
           '-l', str(length), '-r', str(rcpts), '-M', 'bench.example',
           '-f', 'sender@bench.example', '-t', 'rcpt@bench.example']
    if persistent:
        cmd.append('-d')
    cmd.append('127.0.0.1:%d' % port)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=time_limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    elapsed = time.monotonic() - start
    counts = re.findall(rb'(\d+)', out)
    done = int(counts[-1]) if counts else 0
    return done, elapsed


def _read_reply(sock, buf):
    """Read one SMTP reply; returns (code, rest of buffer)."""
    while True:
        while b'\r\n' in buf:
            line, buf = buf.split(b'\r\n', 1)
            if line[3:4] != b'-':
                return int(line[:3]), buf
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError('server closed the connection')
        buf += chunk


def _body(length):
    """``length`` bytes of message text in 78-character lines, CRLF."""
    line = b'x' * 76 + b'\r\n'
    body = line * (length // len(line) + 1)
    return b'Subject: bench\r\n\r\n' + body[:length]


def python_source(port, sessions, messages, length, rcpts=1, persistent=True,
                  time_limit=10.0, tls=None):
    """The same workloads as smtp_source, from Python threads.

    ``tls``: (client SSLContext, AUTH PLAIN credentials as bytes) to have
    every session say EHLO, STARTTLS, EHLO and AUTH PLAIN before its first
    message."""
    body = _body(length) + b'\r\n.\r\n'
    lock = threading.Lock()
    left = [messages]
    done = [0]
    deadline = time.monotonic() + time_limit

    def take():
        with lock:
            if left[0] <= 0 or time.monotonic() > deadline:
                return False
            left[0] -= 1
            return True

    def one(sock, buf):
        sock.sendall(b'MAIL FROM:<sender@bench.example>\r\n')
        code, buf = _read_reply(sock, buf)
        for i in range(rcpts):
            sock.sendall(b'RCPT TO:<%drcpt@bench.example>\r\n' % i)
            code, buf = _read_reply(sock, buf)
        sock.sendall(b'DATA\r\n')
        code, buf = _read_reply(sock, buf)
        sock.sendall(body)
        code, buf = _read_reply(sock, buf)
        if code == 250:
            with lock:
                done[0] += 1
        return buf

    def session():
        sock = None
        try:
            while take():
                if sock is None:
                    sock = socket.create_connection(('127.0.0.1', port),
                                                    timeout=time_limit)
                    code, buf = _read_reply(sock, b'')
                    sock.sendall(b'EHLO bench.example\r\n')
                    code, buf = _read_reply(sock, buf)
                    if tls is not None:
                        sock = _starttls_auth(sock, buf, *tls)
                        buf = b''
                buf = one(sock, buf)
                if not persistent:
                    sock.sendall(b'QUIT\r\n')
                    _read_reply(sock, buf)
                    sock.close()
                    sock = None
        except OSError:
            pass
        finally:
            if sock is not None:
                sock.close()

    start = time.monotonic()
    threads = [threading.Thread(target=session, daemon=True)
               for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic() + 1))
    return done[0], time.monotonic() - start


def _starttls_auth(sock, buf, context, plain):
    """STARTTLS (RFC 3207), EHLO again and AUTH PLAIN (RFC 4954) on a
    session that has said EHLO; returns the TLS socket.  A refusal raises
    OSError (ending the session), so a server that refuses counts no
    messages."""
    sock.sendall(b'STARTTLS\r\n')
    code, buf = _read_reply(sock, buf)
    if code != 220 or buf:
        raise ConnectionError('STARTTLS answered %d' % code)
    sock = context.wrap_socket(sock, server_hostname='localhost')
    try:
        sock.sendall(b'EHLO bench.example\r\n')
        code, buf = _read_reply(sock, b'')
        sock.sendall(b'AUTH PLAIN ' + base64.b64encode(plain) + b'\r\n')
        code, buf = _read_reply(sock, buf)
        if code != 235 or buf:
            raise ConnectionError('AUTH PLAIN answered %d' % code)
    except BaseException:
        sock.close()
        raise
    return sock


def tls_client(ca_file, login, password):
    """``python_source``'s ``tls`` argument: a client context trusting
    ``ca_file`` and the AUTH PLAIN credentials (RFC 4616: no authorization
    identity).  One process of threads is the cheaper client: on the
    2-core machine two or three worker processes cost more CPU per message
    (158-186 against 89 us) and delivered less."""
    context = ssl.create_default_context(cafile=ca_file)
    return context, b'\0' + login.encode() + b'\0' + password.encode()


def ehlo_latency(port, probes=20, time_limit=10.0):
    """Median milliseconds from sending EHLO to the complete reply, on a
    fresh connection each time."""
    samples = []
    deadline = time.monotonic() + time_limit
    for _ in range(probes):
        if time.monotonic() > deadline:
            break
        with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
            code, buf = _read_reply(s, b'')
            start = time.perf_counter()
            s.sendall(b'EHLO bench.example\r\n')
            _read_reply(s, buf)
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples) if samples else float('nan')


def smtplib_run(port, messages, length=1024, time_limit=10.0):
    """One smtplib client sending messages over one session; returns
    (msg/s, messages sent)."""
    body = _body(length)
    deadline = time.monotonic() + time_limit
    done = 0
    start = time.monotonic()
    with smtplib.SMTP('127.0.0.1', port, timeout=time_limit) as c:
        for _ in range(messages):
            if time.monotonic() > deadline:
                break
            c.sendmail('sender@bench.example', ['rcpt@bench.example'], body)
            done += 1
    return done / (time.monotonic() - start), done


def transaction_ms(port, timeout=5.0):
    """Milliseconds for one complete smtplib transaction on a new
    connection, or None if it failed."""
    start = time.perf_counter()
    try:
        with smtplib.SMTP('127.0.0.1', port, timeout=timeout) as c:
            c.sendmail('a@bench.example', ['b@bench.example'], b'hi\r\n')
    except (OSError, smtplib.SMTPException):
        return None
    return (time.perf_counter() - start) * 1000


def hold_idle(port, count, time_limit=30.0, alive=lambda: True, batch=100):
    """Open ``count`` connections and keep them idle; returns (list of
    sockets, number that got a 220 greeting).  The caller closes them.

    Connections are opened ``batch`` at a time, each batch waiting for its
    greetings (up to 3 s), so that a server's listen backlog measures its
    connection capacity, not how fast SYN retries back off."""
    sel = selectors.DefaultSelector()
    socks = []
    greeted = 0
    deadline = time.monotonic() + time_limit
    try:
        while len(socks) < count and time.monotonic() < deadline and alive():
            for _ in range(min(batch, count - len(socks))):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(('127.0.0.1', port))
                socks.append(s)
                sel.register(s, selectors.EVENT_READ)
            batch_end = min(deadline, time.monotonic() + 3.0)
            while greeted < len(socks) and time.monotonic() < batch_end:
                greeted += _drain(sel, 0.2)
            if greeted < len(socks):
                break     # the server stopped greeting: that is its limit
    finally:
        sel.close()
    return socks, greeted


def _drain(sel, timeout):
    n = 0
    for key, _ in sel.select(timeout):
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b''
        sel.unregister(key.fileobj)
        if data.startswith(b'220'):
            n += 1
    return n

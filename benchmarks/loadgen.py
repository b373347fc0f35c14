"""Load generators for benchmarks/run.py.

Every function talks to 127.0.0.1 only, is bounded by a time limit and
returns plain numbers.  ``smtp_source`` drives Postfix's smtp-source;
``python_source`` is the built-in stand-in used when smtp-source is not
installed (threads speaking SMTP over raw sockets, one session each),
which also does what smtp-source cannot: STARTTLS and AUTH PLAIN (W6).
"""
import base64
import os
import random
import re
import selectors
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
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


def hold_idle(port, count, time_limit=30.0, alive=lambda: True, batch=100,
              source=None, patience=3.0):
    """Open ``count`` connections and keep them idle; returns (list of
    sockets, number that got a 220 greeting).  The caller closes them.

    Connections are opened ``batch`` at a time, each batch waiting for its
    greetings (up to ``patience`` seconds), so that a server's listen
    backlog measures its connection capacity, not how fast SYN retries
    back off.  ``source``: the local address to connect from (127.0.0.2,
    ...): one address reaches one server port from at most as many
    connections as there are ephemeral ports (32768-60999 by default)."""
    sel = selectors.DefaultSelector()
    socks = []
    greeted = 0
    deadline = time.monotonic() + time_limit
    try:
        while len(socks) < count and time.monotonic() < deadline and alive():
            for _ in range(min(batch, count - len(socks))):
                s = socket.socket()
                socks.append(s)
                if source is not None:
                    s.bind((source, 0))
                s.setblocking(False)
                s.connect_ex(('127.0.0.1', port))
                sel.register(s, selectors.EVENT_READ)
            batch_end = min(deadline, time.monotonic() + patience)
            while greeted < len(socks) and time.monotonic() < batch_end:
                greeted += _drain(sel, 0.2)
            if greeted < len(socks):
                break     # the server stopped greeting: that is its limit
    except OSError:
        pass          # out of descriptors or ports here: what is open is held
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


# -- idle connections held by other processes (W5) ---------------------------
#
# One process holds no more connections than its descriptor limit
# (RLIMIT_NOFILE: 1,024 soft and a few thousand to 20,000 hard on many
# systems) and one source address reaches one server port from no more
# connections than there are ephemeral ports (~28,000).  So W5's
# connections are held by holder processes, each with its own source
# address on the loopback network (127.0.0.2, 127.0.0.3, ...: all of
# 127.0.0.0/8 is local on Linux) and at most ``per_holder`` connections.
# A holder opens its share, prints how many were greeted, and keeps them
# until its standard input closes or ``hold_limit`` seconds pass, then
# closes them and exits: nothing outlives a run.

HOLDER_SOURCE = '127.0.0.%d'
# The last octet of the next holder's address (2-251).  Each run moves on
# (from a random start, so that the next run of the script does too): the
# ports a run used stay in TIME_WAIT for a minute after it closes them,
# and a run from the same address would find none free.
_next_source = [random.randrange(250)]


class IdleHolders:
    """``count`` idle connections to 127.0.0.1:``port`` held by holder
    processes of at most ``per_holder`` connections each, each from its own
    source address, opened in parallel.  ``greeted`` is how many got a 220
    greeting (the server holds them), ``counts`` the same per holder.
    Use as a context manager, or call :meth:`close`."""

    def __init__(self, port, count, per_holder=10000, time_limit=60.0,
                 hold_limit=600.0, python=None, patience=5.0):
        per_holder = max(1, per_holder)
        shares = [per_holder] * (count // per_holder)
        if count % per_holder:
            shares.append(count % per_holder)
        if len(shares) > 250:
            raise ValueError('%d holders: more than 127.0.0.2-251 can give'
                             % len(shares))
        first, _next_source[0] = _next_source[0], _next_source[0] + len(shares)
        self.procs = []
        self.counts = []
        try:
            for i, share in enumerate(shares):
                self.procs.append(subprocess.Popen(
                    [python or sys.executable, os.path.abspath(__file__), 'hold',
                     str(port), str(share), HOLDER_SOURCE % (2 + (first + i) % 250),
                     str(time_limit), str(hold_limit), str(patience)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + time_limit + patience + 10
            for proc in self.procs:
                self.counts.append(_read_count(proc, deadline))
        except BaseException:
            self.close()
            raise
        self.greeted = sum(self.counts)

    def close(self):
        """Have every holder close its connections and wait for it (by its
        pid only: killed if it has not gone after 30 s)."""
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_count(proc, deadline):
    """The number a holder prints once its share is open (0 if it says
    nothing before ``deadline``)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if sel.select(max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            if line.strip().isdigit():
                return int(line)
    finally:
        sel.close()
    return 0


def _holder(port, count, source, time_limit, hold_limit, patience):
    """A holder process (``loadgen.py hold PORT COUNT SOURCE TIME_LIMIT
    HOLD_LIMIT PATIENCE``): its descriptor limit raised to the hard one."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    socks, greeted = hold_idle(port, count, time_limit=time_limit,
                               source=source, patience=patience)
    try:
        sys.stdout.write('%d\n' % greeted)
        sys.stdout.flush()
        # Until the parent closes our stdin (or dies), bounded.
        sel = selectors.DefaultSelector()
        sel.register(sys.stdin, selectors.EVENT_READ)
        sel.select(hold_limit)
        sel.close()
    finally:
        for s in socks:
            s.close()


if __name__ == '__main__' and sys.argv[1:2] == ['hold']:
    _a = sys.argv[2:]
    _holder(int(_a[0]), int(_a[1]), _a[2], float(_a[3]), float(_a[4]),
            float(_a[5]))

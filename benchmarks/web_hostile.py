#!/usr/bin/env python3
"""Hostile mail against the web inbox: time, memory, threads, and the SMTP
latency another client sees meanwhile (issue 22, item 0).

    python3.11 benchmarks/web_hostile.py [--baseline REV] [--cases a,b] [--quick]

Each case starts ``python -m smtpd_compat -n -c WebInboxServer --web ...``
in a fresh process on 127.0.0.1, sends what the case needs over SMTP, and
then makes the HTTP requests it names while a probe process measures
another client's SMTP connect+NOOP (connect, banner, NOOP, reply) every
20 ms.  The table gives each request's time, the probe's worst and median
latency, and the server's RSS (Linux /proc).  ``--baseline REV`` runs the
same cases against ``REV`` (a git revision or a checkout) first, for a
before/after table.

Everything is bounded: every request has a timeout (``--timeout``, a
request that takes longer is reported as such), the mail sent is fixed in
size (``--quick`` shrinks the memory case), and only processes started
here are stopped, by their pid.
"""
import argparse
import json
import os
import signal
import socket
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MIB = 1024 * 1024


# ---------------------------------------------------------------------------
# hostile messages (tests/test_web_hostile.py sends them too)

def _mail(headers, body):
    return (b'From: Hostile <hostile@example.org>\r\nTo: bob@example.org\r\n'
            b'Subject: hostile\r\n' + headers + b'\r\n' + body + b'\r\n')


def nbsp_html():
    """An HTML-only message of 80,000 no-break spaces (400 KB)."""
    return _mail(b'Content-Type: text/html\r\n', b'&nbsp' * 80000 + b'x')


def head_html():
    """An HTML part of 80,000 ``<head`` (400 KB)."""
    return _mail(b'Content-Type: text/html\r\n', b'<head' * 80000)


def many_parts():
    """60,000 MIME parts."""
    return _mail(b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n',
                 b'--b\r\n\r\nx\r\n' * 60000 + b'--b--')


def many_params():
    """A part whose Content-Disposition has 20,000 parameters."""
    params = b''.join(b'; p%d=v' % i for i in range(20000))
    return _mail(b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n',
                 b'--b\r\nContent-Type: application/octet-stream\r\n'
                 b'Content-Disposition: attachment' + params + b'\r\n\r\nx\r\n--b--')


def nested_comment():
    """``Content-Type: text/plain; ((((...`` of 2 MB."""
    return _mail(b'Content-Type: text/plain; ' + b'(' * (2 * MIB) + b'\r\n', b'x')


def big_text(size, n):
    """A text message of ``size`` bytes, with some non-ASCII text (an
    emoji on each line: 4 bytes a character once decoded)."""
    line = ('Message %d: plain text, caf\u00e9, \u20ac5, \U0001f4ec, '
            'lorem ipsum dolor sit amet\r\n' % n).encode('utf-8')
    body = line * (size // len(line))
    return _mail(b'Content-Type: text/plain; charset=utf-8\r\n'
                 b'Content-Transfer-Encoding: 8bit\r\n', body)


# ---------------------------------------------------------------------------
# the server, the probe, HTTP

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    """``python -m smtpd_compat ... --web`` from ``tree``, in its own process."""

    def __init__(self, tree, python, extra=()):
        self.smtp_port = free_port()
        env = dict(os.environ, PYTHONPATH=tree)
        self.proc = subprocess.Popen(
            [python, '-m', 'smtpd_compat', '-n', '-c', 'WebInboxServer',
             '--web', '127.0.0.1:0'] + list(extra) + ['127.0.0.1:%d' % self.smtp_port],
            env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode()
            if not line:
                raise SystemExit('the server did not start')
            if 'Web inbox at ' in line:
                # (Its own line in older trees, the start line's end now.)
                self.url = line.split('Web inbox at ')[1].split()[0]
                break
        # Drain stderr from now on (a full pipe would block the server).
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        while time.monotonic() < deadline:
            try:
                socket.create_connection(('127.0.0.1', self.smtp_port), 1).close()
                break
            except OSError:
                time.sleep(0.05)

    def rss(self, field='VmRSS'):
        from run import proc_status
        return proc_status(self.proc.pid, field)

    def threads(self):
        with open('/proc/%d/status' % self.proc.pid) as f:
            for line in f:
                if line.startswith('Threads:'):
                    return int(line.split()[1])
        return None

    def send(self, raw, count=1):
        with smtplib.SMTP('127.0.0.1', self.smtp_port, timeout=120) as c:
            for _ in range(count):
                c.sendmail('hostile@example.org', ['bob@example.org'], raw)

    def get(self, path, timeout):
        """(seconds, status, body) of one GET; status 'timeout' when it
        took longer than ``timeout``."""
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url + path.lstrip('/'), timeout=timeout) as r:
                body = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            body, status = e.read(), e.code
        except OSError:
            body, status = b'', 'timeout'
        return time.perf_counter() - started, status, body

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Probe:
    """Another SMTP client, in its own process (so this one's GIL does not
    count): connect+NOOP every 20 ms, latencies in ms."""

    def __init__(self, port):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), '--probe', str(port)],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        self.samples = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # The first sample says the probe runs.
        deadline = time.monotonic() + 10
        while not self.samples and time.monotonic() < deadline:
            time.sleep(0.01)

    def _read(self):
        for line in self.proc.stdout:
            self.samples.append(float(line))

    def mark(self):
        return len(self.samples)

    def since(self, mark):
        """(worst, median) ms of the samples after ``mark``, the one in
        flight included."""
        time.sleep(0.05)
        samples = self.samples[max(0, mark - 1):]
        if not samples:
            return float('nan'), float('nan')
        return max(samples), statistics.median(samples)

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def probe_main(port):
    """--probe: print connect+NOOP latencies until stdin closes."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=60) as s:
                f = s.makefile('rb')
                f.readline()
                s.sendall(b'NOOP\r\n')
                f.readline()
                elapsed = (time.perf_counter() - started) * 1000
                s.sendall(b'QUIT\r\n')
        except OSError:
            elapsed = float('inf')
        print('%.2f' % elapsed, flush=True)
        stop.wait(0.02)


# ---------------------------------------------------------------------------
# the cases: each returns rows (case, what, seconds, status, probe worst,
# probe median, RSS MiB)

def _requests(server, probe, case, paths, timeout):
    rows = []
    for what, path in paths:
        mark = probe.mark()
        seconds, status, _ = server.get(path, timeout)
        worst, median = probe.since(mark)
        rows.append((case, what, seconds, status, worst, median, server.rss('VmHWM')))
    return rows


def _latest_id(server, timeout):
    _, status, body = server.get('/api/v1/messages?limit=1', timeout)
    if status != 200:
        return None
    messages = json.loads(body)['messages']
    return messages[0]['ID'] if messages else None


def case_hostile(make, case):
    def run(server, probe, args):
        server.send(make())
        rows = _requests(server, probe, case, [('list', '/api/v1/messages')], args.timeout)
        id = _latest_id(server, args.timeout)
        if id is None:
            return rows
        return rows + _requests(server, probe, case, [
            ('message', '/api/v1/message/%s' % id),
            ('view html', '/view/%s.html?embed=1' % id),
            ('view text', '/view/%s.txt' % id),
            ('search', '/api/v1/search?query=zzz'),
            ('mailhog list', '/api/v2/messages'),
            ('mailhog search', '/api/v2/search?kind=containing&query=zzz'),
        ], args.timeout)
    return run


def case_kept_mail(server, probe, args):
    """248 MiB of kept mail (4 MiB messages) listed, then 6 concurrent
    fetches of one message from the middle of the list (no cache of
    recent parses keeps it: not one of the newest, which arrived last,
    nor of the oldest, which a listing parses last)."""
    total = 62 if not args.quick else 8
    for i in range(total):
        server.send(big_text(4 * MIB, i))
    rows = _requests(server, probe, 'kept mail', [('list', '/api/v1/messages?limit=1000')],
                     args.timeout)
    _, status, body = server.get('/api/v1/messages?limit=1000', args.timeout)
    messages = json.loads(body)['messages'] if status == 200 else []
    middle = messages[len(messages) // 2]['ID'] if messages else 'latest'
    mark = probe.mark()
    results = []
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda: results.append(
        server.get('/api/v1/message/%s' % middle, args.timeout)[1])) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    worst, median = probe.since(mark)
    rows.append(('kept mail', '6 fetches', time.perf_counter() - started,
                 ','.join(sorted(set(map(str, results)))), worst, median,
                 server.rss('VmHWM')))
    return rows


def case_slow_readers(server, probe, args):
    """12 clients ask for a 4 MiB message's JSON and read nothing for 3 s."""
    server.send(big_text(4 * MIB, 0))
    id = _latest_id(server, args.timeout)
    server.get('/api/v1/message/%s' % id, args.timeout)     # parsed once
    before = server.rss()
    host, port = server.url.split('/')[2].rsplit(':', 1)
    mark = probe.mark()
    socks = []
    for _ in range(12):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        s.sendall(b'GET /api/v1/message/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
                  % id.encode())
        socks.append(s)
    time.sleep(3)
    after = server.rss()
    worst, median = probe.since(mark)
    for s in socks:
        s.close()
    return [('12 slow readers', 'RSS +%.0f MiB' % (after - before), 3.0, '-',
             worst, median, server.rss('VmHWM'))]


def case_dripping(server, probe, args):
    """400 connections sending a request head one byte a second."""
    threads_before = server.threads()
    host, port = server.url.split('/')[2].rsplit(':', 1)
    mark = probe.mark()
    socks = []
    for _ in range(400):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        socks.append(s)
    request = b'GET /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
    most = 0
    for i in range(5):
        for s in socks:
            try:
                s.send(request[i:i + 1])
            except OSError:
                pass
        time.sleep(1)
        most = max(most, server.threads() or 0)
    seconds, status, _ = server.get('/api/v1/messages', args.timeout)
    worst, median = probe.since(mark)
    for s in socks:
        s.close()
    return [('400 dripping', 'threads %d -> %d; list' % (threads_before, most),
             seconds, status, worst, median, server.rss('VmHWM'))]


def case_api_clients(server, probe, args):
    """50 concurrent clients for 5 s while mail arrives (one message every
    0.1 s): 25 list and open messages over the API, 25 listen to
    /api/events (the websocket)."""
    sys.path.insert(0, HERE)
    from web_events import Listener
    for i in range(50):
        server.send(big_text(8 * 1024, i))
    id = _latest_id(server, args.timeout)
    host, port = server.url.split('/')[2].rsplit(':', 1)
    listeners = [Listener(host, int(port)) for _ in range(25)]
    stop = time.monotonic() + 5
    counts = []

    def client():
        n = 0
        while time.monotonic() < stop:
            server.get('/api/v1/messages', args.timeout)
            server.get('/api/v1/message/%s' % id, args.timeout)
            n += 2
        counts.append(n)

    def sender():
        with smtplib.SMTP('127.0.0.1', server.smtp_port, timeout=args.timeout) as c:
            i = 0
            while time.monotonic() < stop:
                c.sendmail('a@example.org', ['b@example.org'],
                           'Subject: flowing %d\r\n\r\nx\r\n' % i)
                i += 1
                time.sleep(0.1)

    mark = probe.mark()
    threads = [threading.Thread(target=client) for _ in range(25)]
    threads.append(threading.Thread(target=sender))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples = probe.samples[mark:]
    worst, median = probe.since(mark)
    p95 = sorted(samples)[int(len(samples) * 0.95)] if samples else float('nan')
    events = min(len(listener.arrived) for listener in listeners)
    for listener in listeners:
        listener.sock.close()
    return [('25 API + 25 websocket clients',
             '%d requests, %d new events each; p95 %.1f ms' % (sum(counts), events, p95),
             5.0, '-', worst, median, server.rss('VmHWM'))]


CASES = {
    'nbsp': case_hostile(nbsp_html, '80,000 &nbsp (400 KB)'),
    'head': case_hostile(head_html, '80,000 <head (400 KB)'),
    'parts': case_hostile(many_parts, '60,000 parts'),
    'params': case_hostile(many_params, '20,000 parameters'),
    'nested': case_hostile(nested_comment, '2 MB ((((... Content-Type'),
    'kept': case_kept_mail,
    'slow': case_slow_readers,
    'drip': case_dripping,
    'clients': case_api_clients,
}


def run_tree(name, tree, args):
    rows = []
    for case in args.cases:
        server = Server(tree, args.python)
        probe = Probe(server.smtp_port)
        try:
            base = server.rss()
            for row in CASES[case](server, probe, args):
                rows.append((name,) + row + (base,))
                print('| %s |' % ' | '.join(format_row(rows[-1])), file=sys.stderr, flush=True)
        finally:
            probe.stop()
            server.stop()
    return rows


def format_row(row):
    name, case, what, seconds, status, worst, median, peak, base = row
    return (name, case, what, '%.2f s' % seconds, str(status), '%.1f ms' % worst,
            '%.1f ms' % median, '%.0f MiB (start %.0f)' % (peak or 0, base or 0))


def main(argv=None):
    sys.path.insert(0, HERE)
    from run import baseline_tree, case_arguments, print_table
    args = case_arguments(
        __doc__, CASES, 60.0, 'seconds per request before it counts as hung',
        '32 MiB instead of 248 MiB of kept mail', argv,
        extra=lambda parser: parser.add_argument('--probe', type=int, help=argparse.SUPPRESS))
    if args.probe:
        probe_main(args.probe)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            name, tree = baseline_tree(args.baseline, tmp)
            rows += run_tree(name, tree, args)
        rows += run_tree('this tree', ROOT, args)
    print_table(('tree', 'case', 'request', 'time', 'status', 'SMTP connect+NOOP worst',
                 'median', 'peak RSS'), [format_row(row) for row in rows])


if __name__ == '__main__':
    main()

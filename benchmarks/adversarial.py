"""Adversarial clients against ``python -m smtpd_compat --production``: the
Targets of issue 21, measured on loopback.

    python3.11 benchmarks/adversarial.py [--baseline REV] [--cases a,b] [--quick]

Cases (each bounded in connections and seconds; clients bind loopback
source addresses, 127.0.0.1 for the attacker, others for the bystanders):

memory, memory-nothreads, memory-nodot
    45 connections from one address each send one 9.5 MB message to a
    handler that sleeps 40 s (``--threads 1``; without ``--threads``;
    without the final dot).  The server's RSS growth (peak, VmHWM) and
    the replies each connection had within 5 s of its upload: ``250``,
    ``452``, or none yet (held or queued).  Target: growth <= 300 MiB,
    the rest answered 452.
starve
    40 connections from 127.0.0.1 send back to back to a 2 s handler with
    ``--threads 2``; then one message from 127.0.0.2: seconds to its 250.
    Target: within 2 handler times (4 s), 30 s at worst.
owner1, owner20
    the owner (127.0.0.2) mistypes her password once, while 1 or 20
    addresses guess it; then she logs in 10 times: seconds to each 235
    and the codes.  Target: 235 within 2 s.
flood
    100 addresses each guess a different login (scrypt auth file); the
    owner logs in 10 times from a clean address: median and worst seconds.
    Target: <= 1 s median, <= 5 s worst.
variants
    the throttle itself (no server): after ``alice`` is attacked, an
    address that failed once asks for ``alice``, ``Alice``, ``ALICE``,
    `` alice ``: refused, delayed or let through alike?

``--baseline REV`` runs the same cases against ``REV`` (a git revision or
a checkout) first.  Linux only (/proc); only processes this script starts
are stopped, by pid.
"""
import base64
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The handlers the server runs (-c adv_handlers.Slow), written next to the
# auth file in a temporary directory on PYTHONPATH.
HANDLERS = '''
import os, time
import smtpd_compat


class Slow(smtpd_compat.SMTPServer):
    """Sleeps ADV_SLEEP seconds per message, then discards it."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        time.sleep(float(os.environ.get('ADV_SLEEP', '0')))
'''

MESSAGE_SIZE = int(9.5 * 1024 * 1024)
LINE = b'x' * 76 + b'\r\n'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def proc_kib(pid, field):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return 0


class Server:
    """``python -m smtpd_compat -n -c adv_handlers.Slow --production ...``
    from ``tree``, in its own process."""

    def __init__(self, tree, python, workdir, extra, sleep=0.0):
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, workdir]),
                   ADV_SLEEP=str(sleep))
        self.proc = subprocess.Popen(
            [python, '-m', 'smtpd_compat', '-n', '-c', 'adv_handlers.Slow',
             '--production', '--log-level', 'ERROR'] + list(extra)
            + ['127.0.0.1:%d' % self.port],
            env=env, cwd=workdir, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(('127.0.0.1', self.port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit('the server did not start: %r' % (extra,))
                time.sleep(0.05)
        self.start_kib = proc_kib(self.proc.pid, 'VmRSS')

    def growth_mib(self):
        return (proc_kib(self.proc.pid, 'VmHWM') - self.start_kib) / 1024

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def client(port, source, timeout=30.0):
    c = smtplib.SMTP(timeout=timeout, source_address=(source, 0))
    c.connect('127.0.0.1', port)
    c.ehlo('adversary')
    return c


def reply_code(c, timeout):
    c.sock.settimeout(timeout)
    try:
        return c.getreply()[0]
    except (OSError, smtplib.SMTPException):
        return None


# -- memory ------------------------------------------------------------------

def case_memory(tree, args, workdir, threads=True, dot=True):
    extra = ['--threads', '1'] if threads else []
    server = Server(tree, args.python, workdir, extra, sleep=40)
    count = 12 if args.quick else 45
    body = LINE * (MESSAGE_SIZE // len(LINE))
    codes = []
    lock = threading.Lock()

    def one():
        code = 'error'
        try:
            c = client(server.port, '127.0.0.1', timeout=60)
            try:
                c.mail('a@example.org')
                c.rcpt('b@example.org')
                if c.docmd('DATA')[0] != 354:
                    code = 'DATA refused'
                else:
                    c.send(body + (b'.\r\n' if dot else b''))
                    code = reply_code(c, 5.0) if dot else 'sent'
                if code == 452 or code == 'DATA refused':
                    code = 452
            finally:
                c.close()
        except (OSError, smtplib.SMTPException) as e:
            code = type(e).__name__
        with lock:
            codes.append(code)

    workers = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        time.sleep(1.0)
        growth = server.growth_mib()
    finally:
        server.stop()
    tally = {}
    for code in codes:
        key = {250: '250', 452: '452', None: 'waiting'}.get(code, str(code))
        tally[key] = tally.get(key, 0) + 1
    return '%d x 9.5 MB: RSS +%.0f MiB; %s' % (
        count, growth, ', '.join('%s %d' % kv for kv in sorted(tally.items())))


# -- starvation ----------------------------------------------------------------

def case_starve(tree, args, workdir):
    server = Server(tree, args.python, workdir, ['--threads', '2'], sleep=2)
    stop = threading.Event()
    replies = [0]

    def flood():
        try:
            c = client(server.port, '127.0.0.1', timeout=120)
            while not stop.is_set():
                c.sendmail('a@example.org', ['b@example.org'], b'flood\r\n')
                replies[0] += 1
            c.close()
        except (OSError, smtplib.SMTPException):
            pass

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(40)]
    try:
        for f in flooders:
            f.start()
        time.sleep(3.0)
        before = replies[0]
        c = client(server.port, '127.0.0.2', timeout=args.timeout)
        started = time.monotonic()
        try:
            c.sendmail('other@example.org', ['b@example.org'], b'probe\r\n')
            waited = '%.1f s' % (time.monotonic() - started)
        except (OSError, smtplib.SMTPException) as e:
            waited = 'no 250 (%s) after %.0f s' % (type(e).__name__,
                                                   time.monotonic() - started)
        during = replies[0] - before
        c.close()
    finally:
        stop.set()
        server.stop()
    return "127.0.0.2's 250 after %s; the flood got %d replies meanwhile" % (
        waited, during)


# -- AUTH ----------------------------------------------------------------------

def auth_file(tree, python, workdir, logins):
    """An auth file with a scrypt hash of "right" for each login, made by
    ``tree``'s own hash_password."""
    path = os.path.join(workdir, 'users')
    if not os.path.exists(path):
        code = ('import sys; from smtpd_compat.auth import hash_password; '
                'h = hash_password("right"); '
                'print("\\n".join("%s:%s" % (u, h) for u in sys.argv[1:]))')
        out = subprocess.run([python, '-c', code] + logins, check=True,
                             capture_output=True, text=True, cwd=tree,
                             env=dict(os.environ, PYTHONPATH=tree)).stdout
        with open(path, 'w') as f:
            f.write(out)
    return path


def auth_plain(c, login, password):
    token = base64.b64encode(b'\0' + login.encode() + b'\0' + password.encode())
    return c.docmd('AUTH', 'PLAIN ' + token.decode())[0]


def guesser(port, source, login, stop):
    n = 0
    while not stop.is_set():
        try:
            c = client(port, source, timeout=30)
            for _ in range(3):     # auth_max_failures per connection
                if stop.is_set():
                    break
                n += 1
                if auth_plain(c, login, 'guess%d' % n) == 421:
                    break
            c.close()
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def owner_logins(port, source, tries=10):
    times, codes = [], []
    for _ in range(tries):
        started = time.monotonic()
        try:
            c = client(port, source, timeout=60)
            codes.append(auth_plain(c, 'alice', 'right'))
            c.close()
        except (OSError, smtplib.SMTPException) as e:
            codes.append(type(e).__name__)
        times.append(time.monotonic() - started)
    return times, codes


def attack(tree, args, workdir, attackers, owner_typo):
    users = auth_file(tree, args.python, workdir, ['alice'])
    server = Server(tree, args.python, workdir,
                    ['--auth-file', users, '--auth-allow-plaintext'])
    stop = threading.Event()
    try:
        if owner_typo:
            c = client(server.port, '127.0.0.2')
            auth_plain(c, 'alice', 'typo')
            c.close()
        threads = [threading.Thread(
            target=guesser, daemon=True,
            args=(server.port, source, login, stop)) for source, login in attackers]
        for t in threads:
            t.start()
        time.sleep(3.0)
        times, codes = owner_logins(server.port,
                                    '127.0.0.2' if owner_typo else '127.0.0.3')
    finally:
        stop.set()
        server.stop()
    ok = sum(code == 235 for code in codes)
    return 'owner: %d/10 x 235, median %.2f s, worst %.2f s (codes %s)' % (
        ok, statistics.median(times), max(times),
        ','.join(sorted(set(str(code) for code in codes))))


def case_owner(count):
    def run(tree, args, workdir):
        attackers = [('127.0.1.%d' % (n + 1), 'alice') for n in range(count)]
        return attack(tree, args, workdir, attackers, owner_typo=True)
    return run


def case_flood(tree, args, workdir):
    count = 30 if args.quick else 100
    attackers = [('127.0.2.%d' % (n + 1), 'user%d' % n) for n in range(count)]
    return attack(tree, args, workdir, attackers, owner_typo=False)


VARIANTS = textwrap.dedent('''
    from smtpd_compat.auth import AuthThrottle
    t = AuthThrottle()
    for n in range(10):
        assert t.allow('192.0.2.%d' % n, 'alice')
        t.record('192.0.2.%d' % n, 'alice', False)
    assert t.allow('203.0.113.1', 'bob')
    t.record('203.0.113.1', 'bob', False)
    out = []
    for login in ('alice', 'Alice', 'ALICE', ' alice '):
        if hasattr(t, 'assess'):
            v = t.assess('203.0.113.1', login)
            out.append('%r %s' % (login, 'delayed %.0f s' % v.delay if v.delay
                                  else 'allowed' if v.allowed else 'refused'))
            t.record('203.0.113.1', login, True)
        else:
            ok = t.allow('203.0.113.1', login)
            out.append('%r %s' % (login, 'allowed' if ok else 'refused'))
            if ok:
                t.record('203.0.113.1', login, True)
    print('; '.join(out))
''')


def case_variants(tree, args, workdir):
    # (cwd: python -c puts it first on sys.path.)
    return subprocess.run([args.python, '-c', VARIANTS], check=True, cwd=tree,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=tree)).stdout.strip()


CASES = {
    'memory': case_memory,
    'memory-nothreads': lambda t, a, w: case_memory(t, a, w, threads=False),
    'memory-nodot': lambda t, a, w: case_memory(t, a, w, dot=False),
    'starve': case_starve,
    'owner1': case_owner(1),
    'owner20': case_owner(20),
    'flood': case_flood,
    'variants': case_variants,
}


def main(argv=None):
    sys.path.insert(0, HERE)
    from run import baseline_tree, case_arguments, print_table
    args = case_arguments(__doc__, CASES, 90.0, 'seconds the starved message may wait',
                          '12 big messages, 30 guessing addresses', argv)
    trees = []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            trees.append(baseline_tree(args.baseline, tmp))
        trees.append(('this tree', ROOT))
        for name, tree in trees:
            with tempfile.TemporaryDirectory() as workdir:
                with open(os.path.join(workdir, 'adv_handlers.py'), 'w') as f:
                    f.write(HANDLERS)
                for case in args.cases:
                    result = CASES[case](tree, args, workdir)
                    rows.append((name, case, result))
                    print('| %s | %s | %s |' % rows[-1], file=sys.stderr, flush=True)
    print_table(('tree', 'case', 'result'), rows)


if __name__ == '__main__':
    main()

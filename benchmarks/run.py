#!/usr/bin/env python3
"""Benchmark smtpd_compat against CPython 3.11's smtpd and aiosmtpd.

    python3.11 benchmarks/run.py [--rounds 3] [--scale 1.0] [--time-limit 6]

Each server runs in its own process on 127.0.0.1 (a fresh one per workload
and round, so peak RSS belongs to one workload) and is driven by Postfix's
smtp-source when installed, by benchmarks/loadgen.py otherwise.  Servers
are interleaved (A B C A B C ...) over the rounds; the table shows medians
and ratios.  Writes benchmarks/results/latest.md (+ a timestamped copy) and
chart.png; ``--docs`` also copies both into docs/.  Only processes started
here are stopped, by their pid.  See benchmarks/README.md.
"""
import argparse
import datetime
import hashlib
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import loadgen  # noqa: E402
from smtpd_compat.loop import raise_fd_limit  # noqa: E402

MIB = 1024 * 1024

# name: (title, unit, higher is better)
WORKLOADS = {
    'W1': ('20 persistent sessions, 1 KB messages', 'msg/s', True),
    'W2': ('20 parallel clients, new connection per message', 'msg/s', True),
    'W2s': ('5 parallel clients, new connection per message', 'msg/s', True),
    'W3': ('4 sessions, 8 MiB messages', 'MiB/s', True),
    'W4': ('100 recipients per message, 5 sessions', 'msg/s', True),
    'EHLO': ('first EHLO reply latency (median)', 'ms', False),
    'smtplib': ('one smtplib client, 1 KB messages', 'msg/s', True),
    'W5': ('idle connections held; fresh transaction (median)', 'ms', False),
    'S50': ('20 sessions, handler sleeping 50 ms per message', 'msg/s', True),
    'W6': ('20 sessions, STARTTLS + AUTH PLAIN, 1 KB messages', 'msg/s', True),
}
# Run only when named with --workloads (see README: handlers that block).
OPT_IN_WORKLOADS = ('S50',)
# What the handler of every server does per message in these workloads
# (peers' --sleep option); smtp-sink cannot, so it sits them out.
SLEEP = {'S50': 0.05}
# W6, the capability stack: ours is the command line (python -m
# smtpd_compat --production --esmtp all) with STARTTLS and AUTH, aiosmtpd
# gets TLS and an authenticator; peers without TLS sit it out, and the
# table says so.
STACK_NOT_APPLICABLE = {'stdlib': 'n/a (no TLS)', 'smtp-sink': 'n/a (no TLS)'}
STACK_LOGIN, STACK_PASSWORD = 'bench', 'bench-password'
# The auth file's scrypt cost: lighter than smtpd_compat.auth's default
# (ln=14, ~50 ms a check), so that 20 password checks per run are not a
# large part of what W6 measures; both servers check the same hash.
STACK_SCRYPT = {'ln': 10, 'r': 8, 'p': 1}


class Server:
    """One peer: how to start it.  ``cli``: it is ``python -m
    smtpd_compat``, which says where it listens on stderr (sent to a log
    file in the temporary directory) instead of writing a port file;
    ``popen``: more Popen keywords (cwd, env)."""

    def __init__(self, name, argv, note='', cli=False, popen=None):
        self.name = name
        self.argv = argv
        self.note = note
        self.cli = cli
        self.popen = popen or {}

    def start(self, tmpdir, extra=(), wait=15, **popen):
        """Start the peer (``popen``: more Popen keywords) and wait up to
        ``wait`` seconds for its port; returns (process, port)."""
        portfile = os.path.join(tmpdir, self.name + '.port')
        if os.path.exists(portfile):
            os.unlink(portfile)
        if self.argv[0] == 'smtp-sink':
            return self._start_sink()
        popen = dict(self.popen, **popen)
        if self.cli:
            return self._start_cli(tmpdir, extra, wait, popen)
        proc = subprocess.Popen(self.argv + list(extra) + [portfile],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                **popen)
        deadline = time.monotonic() + wait
        while not os.path.exists(portfile):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                error = proc.stderr.read().decode(errors='replace')[-500:]
                stop(proc)
                raise RuntimeError('%s did not start: %s' % (self.name, error))
            time.sleep(0.02)
        with open(portfile) as f:
            return proc, int(f.read())

    def _start_cli(self, tmpdir, extra, wait, popen):
        log = os.path.join(tmpdir, self.name + '.log')
        with open(log, 'wb') as f:
            proc = subprocess.Popen(self.argv + list(extra) + ['127.0.0.1:0'],
                                    stdout=subprocess.DEVNULL, stderr=f, **popen)
        proc.own_group = popen.get('start_new_session', False)
        deadline = time.monotonic() + wait
        while True:
            with open(log, 'rb') as f:
                text = f.read().decode(errors='replace')
            m = re.search(r'listening for SMTP on 127\.0\.0\.1:(\d+)\.', text)
            if m:
                return proc, int(m.group(1))
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError('%s did not start: %s' % (self.name, text[-500:]))
            time.sleep(0.02)

    def _start_sink(self):
        import socket
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        argv = [shutil.which('smtp-sink')]
        if os.geteuid() == 0:
            argv += ['-u', 'nobody']
        proc = subprocess.Popen(argv + ['127.0.0.1:%d' % port, '4096'],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        return proc, port


def stop(proc):
    """Stop a process this script started: by its pid, or, when it was
    started in a session of its own (W5's --idle-workers), with every
    process of that group (its workers would outlive a killed parent)."""
    if getattr(proc, 'own_group', False):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    elif proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.stderr:
        proc.stderr.close()


def proc_cpu(pid):
    """CPU seconds (user + system) a process has used, or None."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def load_cpu():
    """CPU seconds (user + system) this process and its reaped children
    have used: the load generator's, measured around a run (smtp-source
    is a child reaped when it ends; python_source runs in this process's
    threads)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def proc_status(pid, field):
    """A /proc/<pid>/status field in MiB (VmHWM, VmRSS), or None."""
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def find_servers(args):
    here = os.path.join(HERE, 'peers')
    servers, notes = [], []
    servers.append(Server('ours', [args.python, os.path.join(here, 'sink.py'), 'ours']))
    servers.append(Server('ours-threads', [args.python, os.path.join(here, 'sink.py'), 'ours',
                                           '--threads', str(args.threads)],
                          note='--threads %d' % args.threads))
    stdlib_py = shutil.which(args.stdlib_python) if args.stdlib_python else None
    if stdlib_py and subprocess.call(
            [stdlib_py, '-W', 'ignore', '-c', 'import smtpd'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0:
        servers.append(Server('stdlib', [stdlib_py, os.path.join(here, 'sink.py'), 'stdlib']))
    else:
        notes.append('stdlib smtpd skipped: no %s with smtpd' % args.stdlib_python)
    aio = args.aiosmtpd_python
    if aio and shutil.which(aio) and subprocess.call(
            [shutil.which(aio), '-c', 'import aiosmtpd'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0:
        version = subprocess.run(
            [shutil.which(aio), '-c', 'import aiosmtpd; print(aiosmtpd.__version__)'],
            capture_output=True, text=True).stdout.strip()
        servers.append(Server('aiosmtpd', [shutil.which(aio), os.path.join(here, 'aiosmtpd_sink.py')],
                              note=version))
    else:
        notes.append('aiosmtpd skipped: set --aiosmtpd-python or '
                     'SMTPD_COMPAT_AIOSMTPD_PYTHON to an interpreter that has it')
    if args.smtp_sink and shutil.which('smtp-sink'):
        servers.append(Server('smtp-sink', ['smtp-sink'], note='C ceiling'))
    if args.baseline_tree:
        sink = os.path.join(args.baseline_tree, 'benchmarks', 'peers', 'sink.py')
        servers.insert(1, Server('ours@' + args.baseline, [args.python, sink, 'ours'],
                                 note='(%s)' % args.baseline_tree))
        servers[1].tree = args.baseline_tree
    return servers, notes


def make_stack(tmpdir):
    """W6's files in ``tmpdir``: a self-signed certificate for localhost
    and 127.0.0.1 made now by openssl (``cert.pem``, ``key.pem`` and both
    in ``server.pem``) and an auth file with one user; returns a dict of
    their paths, or None without openssl."""
    openssl = shutil.which('openssl')
    if not openssl:
        return None
    stack = {name: os.path.join(tmpdir, name + '.pem') for name in ('cert', 'key', 'server')}
    subprocess.run([openssl, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
                    '-keyout', stack['key'], '-out', stack['cert'], '-days', '2',
                    '-subj', '/CN=localhost',
                    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(stack['server'], 'w') as out:
        for name in ('cert', 'key'):
            with open(stack[name]) as f:
                out.write(f.read())
    salt = os.urandom(16)
    key = hashlib.scrypt(STACK_PASSWORD.encode(), salt=salt, n=2 ** STACK_SCRYPT['ln'],
                         r=STACK_SCRYPT['r'], p=STACK_SCRYPT['p'], dklen=32)
    stack['auth'] = os.path.join(tmpdir, 'users')
    with open(stack['auth'], 'w') as f:
        f.write('%s:$scrypt$ln=%d,r=%d,p=%d$%s$%s\n' % (
            STACK_LOGIN, STACK_SCRYPT['ln'], STACK_SCRYPT['r'], STACK_SCRYPT['p'],
            salt.hex(), key.hex()))
    return stack


def stack_server(srv, args, stack):
    """The W6 version of peer ``srv``, or None where W6 does not apply.
    Ours (and ours@REV, ours-threads) is the command line with a
    discarding class (peers/cli_sink.py) and its own start-up line as the
    port file."""
    if srv.name == 'aiosmtpd':
        return Server(srv.name, srv.argv + ['--tls-cert', stack['server'],
                                            '--auth-file', stack['auth']], srv.note)
    if not srv.name.startswith('ours'):
        return None
    argv = [args.python, '-m', 'smtpd_compat', '-n', '-c', 'cli_sink.Sink',
            '--production', '--esmtp', 'all',
            '--tls-cert', stack['cert'], '--tls-key', stack['key'], '--require-starttls',
            '--auth-file', stack['auth'], '--auth-required']
    if srv.name == 'ours-threads':
        argv += ['--threads', str(args.threads)]
    if args.stack_log_level:
        argv += ['--log-level', args.stack_log_level]
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [os.path.join(HERE, 'peers')] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    # python -m finds smtpd_compat in its working directory first: this
    # tree, or the baseline's.
    return Server(srv.name, argv, srv.note, cli=True,
                  popen={'cwd': getattr(srv, 'tree', ROOT), 'env': env})


def baseline_tree(rev, tmpdir):
    """(name, directory) of smtpd_compat at ``rev``: the path itself when
    it is a checkout (named by its last component), else the git revision
    exported into ``tmpdir``."""
    if os.path.isdir(rev):
        tree = os.path.abspath(rev)
    else:
        tree = os.path.join(tmpdir, 'baseline')
        os.makedirs(tree)
        archive = subprocess.run(['git', '-C', ROOT, 'archive', rev],
                                 capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', tree], input=archive, check=True)
    if not os.path.exists(os.path.join(tree, 'benchmarks', 'peers', 'sink.py')):
        raise SystemExit('--baseline %s: no benchmarks/peers/sink.py there' % rev)
    return os.path.basename(os.path.normpath(rev)), tree


def case_arguments(doc, cases, timeout, timeout_help, quick_help, argv=None,
                   extra=lambda parser: None):
    """The command line the adversarial case benchmarks share
    (adversarial.py, web_hostile.py): --baseline, --cases, --python,
    --timeout, --quick, and what ``extra`` adds.  ``args.cases`` comes back
    as a list of known case names."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    parser.add_argument('--baseline', help='git revision or checkout to compare with')
    parser.add_argument('--cases', default=','.join(cases),
                        help='comma-separated, of: %s' % ', '.join(cases))
    parser.add_argument('--python', default=sys.executable)
    parser.add_argument('--timeout', type=float, default=timeout, help=timeout_help)
    parser.add_argument('--quick', action='store_true', help=quick_help)
    extra(parser)
    args = parser.parse_args(argv)
    args.cases = [c for c in args.cases.split(',') if c]
    unknown = set(args.cases) - set(cases)
    if unknown:
        parser.error('unknown cases: %s' % ', '.join(sorted(unknown)))
    return args


def print_table(header, rows):
    """The machine's load and Python, then a markdown table of ``rows``
    (tuples of strings) under ``header``."""
    print('Load average at the end: %.1f %.1f %.1f (%d CPUs); Python %s'
          % (os.getloadavg() + (os.cpu_count() or 0, sys.version.split()[0])))
    print()
    print('| %s |' % ' | '.join(header))
    print('|%s' % ('---|' * len(header)))
    for row in rows:
        print('| %s |' % ' | '.join(row))


def run_one(workload, server, proc, port, args):
    """Run one workload against a started server; returns a dict."""
    s = args.scale
    tl = args.time_limit
    source = loadgen.smtp_source if (loadgen.SMTP_SOURCE and not args.python_loadgen) \
        else loadgen.python_source
    n = lambda x: max(1, int(x * s))   # noqa: E731
    # Server CPU per message: far steadier than throughput on a shared
    # machine (a neighbour's load slows the clock, not the work done).
    cpu_before = proc_cpu(proc.pid)
    # The load generator's too: it shares the machine, so where server and
    # load generator together use all of it, throughput is bounded by
    # their sum, not by the server alone.
    load_before = load_cpu()
    done = None
    if workload == 'W1':
        done, t = source(port, 20, n(6000), 1024, persistent=True, time_limit=tl)
        value = done / t
    elif workload in ('W2', 'W2s'):
        sessions = 20 if workload == 'W2' else 5
        done, t = source(port, sessions, n(1500), 1024, persistent=False, time_limit=tl)
        value = done / t
    elif workload == 'W3':
        done, t = source(port, 4, n(24), 8 * MIB, persistent=True, time_limit=tl)
        value = done * 8 / t
    elif workload == 'W4':
        done, t = source(port, 5, n(400), 1024, rcpts=100, persistent=True, time_limit=tl)
        value = done / t
    elif workload == 'EHLO':
        value = loadgen.ehlo_latency(port, probes=n(30), time_limit=tl)
    elif workload == 'smtplib':
        value, done = loadgen.smtplib_run(port, n(1500), time_limit=tl)
    elif workload == 'W5':
        return run_idle(server, proc, port, args)
    elif workload == 'S50':
        done, t = source(port, 20, n(2000), 1024, persistent=True, time_limit=tl)
        value = done / t
    elif workload == 'W6':
        tls = loadgen.tls_client(args.stack['cert'], STACK_LOGIN, STACK_PASSWORD)
        done, t = loadgen.python_source(port, 20, n(6000), 1024, persistent=True,
                                        time_limit=tl, tls=tls)
        value = done / t
    cpu_after = proc_cpu(proc.pid)
    load_us = (load_cpu() - load_before) / done * 1e6 if done else None
    cpu_us = None
    if done and cpu_before is not None and cpu_after is not None:
        cpu_us = (cpu_after - cpu_before) / done * 1e6
    rss = proc_status(proc.pid, 'VmHWM')
    alive = proc.poll() is None
    return {'value': value, 'rss': rss, 'ok': alive, 'cpu_us': cpu_us,
            'load_us': load_us}


def run_idle(server, proc, port, args):
    """W5: ``args.idle`` connections held by holder processes (at most
    ``args.idle_per_holder`` each, one source address each), then
    ``args.idle_probes`` fresh transactions, one after another; the value
    is their median, and the RSS that of the server's processes (a
    --workers server's parent and workers together) while holding."""
    time_limit = max(20, args.time_limit * 3) + args.idle / 1000
    with loadgen.IdleHolders(port, args.idle, per_holder=args.idle_per_holder,
                             time_limit=time_limit, hold_limit=time_limit + 120,
                             python=sys.executable) as held:
        alive = proc.poll() is None
        samples = [loadgen.transaction_ms(port) for _ in range(args.idle_probes)] \
            if alive else [None]
        rss, workers = tree_rss(proc.pid)
        pss = tree_pss(proc.pid, workers)
        alive = proc.poll() is None
    ok = alive and None not in samples and held.greeted >= args.idle
    good = [x for x in samples if x is not None]
    return {'value': statistics.median(good) if good else float('nan'),
            'probe_max': max(good) if good else None,
            'rss': rss, 'pss': pss, 'ok': ok, 'held': held.greeted,
            'holders': held.counts, 'workers': workers}


def tree_rss(pid):
    """(MiB of VmRSS of ``pid`` and its child processes, [(child pid,
    its VmRSS, its open descriptors)...]): a --workers server's parent and
    workers together."""
    children = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            try:
                fds = len(os.listdir('/proc/%s/fd' % entry))
            except OSError:
                fds = None
            children.append((int(entry), proc_status(int(entry), 'VmRSS'), fds))
    total = proc_status(pid, 'VmRSS')
    if total is not None:
        total += sum(r for _, r, _ in children if r is not None)
    return total, children


def tree_pss(pid, children):
    """MiB of proportional set size (Pss: pages shared after fork() counted
    once in all) of ``pid`` and ``children`` (tree_rss's), or None."""
    total = 0.0
    for p in [pid] + [c[0] for c in children]:
        try:
            with open('/proc/%d/smaps_rollup' % p) as f:
                total += next(int(line.split()[1]) for line in f
                              if line.startswith('Pss:')) / 1024
        except (OSError, StopIteration, ValueError):
            return None
    return total


def idle_server(srv, args):
    """W5's ``ours`` with --idle-workers N: the command line (python -m
    smtpd_compat --workers N, the discarding class of peers/cli_sink.py),
    with no connection limits but the descriptor limit (--workers is
    production mode: 1,000 connections and 50 per address by default)."""
    argv = [args.python, '-m', 'smtpd_compat', '-n', '-c', 'cli_sink.Sink',
            '--workers', str(args.idle_workers),
            '--max-connections', '0', '--max-connections-per-ip', '0',
            '--log-level', 'WARNING']
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [os.path.join(HERE, 'peers')] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    return Server(srv.name, argv, '--workers %d' % args.idle_workers, cli=True,
                  popen={'cwd': getattr(srv, 'tree', ROOT), 'env': env,
                         'start_new_session': True})


def fmt(x, digits=None):
    if x is None or x != x:
        return '—'
    if digits is None:
        digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2
    return '{:,.{}f}'.format(x, digits)


def summarise(results, servers, workloads):
    """{workload: {server: {'value', 'rss', 'ok', ...}}} of medians."""
    table = {}
    for w in workloads:
        table[w] = {}
        for srv in servers:
            runs = results.get((w, srv.name), [])
            if not runs:
                continue
            vals = [r['value'] for r in runs if r['value'] == r['value']]
            rss = [r['rss'] for r in runs if r['rss'] is not None]
            cpu = [r['cpu_us'] for r in runs if r.get('cpu_us') is not None]
            load = [r['load_us'] for r in runs if r.get('load_us') is not None]
            row = {
                'runs': runs,
                'value': statistics.median(vals) if vals else float('nan'),
                'cpu_us': statistics.median(cpu) if cpu else None,
                'load_us': statistics.median(load) if load else None,
                'rss': max(rss) if rss else None,
                'ok': all(r['ok'] for r in runs),
                'n': len(runs),
            }
            if w == 'W5':
                row['held'] = min(r['held'] for r in runs)
                maxes = [r['probe_max'] for r in runs if r.get('probe_max') is not None]
                row['probe_max'] = max(maxes) if maxes else None
            table[w][srv.name] = row
    return table


def _times_better(w, ra, rb):
    """How many times better result ``ra`` is than ``rb`` (each a dict
    with 'value' and 'ok') in workload ``w``, or None when either failed
    or measured nothing."""
    va, vb = ra['value'], rb['value']
    if va != va or vb != vb or not ra['ok'] or not rb['ok'] or not va or not vb:
        return None
    return va / vb if WORKLOADS[w][2] else vb / va


def ratio(table, w, a, b):
    ra, rb = table[w].get(a), table[w].get(b)
    if not ra or not rb:
        return None
    return _times_better(w, ra, rb)


def round_ratios(table, w, a, b):
    """The ratio of ``a`` over ``b`` (as ratio() takes it) in each round
    both ran well: the rounds interleave the servers, so each ratio
    compares two runs made moments apart."""
    ra, rb = table[w].get(a), table[w].get(b)
    if not ra or not rb:
        return []
    pairs = (_times_better(w, x, y) for x, y in zip(ra['runs'], rb['runs']))
    return [r for r in pairs if r is not None]


def spread(ratios):
    """'median (interquartile range; lowest--highest)' of ``ratios``."""
    low, mid, high = statistics.quantiles(ratios, n=4, method='inclusive')
    return '%.2f× (%.2f–%.2f; %.2f–%.2f)' % (mid, low, high, min(ratios), max(ratios))


def cpu_ratio(table, w, a, b):
    """How many times less server CPU per message ``a`` used than ``b``."""
    ra, rb = table[w].get(a), table[w].get(b)
    if not ra or not rb or not ra.get('cpu_us') or not rb.get('cpu_us'):
        return None
    return rb['cpu_us'] / ra['cpu_us']


def ratio_pairs(servers):
    """The (a, b) pairs shown as "a / b" ratio columns."""
    names = [s.name for s in servers]
    pairs = [('ours', 'stdlib'), ('ours', 'aiosmtpd')]
    pairs += [('ours', n) for n in names if n.startswith('ours@')]
    if 'ours-threads' in names:
        pairs += [('ours-threads', 'ours'), ('ours-threads', 'aiosmtpd')]
    return pairs


def markdown(table, servers, workloads, meta):
    names = [s.name for s in servers]
    pairs = ratio_pairs(servers)
    lines = ['# smtpd_compat benchmark', '', meta, '',
             '| workload | unit | ' + ' | '.join(names)
             + ''.join(' | %s / %s' % p for p in pairs)
             + ' | peak RSS MiB (' + ', '.join(names) + ') |',
             '|' + '---|' * (len(names) + len(pairs) + 3)]
    for w in workloads:
        title, unit, _ = WORKLOADS[w]
        cells = []
        for n in names:
            row = table[w].get(n)
            if row is None and w == 'W6' and n in STACK_NOT_APPLICABLE:
                cells.append(STACK_NOT_APPLICABLE[n])
            elif row is None:
                cells.append('—')
            elif w == 'W5':
                if row['ok']:
                    cells.append('%s held, %s ms (max %s)' % (
                        fmt(row['held'], 0), fmt(row['value']), fmt(row.get('probe_max'))))
                else:
                    cells.append('**failed** (%s greeted)' % fmt(row['held'], 0))
            else:
                cells.append(fmt(row['value']) + ('' if row['ok'] else ' (died)'))
        rs = []
        for mine, other in pairs:
            r = ratio(table, w, mine, other)
            if w == 'W5' and r is None and table[w].get(mine, {}).get('ok') \
                    and other in table[w]:
                rs.append('∞ (it failed)' if not table[w][other]['ok'] else '—')
            else:
                rs.append('—' if r is None else '%.2f×' % r)
        rss = ', '.join(fmt(table[w][n]['rss'], 0) if n in table[w] else '—' for n in names)
        lines.append('| %s: %s | %s | %s | %s | %s |' % (
            w, title, unit, ' | '.join(cells), ' | '.join(rs), rss))
    lines += ['', 'Ratios are "times better" (for ms: the other\'s time / ours). '
              'W5 RSS is the server\'s RSS while holding the idle connections '
              '(with --idle-workers: its parent\'s and workers\' together), '
              'W5 "max" the slowest fresh transaction; '
              'other RSS figures are the peak (VmHWM) of the server process.', '']
    # How far a ratio moves from round to round (three rounds at least):
    # whether a median near a target is on its side of it.
    spread_rows = []
    for w in workloads:
        cells = []
        for mine, other in pairs:
            ratios = round_ratios(table, w, mine, other)
            cells.append(spread(ratios) if len(ratios) >= 3 else '—')
        if any(c != '—' for c in cells):
            spread_rows.append('| %s | %s |' % (w, ' | '.join(cells)))
    if spread_rows:
        lines += ['The ratios round by round (each round runs every server '
                  'once, one after another): median (interquartile range; '
                  'lowest–highest).', '',
                  '| workload' + ''.join(' | %s / %s' % p for p in pairs) + ' |',
                  '|' + '---|' * (len(pairs) + 1)] + spread_rows + ['']
    # A row for every workload measured (0 means less than one clock
    # tick of CPU time: a run too short to say).
    cpu_rows = [w for w in workloads
                if any(table[w].get(n, {}).get('cpu_us') is not None for n in names)]
    if cpu_rows:
        lines += ['Server CPU (user + system) per message, µs, median: steadier '
                  'than throughput when other work shares the machine. Ratios '
                  'are "times less CPU"; 0 is less than one clock tick (a run '
                  'too short to tell).', '',
                  '| workload | ' + ' | '.join(names)
                  + ''.join(' | %s / %s' % p for p in pairs) + ' |',
                  '|' + '---|' * (len(names) + len(pairs) + 1)]
        for w in cpu_rows:
            cells = [fmt(table[w].get(n, {}).get('cpu_us')) for n in names]
            rs = []
            for mine, other in pairs:
                r = cpu_ratio(table, w, mine, other)
                rs.append('—' if r is None else '%.2f×' % r)
            lines.append('| %s | %s | %s |' % (w, ' | '.join(cells), ' | '.join(rs)))
        lines.append('')
        lines += ['Load generator CPU per message, µs, median, and the share of '
                  'the machine\'s %d CPUs that server and load generator '
                  'together kept busy (near 100%%, throughput is bounded by '
                  'their sum: a server using less CPU gains less than in '
                  'proportion).' % CPUS, '',
                  '| workload | ' + ' | '.join(names) + ' |',
                  '|' + '---|' * (len(names) + 1)]
        for w in cpu_rows:
            cells = []
            for n in names:
                row = table[w].get(n, {})
                cells.append(_load_cell(row, w))
            lines.append('| %s | %s |' % (w, ' | '.join(cells)))
        lines.append('')
    return '\n'.join(lines)


CPUS = os.cpu_count() or 1


def _load_cell(row, w):
    """A load-generator cell: its CPU per message, and the machine share
    of server and load generator at the measured throughput."""
    load, cpu, value = row.get('load_us'), row.get('cpu_us'), row.get('value')
    if load is None:
        return '—'
    if cpu is None or not value or value != value or WORKLOADS[w][1] != 'msg/s':
        return fmt(load)
    busy = (cpu + load) * value / 1e6 / CPUS
    return '%s (%.0f%%)' % (fmt(load), 100 * busy)


def chart(table, servers, workloads, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    others = [s.name for s in servers if s.name != 'stdlib']
    ws = [w for w in workloads if w != 'W5' and 'stdlib' in table[w]]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(others))
    for i, name in enumerate(others):
        vals = []
        for w in ws:
            r = ratio(table, w, name, 'stdlib')
            vals.append(r if r else 0)
        xs = [j + i * width for j in range(len(ws))]
        ax.bar(xs, vals, width, label=name)
    ax.axhline(1.0, color='black', linewidth=0.8)
    ax.set_yscale('log')
    ax.set_xticks([j + width * (len(others) - 1) / 2 for j in range(len(ws))])
    ax.set_xticklabels(ws)
    ax.set_ylabel('times the stdlib smtpd (log scale, higher is better)')
    ax.set_title('SMTP server throughput and latency relative to Python 3.11 smtpd')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--scale', type=float, default=1.0,
                   help='multiply every message count (0.01 for a smoke run)')
    p.add_argument('--time-limit', type=float, default=6.0,
                   help='seconds allowed per workload run')
    p.add_argument('--idle', type=int, default=10000, help='W5 connections')
    p.add_argument('--idle-per-holder', type=int, default=10000,
                   help='W5: connections per holder process, each from its own '
                        'source address 127.0.0.2, 127.0.0.3, ... (default 10000; '
                        'keep it under the descriptor limit and the ~28,000 '
                        'ephemeral ports)')
    p.add_argument('--idle-probes', type=int, default=20,
                   help='W5: fresh transactions made while the connections are '
                        'held (default 20; the median and the slowest are shown)')
    p.add_argument('--idle-workers', type=int, default=0, metavar='N',
                   help='W5: run ours as python -m smtpd_compat --workers N '
                        '(N processes, each under the descriptor limit)')
    p.add_argument('--workloads',
                   default=','.join(w for w in WORKLOADS if w not in OPT_IN_WORKLOADS))
    p.add_argument('--servers', default='ours,stdlib,aiosmtpd,smtp-sink')
    p.add_argument('--python', default=sys.executable, help='interpreter for ours')
    p.add_argument('--threads', type=int, default=8,
                   help='worker threads of the ours-threads server (default 8)')
    p.add_argument('--stack-log-level', metavar='LEVEL',
                   help="W6: run ours with --log-level LEVEL (WARNING: no "
                        "line per message, as aiosmtpd logs none there); "
                        "default --production's INFO")
    p.add_argument('--stdlib-python', default='python3.11')
    p.add_argument('--aiosmtpd-python',
                   default=os.environ.get('SMTPD_COMPAT_AIOSMTPD_PYTHON',
                                          '/tmp/aiosmtpd-venv/bin/python'))
    p.add_argument('--no-smtp-sink', dest='smtp_sink', action='store_false')
    p.add_argument('--python-loadgen', action='store_true',
                   help='use the built-in load generator even if smtp-source exists')
    p.add_argument('--out', default=os.path.join(HERE, 'results'))
    p.add_argument('--docs', action='store_true',
                   help='also copy the table and chart into docs/')
    p.add_argument('--baseline', metavar='REV',
                   help='also run ours from this git revision (or checkout '
                        'directory) as "ours@REV", interleaved with the rest')
    args = p.parse_args(argv)

    # Each idle connection is one fd in a holder process and one in the
    # server (children inherit the raised limit).
    raise_fd_limit()
    workloads = [w for w in args.workloads.split(',') if w]
    for w in workloads:
        if w not in WORKLOADS:
            p.error('unknown workload %r' % w)
    wanted = args.servers.split(',')
    os.makedirs(args.out, exist_ok=True)
    results = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='smtpd-bench-') as tmpdir:
        args.baseline_tree = None
        if args.baseline:
            args.baseline, args.baseline_tree = baseline_tree(args.baseline, tmpdir)
            wanted.append('ours@' + args.baseline)
        servers, notes = find_servers(args)
        servers = [s for s in servers if s.name in wanted]
        args.stack = make_stack(tmpdir) if 'W6' in workloads else None
        if 'W6' in workloads and args.stack is None:
            notes.append('W6 skipped: no openssl to make its certificate')
            workloads.remove('W6')
        for rnd in range(args.rounds):
            for w in workloads:
                for peer in servers:
                    if w == 'W5' and peer.name == 'smtp-sink':
                        continue    # smtp-sink closes idle sessions itself
                    srv = stack_server(peer, args, args.stack) if w == 'W6' else peer
                    if w == 'W5' and args.idle_workers and peer.name == 'ours':
                        srv = idle_server(peer, args)
                    if srv is None:
                        continue    # no TLS: the table says n/a
                    extra = ()
                    if w in SLEEP:
                        if srv.name == 'smtp-sink':
                            continue    # it has no handler that could sleep
                        extra = ('--sleep', str(SLEEP[w]))
                    proc, port = srv.start(tmpdir, extra)
                    try:
                        r = run_one(w, srv, proc, port, args)
                    except Exception as e:   # a peer that falls over is a result
                        r = {'value': float('nan'), 'rss': None, 'ok': False, 'held': 0,
                             'error': repr(e)}
                    finally:
                        stop(proc)
                    results.setdefault((w, srv.name), []).append(r)
                    print('round %d %-7s %-9s %s' % (rnd + 1, w, srv.name,
                          {k: (round(v, 2) if isinstance(v, float) else v)
                           for k, v in r.items()}), flush=True)
    elapsed = time.monotonic() - started
    table = summarise(results, servers, workloads)
    gen = 'smtp-source' if loadgen.SMTP_SOURCE and not args.python_loadgen else 'python loadgen'
    if 'W6' in workloads:
        gen += ' (W6: python loadgen with STARTTLS and AUTH PLAIN)'
    cmd = 'python%d.%d benchmarks/run.py %s' % (sys.version_info[:2] + (' '.join(argv if argv is not None else sys.argv[1:]),))
    meta = ('Command: `%s`  \nDate: %s; load generator: %s; %d round(s), medians; '
            'servers: %s; %d CPUs; took %.0f s.%s' % (
                cmd.strip(), datetime.datetime.now().strftime('%Y-%m-%d %H:%M'), gen,
                args.rounds, ', '.join('%s%s' % (s.name, ' ' + s.note if s.note else '')
                                       for s in servers),
                os.cpu_count(), elapsed,
                ''.join('  \nNote: ' + n for n in notes)))
    md = markdown(table, servers, workloads, meta)
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    for name in ('latest.md', 'results-%s.md' % stamp):
        with open(os.path.join(args.out, name), 'w') as f:
            f.write(md)
    png = os.path.join(args.out, 'chart.png')
    drew = chart(table, servers, workloads, png)
    print(md)
    if args.docs:
        static = os.path.join(ROOT, 'docs', '_static')
        os.makedirs(static, exist_ok=True)
        if drew:
            shutil.copy(png, os.path.join(static, 'performance.png'))
        shutil.copy(os.path.join(args.out, 'latest.md'),
                    os.path.join(static, 'performance-results.md'))
    return 0


if __name__ == '__main__':
    sys.exit(main())

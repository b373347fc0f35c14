#!/usr/bin/env python3
"""Instructions per message, counted by valgrind: a speed comparison that
other load on the machine does not disturb.

    python3.11 benchmarks/instructions.py --baseline b3fed92 [--workloads W1,W2s,W4]

Throughput on a shared machine moves by 10-30% between runs of the same
code, so a change of a few percent cannot be seen in run.py's tables.
Here the sink (peers/sink.py, the same one run.py measures) runs under
``valgrind --tool=callgrind`` while smtp-source sends it a workload
twice, with a small and a larger message count; the difference of the two
totals divided by the difference of the counts is the cost of one message
in the server process (start-up, imports and connection set-up cancel
out; in W2s every message has a connection of its own, which counts).  Repeated runs agree to within about 2%.  Kernel work (the system calls) is
not counted; it is the same for every revision that makes the same calls
(strace -c shows it).  Needs valgrind and Postfix's smtp-source.

W6 is run.py's capability stack: the command line (``python -m
smtpd_compat --production --esmtp all`` with STARTTLS and AUTH, built by
run.py's ``stack_server``) under valgrind, driven by loadgen's
python_source over TLS: every session says STARTTLS and AUTH PLAIN once,
which the difference of the two runs cancels out, as it does the
handshakes.  Needs openssl (run.py's ``make_stack``).
"""
import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
from run import (STACK_LOGIN, STACK_PASSWORD, Server, baseline_tree,  # noqa: E402
                 make_stack, stack_server, stop)

# name: (sessions, recipients, smaller count, larger count, persistent,
#        message size)
WORKLOADS = {
    'W1': (20, 1, 100, 600, True, 1024),
    # A connection per message: its set-up and close are part of the cost.
    'W2s': (5, 1, 100, 400, False, 1024),
    'W3': (4, 1, 4, 12, True, 8 * 1024 * 1024),
    'W4': (5, 100, 10, 60, True, 1024),
    # The command line's capability stack over TLS (see the docstring).
    'W6': (20, 1, 100, 500, True, 1024),
}
# The workloads run on the command line's stack, by the Python client.
STACK_WORKLOADS = ('W6',)
# The system allocator: valgrind follows it well (3.13's mimalloc makes
# runs crawl); the same for every revision compared.
VALGRIND_ENV = {'PYTHONMALLOC': 'malloc'}
VALGRIND = ['valgrind', '--tool=callgrind', '--callgrind-out-file=/dev/null']


def _sigint_default():
    # SIGINT ends the sink (KeyboardInterrupt), also when this script runs
    # in the background, where a shell ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# How many sessions of a stack workload say STARTTLS and AUTH at once.
# The AUTH throttle counts a password check in flight as a failure until
# it succeeds, and under valgrind a check is slow: with all 20 sessions
# authenticating together, the eleventh from 127.0.0.1 was answered 454
# and its session lost (a varying number of handshakes, which the
# difference of two runs would not cancel).
STACK_LOGINS_AT_ONCE = 4


@contextlib.contextmanager
def _paced_logins():
    """loadgen's sessions say STARTTLS and AUTH at most
    STACK_LOGINS_AT_ONCE at a time (the messages that follow are not
    paced)."""
    original = loadgen._starttls_auth
    gate = threading.Semaphore(STACK_LOGINS_AT_ONCE)

    def paced(*args):
        with gate:
            return original(*args)

    loadgen._starttls_auth = paced
    try:
        yield
    finally:
        loadgen._starttls_auth = original


def _collected(err):
    found = re.search(r'Collected : (\d+)', err)
    if not found:
        raise RuntimeError('no count from valgrind: %s' % err[-500:])
    return int(found.group(1))


def count(tree, python, workload, messages, tmpdir):
    """Instructions valgrind counted in the sink of ``tree`` while it took
    ``messages`` messages of ``workload``."""
    if workload in STACK_WORKLOADS:
        return count_stack(tree, python, workload, messages, tmpdir)
    sessions, rcpts, _, _, persistent, size = WORKLOADS[workload]
    sink = Server('sink', VALGRIND + [python, os.path.join(tree, 'benchmarks', 'peers',
                                                            'sink.py'), 'ours'])
    proc, port = sink.start(tmpdir, wait=120, env=dict(os.environ, **VALGRIND_ENV),
                            preexec_fn=_sigint_default)
    try:
        done, _ = loadgen.smtp_source(port, sessions, messages, size, rcpts=rcpts,
                                      persistent=persistent, time_limit=600)
        if done != messages:
            raise RuntimeError('%d of %d messages went through' % (done, messages))
        proc.send_signal(signal.SIGINT)     # the sink exits; valgrind reports
        err = proc.communicate(timeout=120)[1].decode(errors='replace')
    finally:
        stop(proc)      # kills it only if it is still running
    return _collected(err)


def count_stack(tree, python, workload, messages, tmpdir):
    """``count`` for a workload of the command line's stack: run.py's
    ``stack_server`` for ``tree`` under valgrind (its stderr, where
    valgrind reports, goes to a log file in ``tmpdir``), driven over TLS
    by loadgen's python_source."""
    sessions, rcpts, _, _, persistent, size = WORKLOADS[workload]
    stack = make_stack(tmpdir)
    if stack is None:
        raise RuntimeError('%s needs openssl' % workload)
    peer = Server('ours', [])
    peer.tree = tree
    srv = stack_server(peer, argparse.Namespace(python=python, threads=0), stack)
    srv.argv = VALGRIND + srv.argv
    srv.popen['env'].update(VALGRIND_ENV)
    proc, port = srv.start(tmpdir, wait=180, preexec_fn=_sigint_default)
    try:
        tls = loadgen.tls_client(stack['cert'], STACK_LOGIN, STACK_PASSWORD)
        with _paced_logins():
            done, _ = loadgen.python_source(port, sessions, messages, size, rcpts=rcpts,
                                            persistent=persistent, time_limit=600, tls=tls)
        if done != messages:
            raise RuntimeError('%d of %d messages went through' % (done, messages))
        proc.send_signal(signal.SIGINT)     # the server exits; valgrind reports
        proc.wait(timeout=120)
    finally:
        stop(proc)
    with open(os.path.join(tmpdir, srv.name + '.log'), 'rb') as f:
        return _collected(f.read().decode(errors='replace'))


def per_message(tree, python, workload, tmpdir):
    small, large = WORKLOADS[workload][2:4]
    a = count(tree, python, workload, small, tmpdir)
    b = count(tree, python, workload, large, tmpdir)
    return (b - a) / (large - small)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--baseline', metavar='REV',
                   help='git revision (or checkout directory) to compare with')
    p.add_argument('--workloads', default='W1,W2s,W4')
    p.add_argument('--python', default=sys.executable, help='interpreter for the sinks')
    args = p.parse_args(argv)
    for tool in ('valgrind',):
        if not shutil.which(tool):
            p.error('%s is not installed' % tool)
    workloads = [w for w in args.workloads.split(',') if w]
    if not loadgen.SMTP_SOURCE and set(workloads) - set(STACK_WORKLOADS):
        p.error("Postfix's smtp-source is not installed")
    if set(workloads) & set(STACK_WORKLOADS) and not shutil.which('openssl'):
        p.error('openssl is not installed (%s)' % ', '.join(STACK_WORKLOADS))
    for w in workloads:
        if w not in WORKLOADS:
            p.error('unknown workload %r (have: %s)' % (w, ', '.join(WORKLOADS)))
    with tempfile.TemporaryDirectory(prefix='smtpd-instr-') as tmpdir:
        trees = [('ours', ROOT)]
        if args.baseline:
            name, tree = baseline_tree(args.baseline, tmpdir)
            trees.append(('ours@' + name, tree))
        rows = []
        for w in workloads:
            values = [per_message(tree, args.python, w, tmpdir) for _, tree in trees]
            rows.append((w, values))
            print(w, ' '.join('%s=%.0f' % (n, v) for (n, _), v in zip(trees, values)),
                  flush=True)
    names = [n for n, _ in trees]
    lines = ['', 'Instructions per message in the server (valgrind; %s)'
             % os.path.basename(args.python), '',
             '| workload | ' + ' | '.join(names)
             + (' | %s / %s' % tuple(names) if len(names) == 2 else '') + ' |',
             '|' + '---|' * (len(names) + (2 if len(names) == 2 else 1))]
    for w, values in rows:
        cells = ['{:,.0f}'.format(v) for v in values]
        if len(values) == 2:
            cells.append('%.3f' % (values[0] / values[1]))
        lines.append('| %s | %s |' % (w, ' | '.join(cells)))
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())

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
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
from run import Server, baseline_tree, stop  # noqa: E402

# name: (sessions, recipients, smaller count, larger count, persistent,
#        message size)
WORKLOADS = {
    'W1': (20, 1, 100, 600, True, 1024),
    # A connection per message: its set-up and close are part of the cost.
    'W2s': (5, 1, 100, 400, False, 1024),
    'W3': (4, 1, 4, 12, True, 8 * 1024 * 1024),
    'W4': (5, 100, 10, 60, True, 1024),
}


def count(tree, python, workload, messages, tmpdir):
    """Instructions valgrind counted in the sink of ``tree`` while it took
    ``messages`` messages of ``workload``."""
    sessions, rcpts, _, _, persistent, size = WORKLOADS[workload]
    sink = Server('sink', ['valgrind', '--tool=callgrind', '--callgrind-out-file=/dev/null',
                           python, os.path.join(tree, 'benchmarks', 'peers', 'sink.py'),
                           'ours'])
    proc, port = sink.start(
        tmpdir, wait=120,
        # The system allocator: valgrind follows it well (3.13's mimalloc
        # makes runs crawl); the same for every revision compared.
        env=dict(os.environ, PYTHONMALLOC='malloc'),
        # SIGINT ends the sink (KeyboardInterrupt), also when this script
        # runs in the background, where a shell ignores SIGINT.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        done, _ = loadgen.smtp_source(port, sessions, messages, size, rcpts=rcpts,
                                      persistent=persistent, time_limit=600)
        if done != messages:
            raise RuntimeError('%d of %d messages went through' % (done, messages))
        proc.send_signal(signal.SIGINT)     # the sink exits; valgrind reports
        err = proc.communicate(timeout=120)[1].decode(errors='replace')
    finally:
        stop(proc)      # kills it only if it is still running
    found = re.search(r'Collected : (\d+)', err)
    if not found:
        raise RuntimeError('no count from valgrind: %s' % err[-500:])
    return int(found.group(1))


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
    if not loadgen.SMTP_SOURCE:
        p.error("Postfix's smtp-source is not installed")
    workloads = [w for w in args.workloads.split(',') if w]
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

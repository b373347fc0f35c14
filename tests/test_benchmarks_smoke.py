"""A smoke run of benchmarks/run.py with tiny counts: the runner, both load
generators and the peers still work.  Peers that are not installed
(stdlib smtpd on 3.12+, aiosmtpd, smtp-sink) are skipped by the runner."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, 'benchmarks', 'run.py')


@pytest.mark.parametrize('loadgen', ['python', 'default'])
def test_runner_smoke(tmp_path, python_path_env, loadgen):
    args = [sys.executable, RUN, '--rounds', '1', '--scale', '0.002',
            '--time-limit', '3', '--idle', '30', '--no-smtp-sink',
            '--servers', 'ours,stdlib', '--out', str(tmp_path)]
    if loadgen == 'python':
        args.append('--python-loadgen')
    else:
        # smtp-source when installed; a second pass over the Python one
        # otherwise, restricted to the cheap workloads.
        args += ['--workloads', 'W1,W2s,EHLO']
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env=python_path_env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / 'latest.md') as f:
        table = f.read()
    assert table.strip() == proc.stdout[proc.stdout.index('# smtpd_compat benchmark'):].strip()
    rows = {m.group(1): m.group(0) for m in
            re.finditer(r'^\| (\w+): .*$', table, re.M)}
    wanted = ['W1', 'W2', 'W2s', 'W3', 'W4', 'EHLO', 'smtplib', 'W5', 'W6'] \
        if loadgen == 'python' else ['W1', 'W2s', 'EHLO']
    assert sorted(rows) == sorted(wanted)
    for name in wanted:
        ours = rows[name].split(' | ')[2]
        assert ours not in ('—', '') and 'died' not in ours and 'failed' not in ours, rows[name]
    if loadgen == 'python':
        assert '30 held' in rows['W5']
        # W6 (STARTTLS, AUTH PLAIN, the production command line): ours
        # delivered messages (a refused STARTTLS or AUTH ends a session
        # before its first one); the stdlib, which has no TLS, is not
        # applicable.
        assert float(rows['W6'].split(' | ')[2].replace(',', '')) > 0, rows['W6']
        header = next(line for line in table.splitlines() if line.startswith('| workload | unit'))
        if '| stdlib |' in header:
            assert rows['W6'].split(' | ')[header.split(' | ').index('stdlib')] == 'n/a (no TLS)'
        if importlib.util.find_spec('matplotlib') is not None:
            assert (tmp_path / 'chart.png').stat().st_size > 1000


@pytest.mark.parametrize('baseline', ['HEAD', 'checkout'])
def test_runner_baseline(tmp_path, python_path_env, baseline):
    """--baseline runs ours from another revision in the same run: a git
    revision (exported with git archive) or a checkout directory."""
    if baseline == 'HEAD' and not os.path.exists(os.path.join(ROOT, '.git')):
        pytest.skip('not a git checkout')
    rev = ROOT if baseline == 'checkout' else 'HEAD'
    name = 'ours@' + (os.path.basename(ROOT) if baseline == 'checkout' else 'HEAD')
    args = [sys.executable, RUN, '--rounds', '1', '--scale', '0.01',
            '--time-limit', '5', '--no-smtp-sink', '--python-loadgen',
            '--servers', 'ours', '--workloads', 'W1,smtplib',
            '--baseline', rev, '--out', str(tmp_path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env=python_path_env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / 'latest.md').read_text()
    header = next(line for line in table.splitlines() if line.startswith('| workload | unit'))
    assert '| ours | %s |' % name in header
    assert 'ours / %s' % name in header
    w1 = next(line for line in table.splitlines() if line.startswith('| W1: '))
    cells = w1.split(' | ')
    assert cells[2] not in ('—', '') and cells[3] not in ('—', ''), w1
    ratio = cells[header.split(' | ').index('ours / %s' % name)]
    assert re.fullmatch(r'\d+\.\d\d×', ratio), w1
    # The CPU table: a row per message-counting workload, both servers.
    server_cpu, load_cpu = table.split('Load generator CPU per message')
    cpu_rows = {m.group(1): m.group(0) for m in
                re.finditer(r'^\| (W1|smtplib) \| .*$', server_cpu, re.M)}
    assert sorted(cpu_rows) == ['W1', 'smtplib']
    for row in cpu_rows.values():
        ours, theirs = row.split(' | ')[1:3]
        assert re.fullmatch(r'[\d,.]+', ours) and re.fullmatch(r'[\d,.]+', theirs), row
    # The load generator's table: its CPU per message in each server's run,
    # and for workloads counted in msg/s the share of the machine busy.
    load_rows = {m.group(1): m.group(0) for m in
                 re.finditer(r'^\| (W1|smtplib) \| .*$', load_cpu, re.M)}
    assert sorted(load_rows) == ['W1', 'smtplib']
    for row in load_rows.values():
        for cell in row.rstrip(' |').split(' | ')[1:3]:
            assert re.fullmatch(r'[\d,.]+ \(\d+%\)', cell), row


def _run_module():
    spec = importlib.util.spec_from_file_location('bench_run', RUN)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(RUN))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(RUN))
    return module


def test_ratios_round_by_round():
    """From three rounds on, the table gives each ratio's spread over the
    rounds: median, interquartile range, lowest and highest; a round in
    which either server failed is left out."""
    run = _run_module()

    def runs(*values):
        return [{'value': v, 'ok': v is not None, 'rss': None} for v in values]

    table = {'W6': {'ours': {'runs': runs(10, 11, 12, 13, 9)},
                    'aiosmtpd': {'runs': runs(5, 5, 6, 5, None)}},
             'W1': {'ours': {'runs': runs(8)}, 'aiosmtpd': {'runs': runs(4)}}}
    assert run.round_ratios(table, 'W6', 'ours', 'aiosmtpd') == [2.0, 2.2, 2.0, 2.6]
    assert run.spread([2.0, 2.2, 2.0, 2.6]) == '2.10× (2.00–2.30; 2.00–2.60)'
    for w in table:
        for row in table[w].values():
            values = [r['value'] for r in row['runs'] if r['ok']]
            row.update(value=sorted(values)[len(values) // 2], ok=True, rss=None)
    servers = [run.Server('ours', []), run.Server('aiosmtpd', [])]
    text = run.markdown(table, servers, ['W1', 'W6'], 'meta')
    section = text.split('The ratios round by round')[1]
    rows = [line for line in section.splitlines() if line.startswith('| W')]
    # W1 had one round: no row.
    assert rows == ['| W6 | — | 2.10× (2.00–2.30; 2.00–2.60) |']


def test_stack_log_level_reaches_ours_w6_command_line_only():
    """--stack-log-level adds --log-level to ours' W6 command line (not to
    aiosmtpd's); without it the command line is --production's as ever."""
    run = _run_module()
    stack = {'cert': 'c.pem', 'key': 'k.pem', 'server': 's.pem', 'auth': 'users'}

    def argv(name, level):
        args = run.argparse.Namespace(python='py', threads=8, stack_log_level=level)
        return run.stack_server(run.Server(name, ['x']), args, stack).argv

    assert argv('ours', 'WARNING')[-2:] == ['--log-level', 'WARNING']
    assert '--log-level' not in argv('ours', None)
    assert '--production' in argv('ours', None)
    assert '--log-level' not in argv('aiosmtpd', 'WARNING')

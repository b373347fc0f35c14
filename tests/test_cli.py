"""``python -m smtpd_compat`` as a subprocess: help, version, argument
errors and exit codes as in CPython 3.11's ``python -m smtpd``, a real
message through ``-n -c DebuggingServer``, quiet exit on SIGTERM/SIGINT."""
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import textwrap

import pytest


def run_cli(env, *args, timeout=30):
    return subprocess.run([sys.executable, '-m', 'smtpd_compat'] + list(args),
                          env=env, capture_output=True, text=True, timeout=timeout)


def _reference_help():
    """``python -m smtpd -h`` from a CPython that still has smtpd (this one
    on <= 3.11, else python3.11 from PATH), run outside the checkout so the
    stdlib module is the one that answers."""
    if sys.version_info < (3, 12):
        python = sys.executable
    else:
        python = shutil.which('python3.11')
        if python is None:
            pytest.skip('no Python <= 3.11 on PATH to take the stdlib help text from')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run([python, '-W', 'ignore', '-m', 'smtpd', '-h'], cwd='/',
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    return out.stderr


def _without_program_line(text):
    return [l for l in text.splitlines() if not l.startswith('Usage: ')]


def test_help_matches_stdlib(python_path_env):
    ours = run_cli(python_path_env, '-h')
    assert ours.returncode == 0
    assert ours.stdout == ''
    reference = _without_program_line(_reference_help())
    lines = _without_program_line(ours.stderr)
    # The stdlib's text first, unchanged; capability options may follow.
    assert lines[:len(reference)] == reference
    assert any(l.startswith('Usage: ') and l.endswith(
        ' [options] [localhost:localport [remotehost:remoteport]]')
        for l in ours.stderr.splitlines())
    assert '--nosetuid' in ours.stderr and 'Version: Python SMTP proxy version 0.3' in ours.stderr


def test_long_help(python_path_env):
    assert run_cli(python_path_env, '--help').stderr == run_cli(python_path_env, '-h').stderr


@pytest.mark.parametrize('flag', ['-V', '--version'])
def test_version(python_path_env, flag):
    out = run_cli(python_path_env, flag)
    assert (out.returncode, out.stdout, out.stderr) == (0, 'Python SMTP proxy version 0.3\n', '')


@pytest.mark.parametrize('args,message', [
    (['-n', 'nocolon'], 'Bad local spec: nocolon'),
    (['-n', 'h:1', 'nocolon'], 'Bad remote spec: nocolon'),
    (['-n', 'h:x'], 'Bad local port: h:x'),
    (['-n', 'h:1', 'r:y'], 'Bad remote port: r:y'),
    (['-n', 'a:1', 'b:2', 'c:3'], 'Invalid arguments: a:1, b:2, c:3'),
    (['--bogus'], 'option --bogus not recognized'),
    (['-Z'], 'option -Z not recognized'),
    (['-c'], 'option -c requires argument'),
], ids=['local-spec', 'remote-spec', 'local-port', 'remote-port', 'too-many',
        'long-option', 'short-option', 'missing-value'])
def test_bad_arguments_print_usage_and_exit_1(python_path_env, args, message):
    out = run_cli(python_path_env, *args)
    assert out.returncode == 1
    assert out.stdout == ''
    assert out.stderr.rstrip('\n').splitlines()[-1] == message
    assert 'Usage: ' in out.stderr


def test_invalid_size(python_path_env):
    out = run_cli(python_path_env, '-s', 'lots')
    # Only the message, no usage text (as in the stdlib).
    assert (out.returncode, out.stdout, out.stderr) == (1, '', 'Invalid size: lots\n')


def _stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


MESSAGE = b'From: a@example.org\r\nSubject: cli\r\n\r\nbody line\r\n.leading dot\r\n'


@pytest.fixture
def sigint_default_in_children():
    """Start children with SIGINT at its default disposition.

    A child inherits an *ignored* SIGINT (a non-interactive shell starts
    background jobs that way: ``tox &`` in a CI script), and Python then
    installs no KeyboardInterrupt handler, so the server would rightly keep
    ignoring Ctrl-C.  The SIGINT test is about the server, not about how the
    test run was started: while a Python-level handler is set here, exec()
    resets SIGINT to SIG_DFL in the child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_debugging_server_prints_message_and_exits_quietly(cli_server, sig,
                                                           sigint_default_in_children):
    proc, port = cli_server('-c', 'DebuggingServer')
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        # Like the stdlib's CLI, no SIZE unless -s is given (the server gets
        # data_size_limit=None), so smtplib sends no MAIL options.
        client.ehlo()
        assert 'size' not in client.esmtp_features
        assert client.sendmail('a@example.org', ['b@example.net'], MESSAGE) == {}
    out, err = _stop(proc, sig)
    assert proc.returncode == 0
    assert err == ''
    assert out == (
        "---------- MESSAGE FOLLOWS ----------\n"
        "b'From: a@example.org'\n"
        "b'Subject: cli'\n"
        "b'X-Peer: 127.0.0.1'\n"
        "b''\n"
        "b'body line'\n"
        "b'.leading dot'\n"
        "------------ END MESSAGE ------------\n")


def test_smtputf8_flag(cli_server):
    proc, port = cli_server('-u', '-c', 'DebuggingServer')
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        code, text = client.ehlo()
        assert b'SMTPUTF8' in text
    _stop(proc)
    assert proc.returncode == 0


def test_size_flag(cli_server):
    proc, port = cli_server('-s', '1000', '-c', 'DebuggingServer')
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        client.ehlo()
        assert client.esmtp_features['size'] == '1000'
    _stop(proc)


def test_debug_flag_writes_to_stderr(cli_server):
    proc, port = cli_server('-d', '-c', 'DebuggingServer')
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        client.noop()
    out, err = _stop(proc)
    assert proc.returncode == 0
    assert 'DebuggingServer started at' in err
    assert 'Incoming connection from' in err


def test_dotted_class_name(python_path_env, cli_server, tmp_path):
    (tmp_path / 'my_cli_server.py').write_text(textwrap.dedent('''
        import smtpd_compat

        class Shouting(smtpd_compat.SMTPServer):
            def process_message(self, peer, mailfrom, rcpttos, data, **kw):
                print('GOT', mailfrom, rcpttos, data.upper(), flush=True)
                return '250 Loud and clear'
    '''))
    env = dict(python_path_env)
    env['PYTHONPATH'] = str(tmp_path) + os.pathsep + env['PYTHONPATH']
    proc, port = cli_server('-c', 'my_cli_server.Shouting', env=env)
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        client.ehlo()
        client.mail('a@b')
        client.rcpt('c@d')
        assert client.data(b'hello\r\n') == (250, b'Loud and clear')
    out, err = _stop(proc)
    assert out == "GOT a@b ['c@d'] b'HELLO'\n"
    assert proc.returncode == 0


def test_unknown_class_fails(python_path_env):
    out = run_cli(python_path_env, '-n', '-c', 'NoSuchServer', '127.0.0.1:0')
    assert out.returncode != 0
    assert 'NoSuchServer' in out.stderr

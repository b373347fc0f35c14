"""Starting on a platform without the POSIX-only modules (Windows).

The stdlib's ``python -m smtpd -n -c DebuggingServer`` ran on Windows; so
must ours.  Each test runs the real CLI in a subprocess whose interpreter
has been made to look like Windows first: importing ``fcntl``, ``resource``,
``pwd``, ``grp`` or ``termios`` raises ImportError (``sys.modules[name] =
None``), and the POSIX-only names of ``os`` and ``signal`` (``fork``,
``setuid``, ``SIGHUP``, ``SIGKILL`` ...) are gone.  Features that really
need POSIX must then say so in one clear line, never with a traceback.
"""
import smtplib
import subprocess
import sys

import pytest

from helpers import free_port

# Run before smtpd_compat is imported: the interpreter a Windows user has,
# as far as imports and attribute lookups can tell.
_NO_POSIX = '''
import os, runpy, signal, sys
for name in ('fcntl', 'resource', 'pwd', 'grp', 'termios'):
    sys.modules[name] = None
for name in ('fork', 'setuid', 'getuid', 'geteuid', 'WNOHANG'):
    if hasattr(os, name):
        delattr(os, name)
for name in ('SIGHUP', 'SIGKILL', 'SIGUSR1', 'SIGUSR2', 'SIGALRM', 'SIGCHLD',
             'SIGPIPE', 'SIGQUIT'):
    if hasattr(signal, name):
        delattr(signal, name)
sys.argv = ['smtpd_compat'] + sys.argv[1:]
runpy.run_module('smtpd_compat', run_name='__main__', alter_sys=True)
'''


def _argv(*args):
    return [sys.executable, '-c', _NO_POSIX] + list(args)


def test_debugging_server_runs_and_prints_a_message(cli_server):
    proc, port = cli_server('-c', 'DebuggingServer', command=_argv())
    try:
        with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
            refused = client.sendmail('a@example.org', ['b@example.org'],
                                      'Subject: from windows\r\n\r\nhello\r\n')
        assert refused == {}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "b'Subject: from windows'" in out
    assert 'Traceback' not in err, err
    assert proc.returncode == 0, err


def test_maildir_delivery_works_without_posix_modules(cli_server, tmp_path):
    # The alternative the mbox error message points to.
    maildir = tmp_path / 'Maildir'
    proc, port = cli_server('-c', 'MaildirServer', '--maildir', str(maildir),
                            command=_argv())
    try:
        with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
            client.sendmail('a@example.org', ['b@example.org'],
                            'Subject: stored\r\n\r\nline one\r\nline two\r\n')
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stored, = (maildir / 'new').iterdir()
    # The trace headers, then the message as process_message got it (line
    # ends as in the stdlib, bytes as sent).
    content = stored.read_bytes()
    assert content.startswith(b'Return-Path: <a@example.org>\n')
    assert content.endswith(b'\nSubject: stored\n\nline one\nline two')


@pytest.mark.parametrize('args,message', [
    (['-n', '-c', 'MboxServer', '--mbox', 'x.mbox'],
     '--mbox needs POSIX file locks (the fcntl module)'),
    (['-n', '--workers', '2'], '--workers needs os.fork()'),
    # Without -n: the stdlib's own message and status where pwd is missing.
    (['-c', 'DebuggingServer'],
     'Cannot import module "pwd"; try running with -n option.'),
], ids=['mbox', 'workers', 'setuid'])
def test_posix_features_fail_clearly(python_path_env, tmp_path, args, message):
    argv = _argv(*args, '127.0.0.1:%d' % free_port())
    proc = subprocess.run(argv, env=python_path_env, cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert message in proc.stderr + proc.stdout
    assert 'Traceback' not in proc.stderr, proc.stderr
    assert not (tmp_path / 'x.mbox').exists()


def test_mbox_server_class_refuses_without_fcntl(python_path_env, tmp_path):
    # The API too: a clear error at construction, before any mail is taken.
    code = '''
import sys
sys.modules['fcntl'] = None
from smtpd_compat.delivery import MboxServer, MaildirServer
try:
    MboxServer(('127.0.0.1', 0), None, mbox=sys.argv[1] + '/m', map={})
except RuntimeError as e:
    print(e)
s = MaildirServer(('127.0.0.1', 0), None, maildir=sys.argv[1] + '/md', map={})
s.close()
'''
    proc = subprocess.run([sys.executable, '-c', code, str(tmp_path)],
                          env=python_path_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'MboxServer needs POSIX file locks' in proc.stdout
    assert (tmp_path / 'md' / 'new').is_dir()
    assert not (tmp_path / 'm').exists()

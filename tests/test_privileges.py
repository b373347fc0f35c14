"""Started as root without -n (issue 12, finding 8): the command line
switches to ``nobody`` -- user, group, no supplementary groups -- after
handing it the storage and the LMTP socket it created as root, so that
delivery still works.

These tests need root, and an interpreter that ``nobody`` can read once
the process has dropped root: Debian's ``/usr/bin/python3`` (the pyenv
interpreters live in root's private home).  The checkout is copied into a
world-readable temporary directory; on Python >= 3.12 a venv there gets
pyasyncore/pyasynchat from PyPI (asyncore left the stdlib)."""
import os
import shutil
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

import smtpd_compat
import helpers
from conftest import REQUIRE_TOOLS, require_tool
from helpers import free_port, wait_for_port

SYSTEM_PYTHON = '/usr/bin/python3'

if sys.platform == 'win32':
    pytest.skip('POSIX users needed', allow_module_level=True)


def need(condition, reason):
    if not condition:
        if REQUIRE_TOOLS:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope='module')
def nobody_env():
    """(interpreter, environment, world-readable work directory) for a
    server that will drop root."""
    need(hasattr(os, 'geteuid') and os.geteuid() == 0,
         'needs root (the test is about what happens when root drops to nobody)')
    need(os.access(SYSTEM_PYTHON, os.X_OK),
         '%s is missing (Debian package python3; .ci/run installs it)' % SYSTEM_PYTHON)
    need(_has_user('nobody'), 'no user nobody')
    work = tempfile.mkdtemp(prefix='smtpd-compat-nobody-')
    try:
        os.chmod(work, 0o755)
        src = os.path.join(work, 'src')
        root = os.path.dirname(os.path.dirname(os.path.abspath(smtpd_compat.__file__)))
        shutil.copytree(os.path.join(root, 'smtpd_compat'),
                        os.path.join(src, 'smtpd_compat'),
                        ignore=shutil.ignore_patterns('__pycache__'))
        shutil.copy(os.path.join(root, 'smtpd.py'), src)
        version = subprocess.run(
            [SYSTEM_PYTHON, '-c', 'import sys; print(sys.version_info >= (3, 12))'],
            capture_output=True, text=True, timeout=60).stdout.strip()
        python = SYSTEM_PYTHON
        if version == 'True':
            venv = os.path.join(work, 'venv')
            made = subprocess.run([SYSTEM_PYTHON, '-m', 'venv', venv],
                                  capture_output=True, text=True, timeout=300)
            need(made.returncode == 0,
                 'cannot make a venv with %s (Debian package python3-venv): %s'
                 % (SYSTEM_PYTHON, made.stderr))
            python = os.path.join(venv, 'bin', 'python')
            pip = subprocess.run([python, '-m', 'pip', 'install', '-q',
                                  'pyasyncore', 'pyasynchat'],
                                 capture_output=True, text=True, timeout=600)
            assert pip.returncode == 0, pip.stderr
        for dirpath, dirnames, filenames in os.walk(work):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | 0o044
                             | (0o011 if os.path.isdir(path) else 0))
        env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': src,
               'PYTHONDONTWRITEBYTECODE': '1', 'LANG': 'C.UTF-8'}
        yield python, env, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _has_user(name):
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def nobody_ids():
    import grp
    import pwd
    entry = pwd.getpwnam('nobody')
    return entry.pw_uid, entry.pw_gid, grp.getgrgid(entry.pw_gid).gr_name


@pytest.fixture
def root_server(nobody_env):
    """Factory: runs ``python -m smtpd_compat ARGS`` as root WITHOUT -n,
    from the world-readable copy; returns the Popen.  Killed at teardown."""
    python, env, work = nobody_env
    procs = []

    def start(*args):
        proc = subprocess.Popen([python, '-m', 'smtpd_compat'] + list(args),
                                env=env, cwd=work, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def ids_of(pid):
    """(real/effective uids, gids, supplementary groups) from /proc."""
    fields = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            fields[key] = value.split()
    return fields['Uid'], fields['Gid'], fields['Groups']


def wait_until_nobody(proc, uid, timeout=30.0):
    """Wait until the server process has switched to ``uid``."""
    deadline = time.monotonic() + timeout
    while ids_of(proc.pid)[0] != [str(uid)] * 4:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, 'still not uid %d' % uid
        time.sleep(0.05)


def stop(proc):
    proc.terminate()
    out, err = proc.communicate(timeout=15)
    return out, err


def workdir(nobody_env, name):
    path = os.path.join(nobody_env[2], name)
    os.mkdir(path)
    os.chmod(path, 0o755)     # root-owned, like /var/mail would be
    return path


@pytest.mark.parametrize('store', ['maildir', 'mbox'])
def test_root_without_n_delivers_as_nobody(nobody_env, root_server, store):
    uid, gid, _ = nobody_ids()
    base = workdir(nobody_env, 'deliver-' + store)
    target = os.path.join(base, 'Maildir' if store == 'maildir' else 'mbox')
    cls = 'MaildirServer' if store == 'maildir' else 'MboxServer'
    with helpers.reserved_port() as port:
        proc = root_server('-c', cls, '--' + store, target, '127.0.0.1:%d' % port)
        wait_for_port(proc, port)
    # (The port is bound before the switch: wait for it.)
    wait_until_nobody(proc, uid)
    # The process is nobody through and through: no root group left over.
    uids, gids, groups = ids_of(proc.pid)
    assert uids == [str(uid)] * 4 and gids == [str(gid)] * 4
    assert groups == []
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        assert client.sendmail('a@x', ['b@x'], b'Subject: as nobody\r\n\r\nx\r\n') == {}
    if store == 'maildir':
        (name,) = os.listdir(os.path.join(target, 'new'))
        path = os.path.join(target, 'new', name)
        for sub in ('', 'tmp', 'new', 'cur'):
            st = os.stat(os.path.join(target, sub))
            assert (st.st_uid, st.st_gid) == (uid, gid), sub
    else:
        path = target
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (uid, gid)
    with open(path, 'rb') as f:
        assert b'Subject: as nobody\n' in f.read()
    # The directory the operator made keeps its owner.
    assert os.stat(base).st_uid == 0
    out, err = stop(proc)
    assert proc.returncode == 0 and 'Traceback' not in out + err, err


CLIENT = r'''
import os, smtplib, sys
print(os.getuid(), os.getgid(), flush=True)
client = smtplib.LMTP(sys.argv[1])
print(client.sendmail('a@x', ['b@x'], b'Subject: lmtp\r\n\r\nfrom nobody\r\n'))
client.quit()
'''


def test_lmtp_socket_mode_lets_a_non_root_client_in(nobody_env, root_server):
    setpriv = require_tool('setpriv')
    uid, gid, group = nobody_ids()
    base = workdir(nobody_env, 'lmtp')
    path = os.path.join(base, 'lmtp.sock')
    maildir = os.path.join(base, 'Maildir')
    proc = root_server('-c', 'LMTPServer', '--maildir', maildir,
                       '--lmtp-socket', path, '--lmtp-socket-mode', '666',
                       '127.0.0.1:0')
    wait_until_nobody(proc, uid)
    assert os.path.exists(path)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    assert (st.st_uid, st.st_gid) == (uid, gid)
    # A client that is not root (Postfix's lmtp runs as user postfix).
    client = subprocess.run(
        [setpriv, '--reuid=%d' % uid, '--regid=%d' % gid, '--clear-groups',
         SYSTEM_PYTHON, '-c', CLIENT, path],
        capture_output=True, text=True, timeout=60, cwd=base)
    assert client.returncode == 0, client.stderr
    assert client.stdout.splitlines() == ['%d %d' % (uid, gid), '{}']
    (name,) = os.listdir(os.path.join(maildir, 'new'))
    with open(os.path.join(maildir, 'new', name), 'rb') as f:
        content = f.read()
    assert b' with LMTP id ' in content and content.endswith(b'\n\nfrom nobody')
    out, err = stop(proc)
    assert proc.returncode == 0 and 'Traceback' not in out + err, err


def test_not_root_keeps_the_stdlib_message(nobody_env):
    # Another user without -n: the setuid is refused, and the answer is the
    # stdlib's, word for word, with status 1.
    import pwd
    setpriv = require_tool('setpriv')
    python, env, work = nobody_env
    need(_has_user('daemon'), 'no user daemon')
    daemon = pwd.getpwnam('daemon')
    result = subprocess.run(
        [setpriv, '--reuid=%d' % daemon.pw_uid, '--regid=%d' % daemon.pw_gid,
         '--clear-groups', python, '-m', 'smtpd_compat', '-c', 'DebuggingServer',
         '127.0.0.1:%d' % free_port()],
        env=env, cwd=work, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == 'Cannot setuid "nobody"; try running with -n option.\n'

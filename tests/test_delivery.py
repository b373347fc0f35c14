"""Maildir and mbox delivery (smtpd_compat.delivery): what lands on disk,
write errors, locking, the CLI, a real MTA client, and a kill -9 crash
test."""
import errno
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import recv_reply, require_tool
from smtpd_compat import delivery
from smtpd_compat.delivery import MaildirServer, MboxServer, mboxrd_quote
from smtpd_compat.extensions import ExtensionsMixin

FAILED = '451 4.3.0 Error: could not store the message'


def listing(maildir):
    return {sub: sorted(os.listdir(os.path.join(maildir, sub)))
            for sub in ('tmp', 'new', 'cur')}


# The trace headers every stored message starts with (tests/
# test_trace_headers.py checks their content).
TRACE = re.compile(rb'Return-Path: <[^\r\n]*>(\r?\n)Received: from [^\r\n]*\1'
                   rb'\tby [^\r\n]* \(smtpd-compat\) with [^\r\n]*\1\t[^\r\n]*\1')


def untraced(content):
    """The message as the client sent it: ``content`` without the trace
    headers, which must be there."""
    m = TRACE.match(content)
    assert m, content[:300]
    return content[m.end():]


def read_new(maildir):
    new = os.path.join(maildir, 'new')
    contents = []
    for name in sorted(os.listdir(new)):
        with open(os.path.join(new, name), 'rb') as f:
            contents.append(untraced(f.read()))
    return contents


# ---------------------------------------------------------------------------
# Maildir

def test_maildir_delivery(live_server, tmp_path):
    maildir = str(tmp_path / 'Maildir')
    live = live_server(MaildirServer, maildir=maildir)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.sendmail('a@x', ['b@x'], b'Subject: one\r\n\r\n..dot\r\nbody\r\n')
    files = listing(maildir)
    assert files['tmp'] == [] and files['cur'] == [] and len(files['new']) == 1
    name = files['new'][0]
    # time.MusecPpidQnRrandom.host, no ":" or "/" (Maildir spec)
    assert re.match(r'\d+\.M\d{6}P%dQ1R[0-9a-f]{16}\.[^/:]+\Z' % os.getpid(), name)
    assert read_new(maildir) == [b'Subject: one\n\n..dot\nbody']
    assert os.stat(os.path.join(maildir, 'new', name)).st_mode & 0o777 == 0o600


def test_maildir_unique_names(live_server, tmp_path):
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        for i in range(30):
            client.sendmail('a@x', ['b@x'], b'n: %d\r\n\r\nx\r\n' % i)
    assert sorted(read_new(maildir)) == sorted(b'n: %d\n\nx' % i for i in range(30))
    assert len(set(listing(maildir)['new'])) == 30


def test_maildir_rename_error_leaves_nothing(live_server, tmp_path):
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir)
    # new/ replaced by a file: the rename fails (this works as root too).
    os.rmdir(os.path.join(maildir, 'new'))
    open(os.path.join(maildir, 'new'), 'w').close()
    with smtplib.SMTP(*live.address, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail('a@x', ['b@x'], b'x\r\n')
    assert (info.value.smtp_code, info.value.smtp_error) == (
        451, FAILED[4:].encode())
    assert os.listdir(os.path.join(maildir, 'tmp')) == []


def test_maildir_fsync_error_leaves_nothing(live_server, tmp_path, monkeypatch):
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir)

    def broken_fsync(fd):
        raise OSError(errno.EIO, 'simulated I/O error')
    monkeypatch.setattr(os, 'fsync', broken_fsync)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        code, msg = client.ehlo()
        client.mail('a@x')
        client.rcpt('b@x')
        assert client.data(b'x\r\n') == (451, FAILED[4:].encode())
        monkeypatch.undo()
        # the session goes on, and the next message is stored
        client.sendmail('a@x', ['b@x'], b'y\r\n')
    assert listing(maildir)['tmp'] == []
    assert read_new(maildir) == [b'y']


def test_maildir_bad_configuration(tmp_path):
    target = tmp_path / 'file'
    target.write_text('not a directory')
    with pytest.raises(OSError):
        MaildirServer(('127.0.0.1', 0), None, map={}, maildir=str(target))
    with pytest.raises(TypeError):
        MaildirServer(('127.0.0.1', 0), None, map={})


BDAT_MESSAGE = (b'Message-ID: <chunked@example.com>\r\nSubject: chunks\r\n\r\n'
                b'.starts with a dot\r\n.\r\nFrom here on\r\n' + b'z' * 3000 + b'\r\n')


def send_bdat_with_dsn(address, message, body=b''):
    """MAIL with RET/ENVID, RCPT with NOTIFY/ORCPT, the message in three
    BDAT chunks, all pipelined; returns the replies."""
    sock = socket.create_connection(address, timeout=5)
    try:
        assert recv_reply(sock).startswith(b'220')
        sock.sendall(b'EHLO client\r\n')
        ehlo = recv_reply(sock)
        assert b'CHUNKING' in ehlo and b'DSN' in ehlo
        third = len(message) // 3
        chunks = [message[:third], message[third:2 * third], message[2 * third:]]
        wire = (b'MAIL FROM:<sender@example.com> RET=HDRS ENVID=Env+2B1' + body
                + b'\r\nRCPT TO:<rcpt@example.com> NOTIFY=SUCCESS,DELAY'
                b' ORCPT=rfc822;Rcpt@Example.com\r\n')
        for i, chunk in enumerate(chunks):
            wire += b'BDAT %d%s\r\n' % (len(chunk), b' LAST' if i == 2 else b'') + chunk
        sock.sendall(wire + b'QUIT\r\n')
        data = b''
        while not data.endswith(b'221 2.0.0 Bye\r\n'):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        return data.decode().splitlines()
    finally:
        sock.close()


def test_done_when_bdat_and_dsn_arrive_byte_exact(live_server, tmp_path):
    # The "done when": BDAT chunks + DSN parameters -> Maildir.
    class Server(ExtensionsMixin, MaildirServer):
        pass
    maildir = str(tmp_path / 'md')
    live = live_server(Server, maildir=maildir)
    replies = send_bdat_with_dsn(live.address, BDAT_MESSAGE)
    assert replies[-2:] == ['250 2.0.0 OK', '221 2.0.0 Bye']
    assert read_new(maildir) == [BDAT_MESSAGE.replace(b'\r\n', b'\n')]
    # A BINARYMIME body is stored exactly as sent, CRLFs included.
    binary = BDAT_MESSAGE + bytes(range(256)) + b'\r\n.\r\n'
    replies = send_bdat_with_dsn(live.address, binary, b' BODY=BINARYMIME')
    assert replies[-2] == '250 2.0.0 OK'
    assert binary in read_new(maildir)


def test_cli_maildir_with_extensions(tmp_path, cli_server):
    maildir = str(tmp_path / 'md')
    proc, port = cli_server('-c', 'MaildirServer', '--maildir', maildir,
                            '--esmtp', 'all')
    try:
        replies = send_bdat_with_dsn(('127.0.0.1', port), BDAT_MESSAGE)
        assert replies[-2] == '250 2.0.0 OK'
        assert read_new(maildir) == [BDAT_MESSAGE.replace(b'\r\n', b'\n')]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert out == ''


@pytest.mark.parametrize('args, message', [
    (['-c', 'MaildirServer'], b'-c MaildirServer needs --maildir'),
    (['--maildir', '/tmp/x'], b'--maildir needs -c MaildirServer'),
    (['-c', 'LMTPServer', '--maildir', '/tmp/x', '--mbox', '/tmp/y'],
     b'--maildir and --mbox cannot be combined'),
    (['-c', 'MboxServer'], b'-c MboxServer needs --mbox'),
    (['-c', 'MaildirServer', '--maildir', '/tmp/x', '--mbox-dotlock'],
     b'--mbox-dotlock needs --mbox'),
], ids=['maildir-missing', 'maildir-wrong-class', 'lmtp-both-stores', 'mbox-missing',
        'dotlock-alone'])
def test_cli_errors(args, message, python_path_env):
    result = subprocess.run([sys.executable, '-m', 'smtpd_compat', '-n'] + args,
                            env=python_path_env, capture_output=True, timeout=30)
    assert result.returncode == 1
    assert message in result.stderr


def test_smtp_source_burst(live_server, tmp_path):
    smtp_source = require_tool('smtp-source')
    maildir = str(tmp_path / 'md')
    live = live_server(MaildirServer, maildir=maildir)
    result = subprocess.run(
        [smtp_source, '-s', '4', '-m', '200', '-l', '2000', '-f', 'a@example.com',
         '-t', 'b@example.com', '%s:%d' % live.address],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    files = listing(maildir)
    assert len(files['new']) == 200 and files['tmp'] == []


# ---------------------------------------------------------------------------
# kill -9 during a burst

SERVER_SCRIPT = r'''
import sys
from smtpd_compat import asyncore
from smtpd_compat.delivery import MaildirServer
server = MaildirServer(('127.0.0.1', 0), None, maildir=sys.argv[1])
print(server.socket.getsockname()[1], flush=True)
asyncore.loop(timeout=0.5)
'''

BURST = 1200
CLIENTS = 4


def burst_message(n):
    # ~8 KB, self-describing so any file in new/ can be checked.
    return b'X-Seq: %d\r\n\r\n' % n + (b'%08d' % n) * 1000 + b'\r\n'


def test_kill_9_during_burst_loses_nothing_acknowledged(tmp_path, python_path_env):
    maildir = str(tmp_path / 'md')
    proc = subprocess.Popen([sys.executable, '-c', SERVER_SCRIPT, maildir],
                            env=python_path_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    port = int(proc.stdout.readline())
    acked = []
    lock = threading.Lock()
    deadline = time.monotonic() + 15

    def client(first):
        try:
            with smtplib.SMTP('127.0.0.1', port, timeout=5) as smtp:
                for n in range(first, BURST, CLIENTS):
                    if time.monotonic() > deadline:
                        return
                    smtp.sendmail('a@x', ['b@x'], burst_message(n))
                    with lock:
                        acked.append(n)
        except (OSError, smtplib.SMTPException):
            pass     # the server was killed

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        # Kill it somewhere in the middle of the burst.
        while len(acked) < BURST // 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        for t in threads:
            t.join(10)
        proc.stdout.close()
        proc.stderr.close()
    assert BURST // 3 <= len(acked) < BURST, 'the kill did not land mid-burst'

    files = listing(maildir)
    stored = set()
    for name in files['new']:
        with open(os.path.join(maildir, 'new', name), 'rb') as f:
            content = f.read()
        content = untraced(content)
        n = int(re.match(rb'X-Seq: (\d+)\n', content).group(1))
        # complete, byte for byte: no partial file in new/
        assert content == burst_message(n).replace(b'\r\n', b'\n').rstrip(b'\n')
        stored.add(n)
    assert set(acked) <= stored, 'acknowledged but lost: %s' % sorted(set(acked) - stored)
    # tmp/ may hold what was being written at the kill; say how much.
    print('kill -9: %d acknowledged, %d in new/, %d left in tmp/'
          % (len(acked), len(stored), len(files['tmp'])))
    assert len(files['tmp']) <= CLIENTS


# ---------------------------------------------------------------------------
# mbox

@pytest.mark.parametrize('data, expected', [
    (b'From me\n', b'>From me\n'),
    (b'>From me\n', b'>>From me\n'),
    (b'x\nFrom a\n>>From b\nFrom\n', b'x\n>From a\n>>>From b\nFrom\n'),
    (b' From x\nFromage\n', b' From x\nFromage\n'),
    (b'', b''),
], ids=['from', 'quoted', 'several', 'not-at-start-or-no-space', 'empty'])
def test_mboxrd_quote(data, expected):
    assert mboxrd_quote(data) == expected


def test_mbox_delivery(live_server, tmp_path):
    mbox = str(tmp_path / 'mbox')
    live = live_server(MboxServer, mbox=mbox)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.sendmail('a@x', ['b@x'], b'Subject: 1\r\n\r\nFrom the start\r\n>From quoted\r\n')
        client.sendmail('c@x', ['b@x'], b'Subject: 2\r\n\r\nsecond')
    with open(mbox, 'rb') as f:
        content = f.read()
    entries = re.split(rb'^From (\S+) ([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d '
                       rb'\d\d:\d\d:\d\d \d{4})\n', content, flags=re.M)
    assert entries[0] == b''
    assert entries[1::3] == [b'a@x', b'c@x']
    assert [untraced(e) for e in entries[3::3]] == [
        b'Subject: 1\n\n>From the start\n>>From quoted\n\n',
        b'Subject: 2\n\nsecond\n\n']
    assert entries[3].startswith(b'Return-Path: <a@x>\n')
    assert entries[6].startswith(b'Return-Path: <c@x>\n')
    assert os.stat(mbox).st_mode & 0o777 == 0o600


def test_mbox_null_sender_is_mailer_daemon(live_server, tmp_path):
    mbox = str(tmp_path / 'mbox')
    live = live_server(MboxServer, mbox=mbox)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.sendmail('<>', ['b@x'], b'Subject: bounce\r\n\r\nx\r\n')
    with open(mbox, 'rb') as f:
        from_line, _, entry = f.read().partition(b'\n')
    assert from_line.startswith(b'From MAILER-DAEMON ')
    assert entry.startswith(b'Return-Path: <>\n')


def test_mbox_write_error_truncates(live_server, tmp_path, monkeypatch):
    mbox = str(tmp_path / 'mbox')
    live = live_server(MboxServer, mbox=mbox)
    with smtplib.SMTP(*live.address, timeout=5) as client:
        client.sendmail('a@x', ['b@x'], b'first\r\n')
        size = os.path.getsize(mbox)
        real_fsync = os.fsync
        calls = []

        def fsync_fails_once(fd):
            calls.append(fd)
            if len(calls) == 1:
                raise OSError(errno.EIO, 'simulated I/O error')
            real_fsync(fd)
        monkeypatch.setattr(os, 'fsync', fsync_fails_once)
        client.ehlo_or_helo_if_needed()
        client.mail('a@x')
        client.rcpt('b@x')
        assert client.data(b'second ' * 1000 + b'\r\n') == (451, FAILED[4:].encode())
    # the half-stored entry was cut off again
    assert os.path.getsize(mbox) == size


def test_mbox_dev_full(live_server):
    if not os.path.exists('/dev/full'):
        pytest.skip('no /dev/full')
    live = live_server(MboxServer, mbox='/dev/full')
    with smtplib.SMTP(*live.address, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail('a@x', ['b@x'], b'x\r\n')
    assert info.value.smtp_code == 451


LOCK_HOLDER = r'''
import fcntl, sys
f = open(sys.argv[1], 'a')
fcntl.lockf(f, fcntl.LOCK_EX)
print('locked', flush=True)
sys.stdin.read()
'''


def test_mbox_waits_for_fcntl_lock(live_server, tmp_path):
    mbox = str(tmp_path / 'mbox')
    live = live_server(MboxServer, mbox=mbox, lock_timeout=0.3)
    holder = subprocess.Popen([sys.executable, '-c', LOCK_HOLDER, mbox],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b'locked\n'
        with smtplib.SMTP(*live.address, timeout=5) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail('a@x', ['b@x'], b'locked out\r\n')
            assert info.value.smtp_code == 451
            holder.stdin.close()
            holder.wait(10)
            client.sendmail('a@x', ['b@x'], b'now\r\n')
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()
    with open(mbox, 'rb') as f:
        content = f.read()
    assert b'locked out' not in content and content.endswith(b'\nnow\n\n')


def test_mbox_dotlock(live_server, tmp_path):
    mbox = str(tmp_path / 'mbox')
    live = live_server(MboxServer, mbox=mbox, dotlock=True, lock_timeout=0.2)
    lock = mbox + '.lock'
    open(lock, 'w').close()
    with smtplib.SMTP(*live.address, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail('a@x', ['b@x'], b'x\r\n')
        os.unlink(lock)
        client.sendmail('a@x', ['b@x'], b'y\r\n')
    assert not os.path.exists(lock)
    assert os.path.getsize(mbox) > 0


def test_delivery_failure_is_logged_not_printed(live_server, tmp_path, capsys, caplog):
    live = live_server(MboxServer, mbox='/dev/full') if os.path.exists('/dev/full') \
        else pytest.skip('no /dev/full')
    with smtplib.SMTP(*live.address, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail('a@x', ['b@x'], b'x\r\n')
    assert capsys.readouterr().out == ''
    assert any(r.name == 'smtpd_compat.delivery' for r in caplog.records)
    assert delivery.STORE_FAILED == FAILED

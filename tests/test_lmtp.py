"""LMTP (smtpd_compat.lmtp, RFC 2033): LHLO, one reply per recipient,
TCP and UNIX sockets, composition with extensions and Maildir delivery."""
import os
import re
import smtplib
import socket
import stat
import subprocess
import sys
import time

import pytest

from conftest import recv_reply, require_tool
from smtpd_compat.delivery import MaildirServer
from smtpd_compat.extensions import ExtensionsMixin
from smtpd_compat.lmtp import LMTPServer


def lmtp_client(*address):
    # smtplib.LMTP takes a timeout from Python 3.9 on.
    kwargs = {'timeout': 5} if sys.version_info >= (3, 9) else {}
    return smtplib.LMTP(*address, **kwargs)


class Recorder(LMTPServer):
    result = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((mailfrom, list(rcpttos), data))
        return self.result


def read_lines(sock, count, timeout=5.0):
    sock.settimeout(timeout)
    data = b''
    while data.count(b'\r\n') < count:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data.decode().splitlines()


def test_lhlo_replaces_helo_and_ehlo(live_server, raw_client):
    live = live_server(Recorder)
    sock, greeting = raw_client(live.address)
    assert greeting.startswith(b'220 ')
    sock.sendall(b'HELO x\r\nEHLO x\r\nLHLO\r\nMAIL FROM:<a@x>\r\n')
    assert read_lines(sock, 4) == [
        '500 Error: command "HELO" not recognized',
        '500 Error: command "EHLO" not recognized',
        '501 Syntax: LHLO hostname',
        '503 Error: send HELO first']
    sock.sendall(b'LHLO client.example\r\n')
    reply = recv_reply(sock).decode()
    assert reply.startswith('250-') and reply.endswith('250 HELP\r\n')
    assert '250-8BITMIME' in reply
    sock.sendall(b'LHLO again\r\n')
    assert recv_reply(sock) == b'503 Duplicate HELO/EHLO\r\n'


RESULTS = [
    (None, ['250 <a@x> OK', '250 <b@x> OK', '250 <c@x> OK']),
    ('452 4.2.2 Mailbox full', ['452 4.2.2 Mailbox full'] * 3),
    ([None, '550 5.1.1 No such user', '452 4.2.2 Over quota'],
     ['250 <a@x> OK', '550 5.1.1 No such user', '452 4.2.2 Over quota']),
    ({'a@x': None, 'b@x': '554 5.7.1 Refused'},
     ['250 <a@x> OK', '554 5.7.1 Refused',
      '451 4.3.0 Error: no delivery result for this recipient']),
    ([None], ['451 4.3.0 Error: no delivery result for this recipient'] * 3),
]


@pytest.mark.parametrize('result, expected', RESULTS,
                         ids=['none', 'string', 'list', 'dict-missing-one',
                              'wrong-length'])
def test_one_reply_per_recipient(live_server, raw_client, result, expected, caplog):
    live = live_server(Recorder)
    live.server.result = result
    sock, _ = raw_client(live.address)
    sock.sendall(b'LHLO c\r\n')
    recv_reply(sock)
    # A refused RCPT (bad syntax) gets no reply after DATA.
    sock.sendall(b'MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\n'
                 b'RCPT TO:\r\nRCPT TO:<c@x>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n')
    lines = read_lines(sock, 6 + len(expected) + 1)
    assert lines[3].startswith('501 ')
    assert lines[6:] == expected + ['250 OK']
    assert live.server.messages == [('s@x', ['a@x', 'b@x', 'c@x'], b'hello')]


def test_smtplib_lmtp_over_tcp(live_server):
    live = live_server(Recorder)
    with lmtp_client(*live.address) as client:
        assert client.sendmail('a@x', ['b@x'], b'Subject: t\r\n\r\nx\r\n') == {}
    assert live.server.messages[0][1] == ['b@x']


@pytest.fixture
def unix_server(tmp_path, live_server):
    def start(server_class, **kwargs):
        path = str(tmp_path / 'lmtp.sock')
        live = live_server(server_class, None, localaddr=None,
                           unix_socket=path, **kwargs)
        return live, path

    return start


def test_unix_socket_with_smtplib(unix_server):
    live, path = unix_server(Recorder, unix_socket_mode=0o660)
    assert os.stat(path).st_mode & 0o777 == 0o660
    with lmtp_client(path) as client:
        client.sendmail('a@x', ['b@x'], b'over unix\r\n')
    assert live.server.messages == [('a@x', ['b@x'], b'over unix')]


def test_unix_socket_replaces_stale_socket_only(tmp_path):
    path = str(tmp_path / 'sock')
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    server = Recorder(None, None, map={}, unix_socket=path)
    server.close()
    regular = str(tmp_path / 'file')
    open(regular, 'w').close()
    with pytest.raises(OSError):
        Recorder(None, None, map={}, unix_socket=regular)
    assert os.path.isfile(regular)


def test_swaks_lmtp_over_unix_socket(unix_server):
    swaks = require_tool('swaks')
    live, path = unix_server(Recorder)
    live.server.result = [None, '550 5.1.1 No such user']
    result = subprocess.run(
        [swaks, '--socket', path, '--protocol', 'LMTP', '--from', 'a@example.com',
         '--to', 'b@example.com,c@example.com'],
        capture_output=True, text=True, timeout=30)
    # swaks reports the per-recipient 550 as a failure
    assert '250 <b@example.com> OK' in result.stdout, result.stdout
    assert '550 5.1.1 No such user' in result.stdout
    assert live.server.messages[0][1] == ['b@example.com', 'c@example.com']


def test_smtp_source_lmtp(live_server):
    smtp_source = require_tool('smtp-source')
    live = live_server(Recorder)
    result = subprocess.run(
        [smtp_source, '-L', '-s', '2', '-m', '40', '-r', '2',
         '-t', 'rcpt@example.com', '%s:%d' % live.address],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(live.server.messages) == 40
    assert all(len(m[1]) == 2 for m in live.server.messages)


def test_lmtp_with_chunking_and_enhanced_codes(live_server, raw_client):
    class Server(ExtensionsMixin, Recorder):
        pass
    live = live_server(Server)
    live.server.result = {'a@x': None, 'b@x': '550 No such user'}
    sock, _ = raw_client(live.address)
    sock.sendall(b'LHLO c\r\n')
    assert b'250-CHUNKING' in recv_reply(sock)
    sock.sendall(b'MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\n'
                 b'BDAT 3\r\nab\nBDAT 2 LAST\r\n.\n')
    assert read_lines(sock, 6) == [
        '250 2.1.0 OK', '250 2.1.5 OK', '250 2.1.5 OK',
        '250 2.0.0 OK 3 octets received',
        '250 2.0.0 <a@x> OK', '550 5.0.0 No such user']
    assert live.server.messages[0][2] == b'ab\n.\n'


def test_lmtp_into_maildir(live_server, tmp_path):
    class LocalDelivery(MaildirServer, LMTPServer):
        pass
    maildir = str(tmp_path / 'md')
    live = live_server(LocalDelivery, maildir=maildir)
    with lmtp_client(*live.address) as client:
        client.sendmail('a@x', ['b@x'], b'Subject: lda\r\n\r\nstored\r\n')
    assert read_maildir(maildir) == [b'Subject: lda\n\nstored']


# Return-Path and Received, with LMTP as the protocol (RFC 3848) and the one
# recipient named.
LMTP_TRACE = re.compile(rb'Return-Path: <a@x>\nReceived: from [^\n]+\n'
                        rb'\tby [^\n]+ \(smtpd-compat\) with LMTP id [0-9A-F]+\n'
                        rb'\tfor <b@x>; [^\n]+\n')


def read_maildir(maildir):
    """The messages in new/, each without its trace headers (which must be
    there, as an LMTP delivery writes them)."""
    new = os.path.join(maildir, 'new')
    messages = []
    for name in sorted(os.listdir(new)):
        with open(os.path.join(new, name), 'rb') as f:
            content = f.read()
        m = LMTP_TRACE.match(content)
        assert m, content
        messages.append(content[m.end():])
    return messages


def run_cli(args, env):
    return subprocess.run([sys.executable, '-m', 'smtpd_compat', '-n'] + args,
                          env=env, capture_output=True, timeout=30)


def test_cli_bare_lmtp_server_refused_at_start(python_path_env):
    # docs/lmtp.rst used to show this; every message then crashed with
    # NotImplementedError.  Now it does not start, and says why.
    result = run_cli(['-c', 'LMTPServer', '127.0.0.1:0'], python_path_env)
    assert result.returncode == 1
    assert (b'-c LMTPServer needs --maildir DIR or --mbox FILE'
            in result.stderr), result.stderr
    assert b'Traceback' not in result.stderr + result.stdout


def test_cli_lmtp_delivers_into_maildir(cli_server, tmp_path):
    maildir = str(tmp_path / 'md')
    proc, port = cli_server('-c', 'LMTPServer', '--maildir', maildir)
    sock = socket.create_connection(('127.0.0.1', port), timeout=5)
    with sock:
        assert recv_reply(sock).startswith(b'220')
        sock.sendall(b'LHLO mta\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n'
                     b'RCPT TO:<c@x>\r\nDATA\r\n')
        data = b''
        sock.settimeout(5)
        while b'354 ' not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        sock.sendall(b'Subject: cli\r\n\r\nvia the CLI\r\n.\r\nQUIT\r\n')
        data = b''
        while not data.endswith(b'221 Bye\r\n'):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    # RFC 2033: one reply per accepted recipient
    assert data.decode().splitlines() == [
        '250 <b@x> OK', '250 <c@x> OK', '221 Bye']
    (name,) = os.listdir(os.path.join(maildir, 'new'))
    with open(os.path.join(maildir, 'new', name), 'rb') as f:
        content = f.read()
    # two recipients: Received: names neither
    assert re.match(rb'Return-Path: <a@x>\nReceived: from mta \(unknown '
                    rb'\[127\.0\.0\.1\]\)\n\tby [^\n]+ \(smtpd-compat\) with '
                    rb'LMTP id [0-9A-F]+;\n\t[^\n]+\nSubject: cli\n\nvia the CLI\Z',
                    content), content
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out == ''


def wait_for_socket(proc, path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return
        except OSError:
            assert time.monotonic() < deadline, 'no socket at %s' % path
            time.sleep(0.05)


def test_cli_lmtp_socket_mode_and_mbox(python_path_env, tmp_path):
    path = str(tmp_path / 'lmtp.sock')
    mbox = str(tmp_path / 'mbox')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'smtpd_compat', '-n', '-c', 'LMTPServer',
         '--mbox', mbox, '--lmtp-socket', path, '--lmtp-socket-mode', '604'],
        env=python_path_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_socket(proc, path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o604
        with lmtp_client(path) as client:
            client.sendmail('a@x', ['b@x'], b'Subject: mbox\r\n\r\nover LMTP\r\n')
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out == b'', err
    with open(mbox, 'rb') as f:
        content = f.read()
    head, _, entry = content.partition(b'\n')
    assert head.startswith(b'From a@x ')
    assert LMTP_TRACE.match(entry), entry
    assert entry.endswith(b'\nSubject: mbox\n\nover LMTP\n\n')


@pytest.mark.parametrize('args, message', [
    (['-c', 'LMTPServer', '--maildir', '/tmp/x', '--lmtp-socket-mode', '660'],
     b'--lmtp-socket-mode needs --lmtp-socket'),
    (['-c', 'LMTPServer', '--maildir', '/tmp/x', '--lmtp-socket', '/tmp/s',
      '--lmtp-socket-mode', '0o9'], b'--lmtp-socket-mode: not an octal mode: 0o9'),
    (['-c', 'LMTPServer', '--maildir', '/tmp/x', '--lmtp-socket', '/tmp/s',
      '--lmtp-socket-mode', '17777'], b'--lmtp-socket-mode: not an octal mode'),
], ids=['mode-alone', 'not-octal', 'too-big'])
def test_cli_lmtp_socket_mode_errors(args, message, python_path_env):
    result = run_cli(args, python_path_env)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_cli_lmtp_socket_needs_lmtp_class(python_path_env, tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'smtpd_compat', '-n', '--lmtp-socket',
         str(tmp_path / 's')], env=python_path_env, capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b'--lmtp-socket needs -c LMTPServer' in result.stderr


def test_cli_lmtp_subclass_with_its_own_store_needs_no_maildir(cli_server, tmp_path,
                                                              python_path_env):
    (tmp_path / 'mylmtp.py').write_text(
        'from smtpd_compat.lmtp import LMTPServer\n'
        'class Store(LMTPServer):\n'
        '    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):\n'
        '        return {rcpttos[0]: None}\n')
    env = dict(python_path_env)
    env['PYTHONPATH'] = str(tmp_path) + os.pathsep + env['PYTHONPATH']
    proc, port = cli_server('-c', 'mylmtp.Store', env=env)
    sock = socket.create_connection(('127.0.0.1', port), timeout=5)
    with sock:
        assert recv_reply(sock).startswith(b'220')
        sock.sendall(b'LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\n'
                     b'DATA\r\n')
        data = b''
        while b'354 ' not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        sock.sendall(b'x\r\n.\r\n')
        assert read_lines(sock, 2) == [
            '250 <b@x> OK', '451 4.3.0 Error: no delivery result for this recipient']

"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314) over real loopback TLS,
with certificates made at test time by trustme."""
import contextlib
import io
import smtplib
import socket
import ssl
import subprocess
import sys
from unittest import mock

import pytest

import helpers
import smtpd_compat
from smtpd_compat import session, threads, tls
from conftest import RecordingServer, recv_reply, require_tool

MESSAGE = b'Subject: hello\r\n\r\nover TLS\r\n'


class TLSRecorder(tls.TLSServerMixin, RecordingServer):
    pass


@pytest.fixture
def starttls_server(live_server, tls_certs):
    return live_server(TLSRecorder, tls_context=tls_certs.server_context)


@pytest.fixture
def smtps_server(live_server, tls_certs):
    return live_server(TLSRecorder, tls_context=tls_certs.server_context,
                       implicit_tls=True)


def send_line(sock, line):
    sock.sendall(line + b'\r\n')
    return recv_reply(sock)


def starttls_raw(address, client_ctx):
    """A raw client that has done EHLO, STARTTLS and the handshake."""
    sock = socket.create_connection(address, timeout=5)
    recv_reply(sock)
    send_line(sock, b'EHLO me')
    assert send_line(sock, b'STARTTLS') == b'220 2.0.0 Ready to start TLS\r\n'
    return client_ctx.wrap_socket(sock, server_hostname='127.0.0.1')


def test_starttls_advertised_only_before_tls_and_session_reset(starttls_server, tls_certs):
    with smtplib.SMTP(*starttls_server.address, timeout=5) as client:
        code, text = client.ehlo('before')
        assert b'STARTTLS' in text.split(b'\n')
        client.starttls(context=tls_certs.client_context)
        # RFC 3207 4.2: the greeting is forgotten, EHLO must come again.
        assert client.docmd('MAIL FROM:<a@example.com>')[0] == 503
        code, text = client.ehlo('after')
        assert code == 250 and b'STARTTLS' not in text
        assert client.docmd('STARTTLS')[0] == 503
        client.sendmail('a@example.com', ['b@example.com'], MESSAGE)
        assert isinstance(client.sock, ssl.SSLSocket)
    (peer, mailfrom, rcpttos, data, kwargs), = starttls_server.server.messages
    assert (mailfrom, rcpttos, data) == ('a@example.com', ['b@example.com'],
                                         MESSAGE.replace(b'\r\n', b'\n')[:-1])


def test_starttls_syntax_and_order(starttls_server, raw_client):
    sock, greeting = raw_client(starttls_server.address)
    assert send_line(sock, b'STARTTLS') == b'503 Error: send HELO first\r\n'
    send_line(sock, b'EHLO me')
    assert send_line(sock, b'STARTTLS now') == b'501 5.5.4 Syntax: STARTTLS\r\n'


def test_implicit_tls_greets_inside_tls(smtps_server, tls_certs):
    with smtplib.SMTP_SSL(*smtps_server.address, context=tls_certs.client_context,
                          timeout=5) as client:
        code, text = client.ehlo('me')
        assert b'STARTTLS' not in text
        assert client.docmd('STARTTLS')[0] == 503
        client.sendmail('a@example.com', ['b@example.com'], MESSAGE)
    assert len(smtps_server.server.messages) == 1


def test_implicit_tls_plaintext_client_gets_nothing_and_server_survives(
        smtps_server, tls_certs, capfd):
    sock = socket.create_connection(smtps_server.address, timeout=5)
    sock.sendall(b'EHLO plaintext\r\n')
    # A failed handshake closes the connection; no 220 in clear text.
    data = b''
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    assert b'220' not in data
    sock.close()
    with smtplib.SMTP_SSL(*smtps_server.address, context=tls_certs.client_context,
                          timeout=5) as client:
        assert client.noop()[0] == 250
    out, err = capfd.readouterr()
    assert 'Traceback' not in out + err
    assert out == ''


def test_pipelined_commands_after_starttls_are_discarded(starttls_server, tls_certs,
                                                         monkeypatch):
    debug = io.StringIO()
    monkeypatch.setattr(smtpd_compat, 'DEBUGSTREAM', debug)
    sock = socket.create_connection(starttls_server.address, timeout=5)
    recv_reply(sock)
    send_line(sock, b'EHLO me')
    sock.sendall(b'STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n'
                 b'RCPT TO:<victim@example.com>\r\n')
    # Exactly the 220, nothing for the injected commands.
    assert recv_reply(sock) == b'220 2.0.0 Ready to start TLS\r\n'
    tsock = tls_certs.client_context.wrap_socket(sock, server_hostname='127.0.0.1')
    # The injected MAIL left no state behind (and the greeting is gone).
    assert send_line(tsock, b'RCPT TO:<x@example.com>') == \
        b'503 Error: send HELO first\r\n'
    send_line(tsock, b'EHLO me')
    assert send_line(tsock, b'RCPT TO:<x@example.com>') == \
        b'503 Error: need MAIL command\r\n'
    tsock.close()
    assert 'evil' not in debug.getvalue()
    assert 'victim' not in debug.getvalue()


def test_stalled_handshakes_do_not_block_others(live_server, tls_certs):
    for implicit in (True, False):
        server = live_server(TLSRecorder, tls_context=tls_certs.server_context,
                             implicit_tls=implicit)
        stalled = []
        # One client says nothing at all, one sends half a ClientHello.
        silent = socket.create_connection(server.address, timeout=5)
        half = socket.create_connection(server.address, timeout=5)
        if not implicit:
            for s in (silent, half):
                recv_reply(s)
                send_line(s, b'EHLO stall')
                assert send_line(s, b'STARTTLS').startswith(b'220')
        stalled += [silent, half]
        raw_hello = _client_hello()
        half.sendall(raw_hello[:len(raw_hello) // 2])
        if implicit:
            client = smtplib.SMTP_SSL(*server.address,
                                      context=tls_certs.client_context, timeout=5)
        else:
            client = smtplib.SMTP(*server.address, timeout=5)
            client.starttls(context=tls_certs.client_context)
        client.sendmail('a@example.com', ['b@example.com'], MESSAGE)
        client.quit()
        assert len(server.server.messages) == 1
        for s in stalled:
            s.close()


def _client_hello():
    """The bytes of a real TLS ClientHello."""
    outgoing = ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing, server_hostname='localhost')
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_failed_starttls_handshake_closes_only_that_connection(
        starttls_server, tls_certs, capfd):
    sock = socket.create_connection(starttls_server.address, timeout=5)
    recv_reply(sock)
    send_line(sock, b'EHLO me')
    assert send_line(sock, b'STARTTLS').startswith(b'220')
    sock.sendall(b'this is not TLS at all\r\n' * 4)
    try:
        rest = sock.recv(4096)
    except ConnectionResetError:
        rest = b''
    assert not rest.startswith(b'2')
    sock.close()
    with smtplib.SMTP(*starttls_server.address, timeout=5) as client:
        client.starttls(context=tls_certs.client_context)
        assert client.ehlo()[0] == 250
    out, err = capfd.readouterr()
    assert out == '' and 'Traceback' not in err


def test_require_starttls(live_server, tls_certs):
    server = live_server(TLSRecorder, tls_context=tls_certs.server_context,
                         require_starttls=True)
    refusal = (530, b'5.7.0 Must issue a STARTTLS command first')
    with smtplib.SMTP(*server.address, timeout=5) as client:
        client.ehlo()
        assert client.docmd('MAIL FROM:<a@example.com>') == refusal
        assert client.docmd('RCPT TO:<a@example.com>') == refusal
        assert client.docmd('DATA') == refusal
        client.starttls(context=tls_certs.client_context)
        client.sendmail('a@example.com', ['b@example.com'], MESSAGE)
    assert len(server.server.messages) == 1


def test_big_message_and_pipelined_burst_over_tls(starttls_server, tls_certs):
    # Many commands in one TLS record, and a message larger than one
    # record: input OpenSSL holds decrypted must be read without waiting
    # for another socket event.
    tsock = starttls_raw(starttls_server.address, tls_certs.client_context)
    send_line(tsock, b'EHLO me')
    tsock.sendall(b'NOOP\r\n' * 40)
    replies = b''
    while replies.count(b'\r\n') < 40:
        chunk = tsock.recv(65536)
        assert chunk
        replies += chunk
    assert replies == b'250 OK\r\n' * 40
    body = b''.join(b'line %06d ' % i + b'x' * 60 + b'\r\n' for i in range(20000))
    send_line(tsock, b'MAIL FROM:<a@example.com>')
    send_line(tsock, b'RCPT TO:<b@example.com>')
    assert send_line(tsock, b'DATA').startswith(b'354')
    tsock.sendall(body + b'.\r\n')
    assert recv_reply(tsock) == b'250 OK\r\n'
    tsock.close()
    data = starttls_server.server.messages[0][3]
    assert data == body.replace(b'\r\n', b'\n')[:-1]


def test_handshake_timeout_with_loop_timers(live_server, tls_certs):
    live = live_server(TLSRecorder, None, tls_context=tls_certs.server_context,
                       implicit_tls=True, tls_handshake_timeout=0.2,
                       loop='smtpd_compat')
    sock = socket.create_connection(live.address, timeout=10)
    sock.sendall(_client_hello()[:20])
    try:
        assert sock.recv(4096) == b''   # closed by the server
    except ConnectionResetError:
        pass
    sock.close()


@pytest.mark.parametrize('kwargs, error', [
    ({}, TypeError),
    ({'tls_context': 'cert.pem'}, TypeError),
    ({'implicit_tls': True, 'require_starttls': True}, ValueError),
    ({'tls_handshake_timeout': 0}, ValueError),
], ids=['no-context', 'not-a-context', 'implicit+require', 'zero-timeout'])
def test_bad_configuration_raises(tls_certs, kwargs, error):
    kwargs = dict(kwargs)
    if 'tls_context' not in kwargs and kwargs:
        kwargs['tls_context'] = tls_certs.server_context
    with pytest.raises(error):
        TLSRecorder(('127.0.0.1', 0), None, map={}, **kwargs)


# -- independent clients and the command line --------------------------------

def test_swaks_starttls_and_implicit(starttls_server, smtps_server):
    swaks = require_tool('swaks')
    for server, flag in ((starttls_server, '--tls'), (smtps_server, '--tlsc')):
        result = subprocess.run(
            [swaks, '--server', '%s:%d' % server.address, flag,
             '--from', 'a@example.com', '--to', 'b@example.com',
             '--helo', 'swaks.test'],
            capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(server.server.messages) == 1
        assert 'TLS started' in result.stdout


def test_curl_ssl_reqd(starttls_server, tls_certs):
    curl = require_tool('curl')
    result = subprocess.run(
        [curl, '--ssl-reqd', '--cacert', tls_certs.ca_file, '-sS',
         'smtp://127.0.0.1:%d' % starttls_server.port,
         '--mail-from', 'a@example.com', '--mail-rcpt', 'b@example.com',
         '-T', '-'], input=MESSAGE, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    (peer, mailfrom, rcpttos, data, kwargs), = starttls_server.server.messages
    assert rcpttos == ['b@example.com'] and b'over TLS' in data


@pytest.mark.parametrize('smtps', [False, True], ids=['starttls', 'smtps'])
def test_cli(tls_certs, cli_server, smtps):
    proc, port = cli_server('-c', 'DebuggingServer', '--tls-cert', tls_certs.cert_file,
                            *(['--smtps'] if smtps else []))
    try:
        if smtps:
            client = smtplib.SMTP_SSL('127.0.0.1', port,
                                      context=tls_certs.client_context, timeout=5)
        else:
            client = smtplib.SMTP('127.0.0.1', port, timeout=5)
            client.starttls(context=tls_certs.client_context)
        client.sendmail('a@example.com', ['b@example.com'], MESSAGE)
        client.quit()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert 'over TLS' in out
    assert 'Traceback' not in out + err


@pytest.mark.parametrize('args', [
    ['--smtps'], ['--tls-key', 'x.pem'], ['--tls-cert', '/nonexistent.pem'],
    ['--tls-cert', 'CERT', '--smtps', '--require-starttls'],
], ids=['smtps-alone', 'key-alone', 'missing-file', 'smtps+require'])
def test_cli_configuration_errors(tls_certs, python_path_env, args):
    args = [tls_certs.cert_file if a == 'CERT' else a for a in args]
    result = subprocess.run(
        [sys.executable, '-m', 'smtpd_compat', '-n'] + args + ['127.0.0.1:0'],
        env=python_path_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr


# -- reloading the certificate (issue 12, item 10: SIGHUP) ---------------------

@pytest.fixture(scope='module')
def two_certs(tmp_path_factory):
    """A CA trusted by ``client``, two certificates it issued for
    127.0.0.1 (PEM with key) and their DER forms."""
    trustme = pytest.importorskip('trustme')
    ca = trustme.CA()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    d = tmp_path_factory.mktemp('reload')
    pems, ders = [], []
    for n in range(2):
        cert = ca.issue_cert('127.0.0.1', 'localhost')
        path = d / ('cert%d.pem' % n)
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        pems.append(path.read_bytes())
        ders.append(ssl.PEM_cert_to_DER_cert(
            cert.cert_chain_pems[0].bytes().decode()))
    return client, pems, ders


def served_cert(address, client_ctx, smtps=False):
    sock = socket.create_connection(address, timeout=10)
    with sock:
        if not smtps:
            recv_reply(sock)
            send_line(sock, b'EHLO me')
            assert send_line(sock, b'STARTTLS').startswith(b'220')
        with client_ctx.wrap_socket(sock, server_hostname='127.0.0.1') as tls:
            return tls.getpeercert(binary_form=True)


def test_reload_serves_new_certificate_keeps_sessions(live_server, two_certs,
                                                      tmp_path):
    client, pems, ders = two_certs
    path = tmp_path / 'server.pem'
    path.write_bytes(pems[0])
    server = live_server(TLSRecorder, tls_certfile=str(path))
    assert served_cert(server.address, client) == ders[0]
    session = starttls_raw(server.address, client)       # stays open
    path.write_bytes(pems[1])
    server.server.reload()
    assert served_cert(server.address, client) == ders[1]
    # The session encrypted before the reload goes on with its own.
    assert send_line(session, b'EHLO me').startswith(b'250')
    assert session.getpeercert(binary_form=True) == ders[0]
    session.close()
    # A broken file: the error is raised and the last good one is kept.
    path.write_bytes(b'-----BEGIN CERTIFICATE-----\nbroken\n')
    with pytest.raises((OSError, ssl.SSLError)):
        server.server.reload()
    assert served_cert(server.address, client) == ders[1]


def test_reload_without_files_is_a_no_op(live_server, tls_certs):
    server = live_server(TLSRecorder, tls_context=tls_certs.server_context)
    server.server.reload()
    assert server.server.tls_context is tls_certs.server_context
    with pytest.raises(TypeError):
        TLSRecorder(('127.0.0.1', 0), None, map={},
                    tls_context=tls_certs.server_context,
                    tls_certfile=tls_certs.cert_file)


def wait_until(predicate, timeout=20.0):
    """True once ``predicate()`` is (the server is another process: asked
    every 0.1 s), False after ``timeout``."""
    try:
        helpers.poll_until(predicate, timeout, interval=0.1)
    except AssertionError:
        return False
    return True


def login_code(port, client_ctx, password):
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        client.starttls(context=client_ctx)
        client.ehlo()
        try:
            return client.login('alice', password)[0]
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code


def test_cli_sighup_reloads_certificate_and_auth_file(two_certs, tmp_path,
                                                      cli_server):
    import signal
    from smtpd_compat import auth
    client, pems, ders = two_certs
    cert, users = tmp_path / 'server.pem', tmp_path / 'users'
    cert.write_bytes(pems[0])
    users.write_text('alice:%s\n' % auth.hash_password('old', 'pbkdf2'))
    errors = open(tmp_path / 'stderr', 'w+')
    proc, port = cli_server('-c', 'DebuggingServer', '--tls-cert', str(cert),
                            '--auth-file', str(users), stderr=errors)
    try:
        assert served_cert(('127.0.0.1', port), client) == ders[0]
        assert login_code(port, client, 'old') == 235
        # Renewed files, then SIGHUP (logrotate, systemctl reload).
        cert.write_bytes(pems[1])
        users.write_text('alice:%s\n' % auth.hash_password('new', 'pbkdf2'))
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: served_cert(('127.0.0.1', port), client)
                          == ders[1])
        assert login_code(port, client, 'new') == 235
        assert login_code(port, client, 'old') == 535
        # Broken files: both kept, and the log says why.
        cert.write_bytes(b'not a certificate\n')
        users.write_text('alice:plaintext-password\n')
        proc.send_signal(signal.SIGHUP)

        def logged():
            errors.seek(0)
            return errors.read().count('reload() failed') >= 2
        assert wait_until(logged)
        assert proc.poll() is None
        assert served_cert(('127.0.0.1', port), client) == ders[1]
        assert login_code(port, client, 'new') == 235
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        errors.seek(0)
        text = errors.read()
        errors.close()
    assert 'line 1' in text and 'Traceback' not in text
    assert 'plaintext-password' not in text


@pytest.mark.parametrize('args', [[], ['--production']],
                         ids=['stdlib-options', 'production'])
def test_cli_sighup_does_not_kill(cli_server, args):
    import signal
    import time
    proc, port = cli_server('-c', 'DebuggingServer', *args)
    try:
        for _ in range(2):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
        assert proc.poll() is None
        with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
            assert client.noop()[0] == 250
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert 'Traceback' not in out + err


# -- fast paths on an encrypted session (tls.TLSChannelMixin.initiate_send,
# smtp_MAIL/RCPT/DATA): taken only while the code they skip is the original

class CountingChannel(smtpd_compat.SMTPChannel):
    """A user's channel class that sees every initiate_send."""

    calls = 0

    def initiate_send(self):
        CountingChannel.calls += 1
        super().initiate_send()


class CountingTLSServer(TLSRecorder):
    channel_class = CountingChannel


class PlainChannel(smtpd_compat.SMTPChannel):
    """A user's channel class without an initiate_send of its own."""


class PlainTLSServer(TLSRecorder):
    channel_class = PlainChannel


def encrypted_transaction(sock):
    """One message on ``sock``, a client that has done STARTTLS."""
    send_line(sock, b'EHLO me')
    assert send_line(sock, b'MAIL FROM:<a@example.com>') == b'250 OK\r\n'
    assert send_line(sock, b'RCPT TO:<b@example.com>') == b'250 OK\r\n'
    assert send_line(sock, b'DATA')[:3] == b'354'
    assert send_line(sock, MESSAGE + b'.') == b'250 OK\r\n'


def test_initiate_send_of_a_channel_class_sees_every_encrypted_reply(
        live_server, tls_certs):
    served = live_server(CountingTLSServer, tls_context=tls_certs.server_context)
    sock = starttls_raw(served.address, tls_certs.client_context)
    before = CountingChannel.calls
    send_line(sock, b'EHLO me')
    send_line(sock, b'NOOP')
    sock.close()
    # The long way: a call for each reply, sent once its read was processed
    # (the fast path would make it 0).
    assert CountingChannel.calls - before >= 2


def test_initiate_send_patched_later_sees_encrypted_replies(live_server, tls_certs):
    served = live_server(PlainTLSServer, tls_context=tls_certs.server_context)
    # A first session: the fast path is taken and has looked at the class.
    with starttls_raw(served.address, tls_certs.client_context) as sock:
        encrypted_transaction(sock)
    for target in (PlainChannel, smtpd_compat.SMTPChannel,
                   smtpd_compat.asynchat.async_chat):
        original = target.initiate_send
        seen = []

        def spy(self, original=original, seen=seen):
            seen.append(self)
            return original(self)
        with starttls_raw(served.address, tls_certs.client_context) as sock:
            # Patched once the session is encrypted.
            with mock.patch.object(target, 'initiate_send', spy):
                encrypted_transaction(sock)
        assert len(seen) >= 5, target
    assert len(served.server.messages) == 4


class NotEncrypted(tls.TLSChannelMixin):
    """A subclass that says the session is not encrypted."""

    @property
    def tls_active(self):
        return False


def test_require_starttls_asks_an_overridden_tls_active(live_server, tls_certs):
    class Channel(NotEncrypted, smtpd_compat.SMTPChannel):
        pass

    class Server(TLSRecorder):
        channel_class = Channel

    served = live_server(Server, tls_context=tls_certs.server_context,
                         require_starttls=True)
    sock = starttls_raw(served.address, tls_certs.client_context)
    send_line(sock, b'EHLO me')
    # The layer's shortcut for an encrypted session is not taken: the
    # overriding tls_active says no.
    assert send_line(sock, b'MAIL FROM:<a@example.com>') == \
        b'530 5.7.0 Must issue a STARTTLS command first\r\n'
    sock.close()


# -- readable() and writable() on a TLS channel: the threads layer's and the
# session's readable() done by the TLS layer itself, while they are the
# originals and no class in between has one of its own (issue 20)

class OffloadedTLS(tls.TLSServerMixin, threads.OffloadServerMixin, RecordingServer):
    channel_class = PlainChannel


def _callers_of(target, name, stack):
    """Patch ``target.name`` with a spy noting the code that called it."""
    original = getattr(target, name)
    seen = []

    def spy(self):
        seen.append(sys._getframe(1).f_code)
        return original(self)
    stack.enter_context(mock.patch.object(target, name, spy))
    return seen


def test_readable_and_writable_fast_paths_taken(live_server, tls_certs):
    served = live_server(OffloadedTLS, tls_context=tls_certs.server_context)
    with contextlib.ExitStack() as stack:
        # The core's readable() and asynchat's writable(), which the fast
        # paths call in the end (patching them does not turn them off).
        readable = _callers_of(smtpd_compat.SMTPChannel, 'readable', stack)
        writable = _callers_of(smtpd_compat.asynchat.async_chat, 'writable', stack)
        with starttls_raw(served.address, tls_certs.client_context) as sock:
            encrypted_transaction(sock)
    # Called by the TLS layer itself, never by the layers it stands in for
    # (plaintext and encrypted alike).
    assert set(readable) == {tls.TLSChannelMixin.readable.__code__}
    assert set(writable) == {tls.TLSChannelMixin.writable.__code__}
    assert len(readable) >= 4 and len(writable) >= 4
    assert len(served.server.messages) == 1


@pytest.mark.parametrize('target, name', [
    (session.SessionStateMixin, 'readable'),
    (threads.OffloadChannelMixin, 'readable'),
    (PlainChannel, 'readable'),
    (PlainChannel, 'writable'),
    (smtpd_compat.SMTPChannel, 'writable'),
], ids=['session.readable', 'threads.readable', 'channel-class.readable',
        'channel-class.writable', 'SMTPChannel.writable'])
def test_readable_and_writable_patched_later_see_every_call(
        live_server, tls_certs, target, name):
    served = live_server(OffloadedTLS, tls_context=tls_certs.server_context)
    # A first session: the fast paths are taken and have looked at the class.
    with starttls_raw(served.address, tls_certs.client_context) as sock:
        encrypted_transaction(sock)
    with contextlib.ExitStack() as stack:
        with starttls_raw(served.address, tls_certs.client_context) as sock:
            # Patched once the session is encrypted.
            seen = _callers_of(target, name, stack)
            encrypted_transaction(sock)
    assert len(seen) >= 4
    assert len(served.server.messages) == 2


# -- the SSL object's read(), write() and pending() called by the TLS layer
# itself, while ssl.SSLSocket's read(), send(), pending() and _checkClosed()
# are the originals (issue 20)

class _SSLObjectSpy:
    """Stands in for an SSLSocket's SSL object: notes the code that calls
    its read(), write() and pending()."""

    def __init__(self, sslobj, seen):
        self._obj = sslobj
        self._seen = seen

    def __getattr__(self, name):
        attr = getattr(self._obj, name)
        if name in ('read', 'write', 'pending'):
            def spy(*args):
                self._seen.append((name, sys._getframe(1).f_code))
                if name == 'read':
                    self._seen.append(('read size', args[0]))
                return attr(*args)
            return spy
        return attr


def _spied_ssl_socket_class(seen):
    class SpiedSSLSocket(ssl.SSLSocket):
        # (SSLSocket's own methods, not overridden: the fast path holds.)
        @property
        def _sslobj(self):
            return self.__dict__['_spied_sslobj']

        @_sslobj.setter
        def _sslobj(self, value):
            self.__dict__['_spied_sslobj'] = (
                None if value is None else _SSLObjectSpy(value, seen))
    return SpiedSSLSocket


def test_ssl_object_called_directly_on_an_encrypted_session(live_server, tls_certs):
    seen = []
    context = tls_certs.server_context
    with mock.patch.object(context, 'sslsocket_class', _spied_ssl_socket_class(seen)):
        served = live_server(TLSRecorder, tls_context=context)
        with starttls_raw(served.address, tls_certs.client_context) as sock:
            encrypted_transaction(sock)
    # By the TLS layer itself, never through SSLSocket's methods (but for
    # the check for plaintext once the handshake is done).
    # Never more than a TLS record holds (16 KiB; the core asks for 64 KiB
    # at the start of a message), which is all one read returns.
    sizes = [size for name, size in seen if name == 'read size']
    assert sizes and max(sizes) == 16384
    seen = [item for item in seen if item[0] != 'read size']
    handshake = ('pending', ssl.SSLSocket.pending.__code__)
    assert seen.count(handshake) == 1
    assert set(seen) - {handshake} == {
        ('read', tls.TLSChannelMixin.recv.__code__),
        ('write', tls.TLSChannelMixin.send.__code__),
        ('pending', tls.TLSChannelMixin.handle_read.__code__)}
    assert sum(name == 'write' for name, _ in seen) >= 5
    assert len(served.server.messages) == 1


@pytest.mark.parametrize('name', ['read', 'send', 'pending', '_checkClosed'])
def test_ssl_socket_methods_patched_see_every_call(live_server, tls_certs, name):
    served = live_server(TLSRecorder, tls_context=tls_certs.server_context)
    # A first session: the fast paths are taken.
    with starttls_raw(served.address, tls_certs.client_context) as sock:
        encrypted_transaction(sock)
    original = ssl.SSLSocket.__dict__[name]
    seen = []

    def spy(self, *args, **kwargs):
        if self.server_side:      # (not the client's own calls)
            seen.append(name)
        return original(self, *args, **kwargs)
    with starttls_raw(served.address, tls_certs.client_context) as sock:
        # Patched once the session is encrypted: every read, reply and check
        # for pending plaintext of the transaction goes through SSLSocket.
        with mock.patch.object(ssl.SSLSocket, name, spy):
            encrypted_transaction(sock)
    # Five commands: five reads, checks for pending plaintext and replies
    # (the fast paths would make each 0; the check after the last read may
    # come after the client has its reply and the patch is gone).
    assert len(seen) >= 4, seen
    assert len(served.server.messages) == 2

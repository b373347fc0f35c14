"""SMTP AUTH (RFC 4954), PLAIN and LOGIN, over real loopback TLS."""
import base64
import io
import smtplib
import socket
import subprocess
import sys
import time

import pytest

import smtpd_compat
from smtpd_compat import auth
from conftest import read_to_eof, recv_reply, require_tool

USER, PASSWORD = 'alice', 'S3cret-p4ss'
MESSAGE = b'Subject: hi\r\n\r\nauthenticated\r\n'


def b64(data):
    return base64.b64encode(data).decode()


PLAIN_IR = b64(b'\0alice\0S3cret-p4ss')


def check(mechanism, login, password, channel):
    return (login, password) == (USER, PASSWORD)


class Submission(auth.SubmissionServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []

    def process_message(self, peer, mailfrom, rcpttos, data, auth_user=None,
                        **kwargs):
        self.messages.append((mailfrom, rcpttos, data, auth_user))


@pytest.fixture
def submission(live_server, tls_certs):
    return live_server(Submission, tls_context=tls_certs.server_context,
                       authenticator=check)


def send_line(sock, line):
    sock.sendall(line.encode() + b'\r\n')
    return recv_reply(sock).decode()


def tls_session(address, client_ctx):
    """A raw client after EHLO, STARTTLS, handshake and EHLO again."""
    sock = socket.create_connection(address, timeout=5)
    recv_reply(sock)
    send_line(sock, 'EHLO me')
    assert send_line(sock, 'STARTTLS').startswith('220')
    sock = client_ctx.wrap_socket(sock, server_hostname='127.0.0.1')
    assert 'AUTH PLAIN LOGIN' in send_line(sock, 'EHLO me')
    return sock


# -- sans-IO parsers -----------------------------------------------------

@pytest.mark.parametrize('line, expected', [
    ('=', b''), (b'=', b''), ('YWJj', b'abc'), (b'YWJj', b'abc'),
    ('YWJj ', b'abc'), ('', ValueError), ('!!!', ValueError),
    ('YWJ', ValueError), ('YW Jj', ValueError), ('é', ValueError),
], ids=['eq', 'eq-bytes', 'str', 'bytes', 'trailing-space', 'empty',
        'not-base64', 'bad-padding', 'inner-space', 'non-ascii'])
def test_decode_response(line, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            auth.decode_response(line)
    else:
        assert auth.decode_response(line) == expected


@pytest.mark.parametrize('payload, expected', [
    (b'\0u\0p', ('', 'u', 'p')),
    (b'z\0u\0p', ('z', 'u', 'p')),
    (b'\0j\xc3\xb6\0p\xc3\xa4', ('', 'j\xf6', 'p\xe4')),
    (b'u\0p', ValueError), (b'\0\0p', ValueError), (b'\0u\0', ValueError),
    (b'\0u\0p\0', ValueError), (b'\0u\0\xff', ValueError), (b'', ValueError),
], ids=['plain', 'authzid', 'utf8', 'one-nul', 'no-login', 'no-password',
        'three-nul', 'not-utf8', 'empty'])
def test_parse_plain(payload, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            auth.parse_plain(payload)
    else:
        assert auth.parse_plain(payload) == expected


@pytest.mark.parametrize('scheme', ['scrypt', 'pbkdf2-sha256'])
def test_hash_roundtrip(scheme):
    encoded = auth.hash_password(PASSWORD, scheme)
    assert encoded.startswith('$%s$' % scheme)
    assert PASSWORD not in encoded
    assert auth.verify_password(PASSWORD, encoded)
    assert not auth.verify_password(PASSWORD + 'x', encoded)
    # Salted: the same password never hashes the same twice.
    assert auth.hash_password(PASSWORD, scheme) != encoded


@pytest.mark.parametrize('encoded', [
    'S3cret', '$md5$x$y$z', '$scrypt$ln=30,r=8,p=1$' + '00' * 16 + '$' + '00' * 32,
    '$scrypt$ln=14,r=8$' + '00' * 16 + '$' + '00' * 32,
    '$pbkdf2-sha256$i=600000$zz$' + '00' * 32,
], ids=['plain-text', 'unknown-scheme', 'huge-cost', 'missing-param', 'bad-hex'])
def test_bad_hashes_are_refused(encoded):
    with pytest.raises(ValueError):
        auth.verify_password('x', encoded)


def test_file_authenticator(tmp_path):
    path = tmp_path / 'users'
    path.write_text('# comment\n\n%s:%s\nbob:%s\n' % (
        USER, auth.hash_password(PASSWORD), auth.hash_password('pw', 'pbkdf2')))
    check_file = auth.FileAuthenticator(str(path))
    assert check_file('PLAIN', USER, PASSWORD, None) is True
    assert check_file('LOGIN', 'bob', 'pw', None) is True
    assert check_file('PLAIN', USER, 'pw', None) is False
    assert check_file('PLAIN', 'nobody', PASSWORD, None) is False
    path.write_text('%s:%s\n' % (USER, PASSWORD))
    with pytest.raises(ValueError, match='line 1'):
        auth.FileAuthenticator(str(path))


def test_hash_helper_command(python_path_env):
    result = subprocess.run(
        [sys.executable, '-m', 'smtpd_compat.auth', 'hash', USER],
        input=PASSWORD + '\n', env=python_path_env, capture_output=True,
        text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    login, _, encoded = result.stdout.strip().rpartition(':')
    assert login == USER and PASSWORD not in result.stdout
    assert auth.verify_password(PASSWORD, encoded)


# -- live sessions -------------------------------------------------------

@pytest.mark.parametrize('mechanism', ['PLAIN', 'LOGIN'])
@pytest.mark.parametrize('initial_response', [True, False], ids=['ir', 'challenge'])
def test_smtplib_login_delivers_with_auth_user(submission, tls_certs, mechanism,
                                               initial_response):
    with smtplib.SMTP(*submission.address, timeout=5) as client:
        client.starttls(context=tls_certs.client_context)
        client.ehlo()
        client.user, client.password = USER, PASSWORD
        code, text = client.auth(mechanism,
                                 getattr(client, 'auth_' + mechanism.lower()),
                                 initial_response_ok=initial_response)
        assert (code, text) == (235, b'2.7.0 Authentication successful')
        client.sendmail('a@example.com', ['b@example.com'], MESSAGE)
    assert submission.server.messages == [
        ('a@example.com', ['b@example.com'], b'Subject: hi\n\nauthenticated',
         USER)]


@pytest.mark.parametrize('exchange', [
    [('AUTH PLAIN', '334 '), (PLAIN_IR, '235 2.7.0')],
    [('auth plain ' + PLAIN_IR, '235 2.7.0')],
    [('AUTH login', '334 VXNlcm5hbWU6'), (b64(b'alice'), '334 UGFzc3dvcmQ6'),
     (b64(PASSWORD.encode()), '235 2.7.0')],
    [('AUTH LOGIN ' + b64(b'alice'), '334 UGFzc3dvcmQ6'),
     (b64(PASSWORD.encode()), '235 2.7.0')],
    [('AUTH PLAIN', '334 '), ('*', '501 5.7.0'), ('NOOP', '250 OK')],
    [('AUTH LOGIN', '334 '), ('*', '501 5.7.0')],
    [('AUTH PLAIN !!!notbase64', '501 5.5.2'), ('NOOP', '250 OK')],
    [('AUTH PLAIN', '334 '), ('%%%', '501 5.5.2')],
    [('AUTH PLAIN =', '501 5.5.2')],
    [('AUTH LOGIN =', '334 UGFzc3dvcmQ6'), (b64(PASSWORD.encode()), '535 5.7.8')],
    [('AUTH PLAIN ' + b64(b'bob\0alice\0S3cret-p4ss'), '535 5.7.8')],
    [('AUTH CRAM-MD5', '504 5.5.4'), ('AUTH GSSAPI abc', '504 5.5.4')],
    [('AUTH', '501 5.5.4'), ('AUTH PLAIN a b', '501 5.5.4')],
    [('auth plain ' + PLAIN_IR, '235'), ('AUTH PLAIN ' + PLAIN_IR, '503 5.5.1')],
    [('MAIL FROM:<a@example.com>', '530 5.7.0 Authentication required'),
     ('AUTH PLAIN ' + PLAIN_IR, '235'),
     ('MAIL FROM:<a@example.com> AUTH=<>', '250'),
     ('AUTH PLAIN ' + PLAIN_IR, '503 5.5.1')],
], ids=['plain-challenge', 'plain-ir-lowercase', 'login-challenge', 'login-ir',
        'cancel-plain', 'cancel-login', 'bad-base64-ir', 'bad-base64-response',
        'empty-plain', 'empty-login-name', 'authzid-refused', 'unknown-mech',
        'syntax', 'already-authenticated', 'required-then-mail-auth-param'])
def test_exchanges(submission, tls_certs, exchange):
    sock = tls_session(submission.address, tls_certs.client_context)
    for line, expected in exchange:
        reply = send_line(sock, line)
        assert reply.startswith(expected), (line, reply)
        assert reply.endswith('\r\n') and reply.count('\r\n') == 1
    sock.close()


def test_third_failure_closes_with_421(submission, tls_certs):
    sock = tls_session(submission.address, tls_certs.client_context)
    bad = b64(b'\0alice\0wrong')
    assert send_line(sock, 'AUTH PLAIN ' + bad).startswith('535 5.7.8')
    assert send_line(sock, 'AUTH LOGIN ' + b64(b'alice')).startswith('334')
    assert send_line(sock, b64(b'wrong')).startswith('535 5.7.8')
    # Pipelined after the third failure: never executed.
    sock.sendall(('AUTH PLAIN %s\r\nAUTH PLAIN %s\r\n' % (bad, PLAIN_IR)).encode())
    assert recv_reply(sock).startswith(b'421 4.7.0')
    assert sock.recv(100) == b''
    sock.close()


def test_auth_needs_tls(submission, raw_client):
    sock, _ = raw_client(submission.address)
    assert 'AUTH' not in send_line(sock, 'EHLO me')
    assert send_line(sock, 'AUTH PLAIN ' + PLAIN_IR).startswith('538 5.7.11')
    assert send_line(sock, 'MAIL FROM:<a@example.com>').startswith('530 5.7.0')


def test_require_starttls_answers_auth_with_530(live_server, tls_certs, raw_client):
    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=check, require_starttls=True)
    sock, _ = raw_client(server.address)
    send_line(sock, 'EHLO me')
    assert send_line(sock, 'AUTH PLAIN ' + PLAIN_IR) == \
        '530 5.7.0 Must issue a STARTTLS command first\r\n'


def test_auth_forgotten_after_starttls(live_server, tls_certs):
    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=check, auth_allow_plaintext=True)
    with smtplib.SMTP(*server.address, timeout=5) as client:
        client.ehlo()
        assert b'AUTH PLAIN LOGIN' in client.ehlo_resp
        client.login(USER, PASSWORD)
        client.starttls(context=tls_certs.client_context)
        client.ehlo()
        # RFC 3207 4.2: the identity learnt before TLS is gone.
        assert client.docmd('MAIL FROM:<a@example.com>')[0] == 530


def test_implicit_tls_auth(live_server, tls_certs):
    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=check, implicit_tls=True)
    with smtplib.SMTP_SSL(*server.address, context=tls_certs.client_context,
                          timeout=5) as client:
        client.login(USER, PASSWORD)
        client.sendmail('a@example.com', ['b@example.com'], MESSAGE)
    assert server.server.messages[0][3] == USER


def test_broken_authenticator_gives_454(live_server, tls_certs, capfd):
    def broken(*args):
        raise RuntimeError('database down')

    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=broken)
    sock = tls_session(server.address, tls_certs.client_context)
    assert send_line(sock, 'AUTH PLAIN ' + PLAIN_IR).startswith('454 4.7.0')
    assert send_line(sock, 'NOOP') == '250 OK\r\n'
    sock.close()
    out, err = capfd.readouterr()
    assert out == '' and PASSWORD not in err


def test_channel_debug_output_is_redacted(live_server, tls_certs, monkeypatch):
    debug = io.StringIO()
    monkeypatch.setattr(smtpd_compat, 'DEBUGSTREAM', debug)
    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=check)
    sock = tls_session(server.address, tls_certs.client_context)
    send_line(sock, 'AUTH PLAIN ' + PLAIN_IR)
    sock.close()
    sock = tls_session(server.address, tls_certs.client_context)
    send_line(sock, 'AUTH LOGIN ' + b64(USER.encode()))
    send_line(sock, b64(PASSWORD.encode()))
    sock.close()
    # Each line is written to DEBUGSTREAM before its reply was sent.
    text = debug.getvalue()
    assert "Data: b'AUTH PLAIN ***'" in text
    for secret in (PASSWORD, PLAIN_IR, b64(PASSWORD.encode())):
        assert secret not in text


@pytest.mark.parametrize('kwargs, error', [
    ({}, TypeError),
    ({'authenticator': 'alice:pw'}, TypeError),
    ({'authenticator': check, 'auth_mechanisms': ['CRAM-MD5']}, ValueError),
    ({'authenticator': check, 'auth_max_failures': 0}, ValueError),
], ids=['no-authenticator', 'not-callable', 'unknown-mechanism', 'zero-failures'])
def test_bad_configuration_raises(tls_certs, kwargs, error):
    with pytest.raises(error):
        Submission(('127.0.0.1', 0), None, map={},
                   tls_context=tls_certs.server_context, **kwargs)


def test_auth_without_tls_must_be_explicit():
    class Plain(auth.AuthServerMixin, smtpd_compat.SMTPServer):
        pass

    with pytest.raises(ValueError, match='auth_allow_plaintext'):
        Plain(('127.0.0.1', 0), None, map={}, authenticator=check)
    server = Plain(('127.0.0.1', 0), None, map={}, authenticator=check,
                   auth_allow_plaintext=True)
    server.close()


# -- independent clients and the command line ------------------------------

@pytest.mark.parametrize('mechanism', ['PLAIN', 'LOGIN'])
@pytest.mark.parametrize('implicit', [False, True], ids=['tls', 'tlsc'])
def test_swaks(live_server, tls_certs, mechanism, implicit):
    swaks = require_tool('swaks')
    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=check, implicit_tls=implicit)
    base = [swaks, '--server', '%s:%d' % server.address,
            '--tlsc' if implicit else '--tls', '--auth', mechanism,
            '--from', 'a@example.com', '--to', 'b@example.com',
            '--helo', 'swaks.test', '--auth-user', USER]
    ok = subprocess.run(base + ['--auth-password', PASSWORD],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '235 2.7.0 Authentication successful' in ok.stdout
    assert [m[3] for m in server.server.messages] == [USER]
    bad = subprocess.run(base + ['--auth-password', 'wrong'],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert '535 5.7.8' in bad.stdout
    assert len(server.server.messages) == 1


def test_curl_auth(submission, tls_certs):
    curl = require_tool('curl')
    result = subprocess.run(
        [curl, '--ssl-reqd', '--cacert', tls_certs.ca_file, '-sS',
         'smtp://127.0.0.1:%d' % submission.port, '--user',
         '%s:%s' % (USER, PASSWORD), '--mail-from', 'a@example.com',
         '--mail-rcpt', 'b@example.com', '-T', '-'],
        input=MESSAGE, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert submission.server.messages[0][3] == USER


def test_cli_with_debug_never_shows_credentials(tls_certs, tmp_path, cli_server):
    users = tmp_path / 'users'
    users.write_text('%s:%s\n' % (USER, auth.hash_password(PASSWORD)))
    proc, port = cli_server(
        '-d', '-c', 'DebuggingServer', '--tls-cert', tls_certs.cert_file,
        '--auth-file', str(users), '--auth-required')
    try:
        for mechanism in ('PLAIN', 'LOGIN'):
            for initial_response in (True, False):
                with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
                    client.starttls(context=tls_certs.client_context)
                    client.ehlo()
                    client.user, client.password = USER, PASSWORD
                    client.auth(mechanism,
                                getattr(client, 'auth_' + mechanism.lower()),
                                initial_response_ok=initial_response)
                    client.sendmail('a@example.com', ['b@example.com'], MESSAGE)
        with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
            client.starttls(context=tls_certs.client_context)
            client.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login(USER, PASSWORD + 'x')
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    output = out + err
    assert output.count("auth user: 'alice'") == 4
    assert "Data: b'AUTH PLAIN ***'" in output      # debugging was on
    for secret in (PASSWORD, PASSWORD + 'x', PLAIN_IR, b64(PASSWORD.encode()),
                   b64((PASSWORD + 'x').encode()),
                   b64(b'\0alice\0' + (PASSWORD + 'x').encode())):
        assert secret not in output
    assert 'Traceback' not in output


@pytest.mark.parametrize('args', [
    ['--auth-required'], ['--auth-file', 'USERS'],
    ['--auth-file', '/nonexistent', '--auth-allow-plaintext'],
], ids=['required-alone', 'file-without-tls', 'missing-file'])
def test_cli_configuration_errors(tmp_path, python_path_env, args):
    users = tmp_path / 'users'
    users.write_text('')
    args = [str(users) if a == 'USERS' else a for a in args]
    result = subprocess.run(
        [sys.executable, '-m', 'smtpd_compat', '-n'] + args + ['127.0.0.1:0'],
        env=python_path_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr


# -- issue 12, finding 4: throttling, equal timing, hash formats, redaction ----

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def fail(throttle, address, login):
    """One guess let through and failed."""
    assert throttle.allow(address, login)
    throttle.record(address, login, False)


def test_throttle_per_address_and_login():
    clock = FakeClock()
    throttle = auth.AuthThrottle(max_failures=10, window=300, interval=1.0,
                                 clock=clock)
    for i in range(10):
        fail(throttle, '192.0.2.1', 'alice')
        clock.now += 0.01
    # Over the limit: no check until a second after the last failure...
    assert not throttle.allow('192.0.2.1', 'bob')
    clock.now += 0.9
    assert not throttle.allow('192.0.2.1', 'bob')
    clock.now += 0.2
    # ... then one, and none until a second has passed again.
    fail(throttle, '192.0.2.1', 'bob')
    assert not throttle.allow('192.0.2.1', 'bob')
    assert not throttle.allow('192.0.2.1', 'alice')
    # Another address is unaffected, even for the attacked login...
    assert throttle.allow('192.0.2.2', 'alice')
    throttle.record('192.0.2.2', 'alice', True)
    # ... and one that has failed itself is delayed for it, never refused
    # (issue 21: the owner after a typo got 454 while the attack went on).
    fail(throttle, '192.0.2.3', 'carol')
    clock.now += 1.0
    for _ in range(3):
        verdict = throttle.assess('192.0.2.3', 'alice')
        assert verdict.allowed and verdict.delay == 1.0
        throttle.record('192.0.2.3', 'alice', True)
    assert throttle.assess('192.0.2.4', 'alice') == (True, 0.0, False)
    clock.now += 1.0
    assert throttle.allow('192.0.2.1', 'alice')
    assert not throttle.allow('192.0.2.1', 'alice')
    # The window passes: forgotten.
    clock.now += 301
    for _ in range(3):
        fail(throttle, '192.0.2.1', 'alice')


def test_throttle_counts_checks_in_flight():
    # Checks run in worker threads: guesses sent at once over many
    # connections are counted when they are let through, not when they
    # fail, so a burst cannot all pass before the first failure.
    clock = FakeClock()
    throttle = auth.AuthThrottle(max_failures=10, clock=clock)
    allowed = sum(throttle.allow('192.0.2.9', 'alice') for _ in range(100))
    assert allowed == 10
    # A success (or an authenticator error) withdraws its count.
    throttle = auth.AuthThrottle(max_failures=2, clock=clock)
    for _ in range(5):
        assert throttle.allow('192.0.2.9', 'alice')
        throttle.record('192.0.2.9', 'alice', True)
        assert throttle.allow('192.0.2.9', 'alice')
        throttle.record('192.0.2.9', 'alice', None)


def test_throttle_ipv6_counts_the_slash64_and_entries_are_bounded():
    clock = FakeClock()
    throttle = auth.AuthThrottle(max_failures=2, interval=5, clock=clock,
                                 max_entries=50)
    fail(throttle, '2001:db8:1:2::1', 'x')
    fail(throttle, '2001:db8:1:2:ffff::9', 'y')
    assert not throttle.allow('2001:db8:1:2::77', 'z')
    clock.now += 5
    assert throttle.allow('2001:db8:1:2::77', 'z')
    assert not throttle.allow('2001:db8:1:2::78', 'z')
    assert throttle.allow('2001:db8:1:3::1', 'z')
    for i in range(200):
        fail(throttle, '10.0.%d.%d' % (i // 250, i % 250), 'u%d' % i)
    assert len(throttle._entries) <= 50
    # A login of 12 KB is kept as a short digest.
    fail(throttle, '10.9.9.9', 'x' * 12000)
    assert all(len(repr(key)) < 100 for key in throttle._entries)


def test_throttle_is_thread_safe():
    import threading
    throttle = auth.AuthThrottle(max_failures=10 ** 6)

    def work(n):
        for i in range(500):
            assert throttle.allow('192.0.2.%d' % n, 'user%d' % (i % 7))
            throttle.record('192.0.2.%d' % n, 'user%d' % (i % 7), False)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = throttle._entries
    assert sum(len(e) for k, e in entries.items() if k[0] == 'address') == 2000
    assert sum(len(e) for k, e in entries.items() if k[0] == 'login') == 2000


def auth_attempt(address, client_ctx, password, source='127.0.0.1'):
    sock = socket.create_connection(address, timeout=10,
                                    source_address=(source, 0))
    with sock:
        recv_reply(sock)
        send_line(sock, 'EHLO me')
        assert send_line(sock, 'STARTTLS').startswith('220')
        tls = client_ctx.wrap_socket(sock, server_hostname='127.0.0.1')
        with tls:
            send_line(tls, 'EHLO me')
            return send_line(tls, 'AUTH PLAIN ' + b64(
                b'\0alice\0' + password.encode()))[:3]


def test_live_guessing_is_throttled_across_connections(live_server, tls_certs):
    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=check)
    # Ten wrong guesses, each over a new connection, are all checked.
    for i in range(10):
        assert auth_attempt(server.address, tls_certs.client_context,
                            'guess%d' % i) == '535'
    # Then at most one answer a second from that address; the others get
    # 454 4.7.0 without a check, even the right password.
    import time
    start = time.monotonic()
    codes = [auth_attempt(server.address, tls_certs.client_context,
                          'guess-more') for _ in range(8)]
    codes.append(auth_attempt(server.address, tls_certs.client_context,
                              PASSWORD))
    elapsed = time.monotonic() - start
    checked = [c for c in codes if c != '454']
    assert codes.count('454') >= 1, codes
    assert len(checked) <= elapsed + 1, (codes, elapsed)
    assert set(checked) <= {'535', '235'}
    # The right password from another address logs in at once.
    assert auth_attempt(server.address, tls_certs.client_context, PASSWORD,
                        source='127.0.0.2') == '235'


def test_throttled_reply_text(live_server, tls_certs):
    throttle = auth.AuthThrottle(max_failures=1, interval=60)
    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=check, auth_throttle=throttle,
                         auth_max_failures=10)
    sock = tls_session(server.address, tls_certs.client_context)
    with sock:
        assert send_line(sock, 'AUTH PLAIN ' + b64(b'\0alice\0x')).startswith('535')
        # Not checked (not even the right password) for a minute.
        assert send_line(sock, 'AUTH PLAIN ' + PLAIN_IR) == (
            '454 4.7.0 Temporary authentication failure, try again later\r\n')
        assert send_line(sock, 'NOOP') == '250 OK\r\n'

    # auth_throttle=None switches it off.
    server = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=check, auth_throttle=None)
    assert server.server.auth_throttle is None


def test_unknown_logins_cost_a_check_of_a_real_kind(tmp_path, monkeypatch):
    path = tmp_path / 'users'
    salt = b'0123456789abcdef'
    key = auth._derive('pbkdf2-sha256', {'i': 1000}, 'pw', salt)
    lines = ['u%d:$pbkdf2-sha256$i=1000$%s$%s' % (i, salt.hex(), key.hex())
             for i in range(3)]
    # A scrypt entry among the pbkdf2 ones.
    key = auth._derive('scrypt', {'ln': 4, 'r': 8, 'p': 1}, 'pw', salt)
    lines.append('s:$scrypt$ln=4,r=8,p=1$%s$%s' % (salt.hex(), key.hex()))
    path.write_text('\n'.join(lines) + '\n')
    checker = auth.FileAuthenticator(str(path))
    calls = []
    real = auth._derive

    def spy(scheme, params, password, salt):
        calls.append((scheme, tuple(sorted(params.items()))))
        return real(scheme, params, password, salt)

    monkeypatch.setattr(auth, '_derive', spy)
    assert checker('PLAIN', 's', 'pw', None) is True
    assert calls == [('scrypt', (('ln', 4), ('p', 1), ('r', 8)))]
    kinds = set()
    for i in range(60):
        del calls[:]
        assert checker('PLAIN', 'nobody%d' % i, 'pw', None) is False
        assert len(calls) == 1      # exactly one derivation, as for a known login
        kinds.add(calls[0])
        # The same unknown login always costs the same.
        del calls[:]
        checker('PLAIN', 'nobody%d' % i, 'other', None)
        assert calls[0] in kinds
    assert kinds == {('pbkdf2-sha256', (('i', 1000),)),
                     ('scrypt', (('ln', 4), ('p', 1), ('r', 8)))}


def test_pbkdf2_only_file_works_without_scrypt(tmp_path, monkeypatch):
    import hashlib
    path = tmp_path / 'users'
    path.write_text('%s:%s\n' % (USER, auth.hash_password(PASSWORD, 'pbkdf2')))
    scrypt_line = '%s:%s\n' % (USER, auth.hash_password(PASSWORD))
    monkeypatch.delattr(hashlib, 'scrypt')
    checker = auth.FileAuthenticator(str(path))
    assert checker('PLAIN', USER, PASSWORD, None) is True
    assert checker('PLAIN', 'nobody', PASSWORD, None) is False
    with pytest.raises(ValueError, match='pbkdf2'):
        auth.hash_password('x')
    path.write_text(scrypt_line)
    with pytest.raises(ValueError, match='line 1.*scrypt'):
        auth.FileAuthenticator(str(path))
    # An empty file needs no scrypt either.
    path.write_text('')
    assert auth.FileAuthenticator(str(path))('PLAIN', USER, 'x', None) is False


# Written by passlib 1.7.4 (passlib.hash.pbkdf2_sha256 and scrypt).
PASSLIB_HASHES = [
    ('S3cret-p4ss', '$pbkdf2-sha256$29000$J8Q4B2DsPafUGgOgVApBCA$'
                    'qS9QIqe4OqLSz9HpjKkI7GjHLqU/JvvoLF/F6Uqz9pY'),
    ('pw', '$pbkdf2-sha256$1000$x7iXkjJmjBEiREhJyZnzPg$'
           '3uhmWnjvIQg0hSCnO/Scz7DGNQi1ynp3mUUi3FRj3/Q'),
    ('pw', '$scrypt$ln=4,r=8,p=1$EIIwptSa0xpD6D3HOOeckw$'
           'ma3tEhrTPMhu7bjYGzz1BaTvklqE7vjdV7FvDcZJMiw'),
]


@pytest.mark.parametrize('password, encoded', PASSLIB_HASHES,
                         ids=['pbkdf2-29000', 'pbkdf2-1000', 'scrypt'])
def test_passlib_hashes_are_read(password, encoded, tmp_path):
    assert auth.verify_password(password, encoded)
    assert not auth.verify_password(password + 'x', encoded)
    path = tmp_path / 'users'
    path.write_text('alice:%s\n' % encoded)
    assert auth.FileAuthenticator(str(path))('PLAIN', 'alice', password, None)


def test_passlib_roundtrip_if_installed():
    passlib_hash = pytest.importorskip('passlib.hash')
    for handler in (passlib_hash.pbkdf2_sha256.using(rounds=1000),
                    passlib_hash.scrypt.using(rounds=4)):
        encoded = handler.hash('p\xe4ss')
        assert auth.verify_password('p\xe4ss', encoded)
        assert not auth.verify_password('pass', encoded)


def test_file_reload_keeps_old_entries_on_error(tmp_path):
    path = tmp_path / 'users'
    path.write_text('%s:%s\n' % (USER, auth.hash_password('old', 'pbkdf2')))
    checker = auth.FileAuthenticator(str(path))
    path.write_text('%s:%s\n' % (USER, auth.hash_password('new', 'pbkdf2')))
    checker.reload()
    assert checker('PLAIN', USER, 'new', None)
    assert not checker('PLAIN', USER, 'old', None)
    path.write_text('%s:not-a-hash\n' % USER)
    with pytest.raises(ValueError, match='line 1'):
        checker.reload()
    assert checker('PLAIN', USER, 'new', None)
    path.unlink()
    with pytest.raises(OSError):
        checker.reload()
    assert checker('PLAIN', USER, 'new', None)


# Sequences where a client sends credentials the server did not ask for:
# (commands before, the AUTH line, the credential lines pipelined after).
REDACTION_CASES = [
    ('before-ehlo', [], 'AUTH LOGIN', [b64(USER.encode()), b64(PASSWORD.encode())]),
    ('before-helo-plain', [], 'AUTH PLAIN', [PLAIN_IR]),
    ('plaintext-538', ['EHLO me'], 'AUTH LOGIN',
     [b64(USER.encode()), b64(PASSWORD.encode())]),
    ('login-ir-538', ['EHLO me'], 'AUTH LOGIN ' + b64(USER.encode()),
     [b64(PASSWORD.encode())]),
    ('helo-not-ehlo', ['HELO me'], 'AUTH PLAIN', [PLAIN_IR]),
    ('unknown-mech', ['EHLO me'], 'AUTH XOAUTH2', [PLAIN_IR]),
    # The verb in any case, after white space, or before a tab: an AUTH
    # line all the same (its first word, upper-cased, is AUTH).
    ('lower-case', ['EHLO me'], 'auth login', [b64(USER.encode()), b64(PASSWORD.encode())]),
    ('mixed-case', ['EHLO me'], 'aUtH Plain', [PLAIN_IR]),
    ('leading-space', ['EHLO me'], ' AUTH LOGIN',
     [b64(USER.encode()), b64(PASSWORD.encode())]),
    ('tab', ['EHLO me'], 'AUTH\tPLAIN', [PLAIN_IR]),
]


@pytest.mark.parametrize('before, command, creds',
                         [c[1:] for c in REDACTION_CASES],
                         ids=[c[0] for c in REDACTION_CASES])
def test_refused_auth_pipelined_credentials_redacted(
        live_server, monkeypatch, before, command, creds):
    debug = io.StringIO()
    monkeypatch.setattr(smtpd_compat, 'DEBUGSTREAM', debug)

    class Plain(auth.AuthServerMixin, smtpd_compat.SMTPServer):
        pass

    # No TLS and no auth_allow_plaintext... a plaintext-only server needs
    # the flag; refuse AUTH on it through require-TLS semantics instead.
    server = live_server(Plain, authenticator=check, auth_allow_plaintext=True,
                         auth_mechanisms=['PLAIN'] if 'XOAUTH' in command else
                         ['PLAIN', 'LOGIN'])
    server.server.auth_allow_plaintext = False      # answer 538
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        recv_reply(sock)
        lines = before + [command] + creds + ['NOOP', 'QUIT']
        sock.sendall(''.join(line + '\r\n' for line in lines).encode())
        replies = read_to_eof(sock)
    # Every line still got its ordinary reply.
    assert replies.count(b'\r\n') >= len(lines)
    assert replies.endswith(b'221 Bye\r\n')
    text = debug.getvalue()
    assert "Data: b'NOOP'" in text          # other lines still shown
    for secret in creds:
        assert secret not in text, text
    assert PASSWORD not in text


def test_aborted_exchange_pipelined_password_redacted(submission, tls_certs,
                                                      monkeypatch):
    debug = io.StringIO()
    monkeypatch.setattr(smtpd_compat, 'DEBUGSTREAM', debug)
    sock = tls_session(submission.address, tls_certs.client_context)
    with sock:
        # A bad (not base64) user name ends the exchange with 501; the
        # password was already on its way.
        sock.sendall(('AUTH LOGIN\r\n!!!\r\n%s\r\nNOOP\r\n'
                      % b64(PASSWORD.encode())).encode())
        replies = b''
        while replies.count(b'\r\n') < 4:
            replies += sock.recv(4096)
    assert replies.split(b'\r\n')[1].startswith(b'501')
    text = debug.getvalue()
    assert b64(PASSWORD.encode()) not in text
    assert "Data: b'NOOP'" in text


def test_cli_debug_refused_auth_never_shows_credentials(tls_certs, tmp_path,
                                                       cli_server):
    users = tmp_path / 'users'
    users.write_text('%s:%s\n' % (USER, auth.hash_password(PASSWORD, 'pbkdf2')))
    proc, port = cli_server(
        '-d', '-c', 'DebuggingServer', '--tls-cert', tls_certs.cert_file,
        '--auth-file', str(users))
    try:
        sock = socket.create_connection(('127.0.0.1', port), timeout=10)
        with sock:
            recv_reply(sock)
            # 503 (no EHLO yet), then 538 (no TLS): the client sends its
            # LOGIN lines anyway.
            sock.sendall(('AUTH LOGIN\r\n%s\r\n%s\r\nEHLO me\r\nAUTH LOGIN\r\n'
                          '%s\r\n%s\r\nQUIT\r\n' % (
                              b64(USER.encode()), b64(PASSWORD.encode()),
                              b64(USER.encode()), b64(PASSWORD.encode()))
                          ).encode())
            replies = read_to_eof(sock)
        assert b'503 ' in replies and b'538 5.7.11' in replies
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    output = out + err
    assert "Data: b'EHLO me'" in output     # debugging was on
    assert b64(PASSWORD.encode()) not in output
    assert b64(USER.encode()) not in output


@pytest.mark.parametrize('decode_data', [False, True], ids=['bytes', 'str'])
def test_auth_line_in_pieces_and_other_lines(live_server, monkeypatch, decode_data):
    # Lines that are not AUTH commands (their first word is another) are
    # shown and not counted; an AUTH line that arrives in several reads is
    # recognised, on bytes and str channels alike.
    debug = io.StringIO()
    monkeypatch.setattr(smtpd_compat, 'DEBUGSTREAM', debug)

    class Plain(auth.AuthServerMixin, smtpd_compat.SMTPServer):
        pass

    server = live_server(Plain, authenticator=check, auth_allow_plaintext=True,
                         decode_data=decode_data)
    server.server.auth_allow_plaintext = False      # answer 538
    user, password = b64(USER.encode()), b64(PASSWORD.encode())
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        recv_reply(sock)
        sock.sendall(b'EHLO me\r\nAUTHX LOGIN\r\nAUTHENTICATE\r\nNOOPS\r\n'
                     b'AUT\r\n')
        replies = b''
        while not replies.endswith(b'"AUT" not recognized\r\n'):
            replies += sock.recv(4096)
        assert replies.count(b'\r\n500 ') == 4, replies
        sock.sendall(b'AU')
        time.sleep(0.2)     # (a read of its own: the line comes in pieces)
        sock.sendall(b'TH LO')
        time.sleep(0.2)
        sock.sendall(('GIN\r\n%s\r\n%s\r\nNOOP\r\nQUIT\r\n'
                      % (user, password)).encode())
        replies = read_to_eof(sock)
    assert replies.startswith(b'538') and replies.endswith(b'221 Bye\r\n')
    text = debug.getvalue()
    prefix = "Data: '" if decode_data else "Data: b'"
    for shown in ('AUTHX LOGIN', 'AUTHENTICATE', 'NOOPS', 'AUT', 'NOOP'):
        assert prefix + shown + "'" in text, text
    assert user not in text and password not in text, text

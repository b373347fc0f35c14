"""The truthful relay (smtpd_compat.relay): upstream refusals reach the
client, connection failures are 4xx, and 250 means the upstream took it.
The upstream is another of our servers on port 0."""
import random
import re
import smtplib
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import RecordingServer, recv_reply
from smtpd_compat import SMTPChannel
from smtpd_compat.extensions import ESMTPServer, ExtensionsMixin
from smtpd_compat.relay import (
    CANNOT_FORWARD_ADDRESS, RelayServer, UPSTREAM_UNAVAILABLE, crlf_only)


# The relay's own Received: line (no Return-Path: it does not deliver).
RECEIVED = re.compile(rb'Received: from [^\n]+ \(unknown \[127\.0\.0\.1\]\)\n'
                      rb'\tby [^\n]* \(smtpd-compat\) with ESMTP id [0-9A-F]+;?\n'
                      rb'\t(?:for <[^\n]*>; )?[A-Z][a-z]{2}, [^\n]*\n')


def unreceived(data):
    """``data`` as upstream got it without the relay's Received: line,
    which must be there."""
    m = RECEIVED.match(data)
    assert m, data[:300]
    return data[m.end():]


class PickyChannel(SMTPChannel):
    """Refuses some senders and recipients, as a real MTA would."""

    def smtp_MAIL(self, arg):
        if arg and 'blocked@' in arg:
            self.push('553 5.7.1 <blocked@x>: Sender address rejected')
            return
        super().smtp_MAIL(arg)

    def smtp_RCPT(self, arg):
        if arg and 'refused@' in arg:
            self.push('550 5.1.1 <refused@x>: Recipient address rejected')
            return
        if arg and 'later@' in arg:
            self.push('450 4.2.0 <later@x>: Greylisted, try later')
            return
        super().smtp_RCPT(arg)


class Upstream(RecordingServer):
    channel_class = PickyChannel


@pytest.fixture
def upstream(live_server):
    return live_server(Upstream)


@pytest.fixture
def relay(live_server, upstream):
    return live_server(RelayServer, remoteaddr=upstream.address, relay_timeout=5)


def test_one_refused_recipient_gets_the_upstream_550(relay, upstream):
    # The "done when": 550 for that recipient, not 250.
    with smtplib.SMTP(*relay.address, timeout=10) as client:
        refused = client.sendmail('a@x', ['ok@x', 'refused@x', 'ok2@x'],
                                  b'Subject: relayed\r\n\r\n.dot\r\nbody\r\n')
    assert refused == {'refused@x': (550, b'5.1.1 <refused@x>: Recipient address rejected')}
    (peer, mailfrom, rcpttos, data, kwargs), = upstream.server.messages
    assert (mailfrom, rcpttos) == ('a@x', ['ok@x', 'ok2@x'])
    assert unreceived(data) == b'Subject: relayed\n\n.dot\nbody'
    # two recipients: none named in Received: (as Postfix does)
    assert b'\tfor <' not in data


def test_all_refused_means_no_message(relay, upstream):
    with smtplib.SMTP(*relay.address, timeout=10) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail('a@x', ['refused@x', 'later@x'], b'x\r\n')
    assert info.value.recipients == {
        'refused@x': (550, b'5.1.1 <refused@x>: Recipient address rejected'),
        'later@x': (450, b'4.2.0 <later@x>: Greylisted, try later')}
    assert upstream.server.messages == []


def test_sender_refusal_passed_on(relay, upstream):
    with smtplib.SMTP(*relay.address, timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail('blocked@x', ['ok@x'], b'x\r\n')
    assert info.value.smtp_code == 553
    assert upstream.server.messages == []


def test_upstream_data_reply_passed_on(relay, upstream):
    upstream.server.reply = '554 5.7.1 Message rejected as spam'
    with smtplib.SMTP(*relay.address, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail('a@x', ['ok@x'], b'x\r\n')
        assert (info.value.smtp_code, info.value.smtp_error) == (
            554, b'5.7.1 Message rejected as spam')
        upstream.server.reply = None
        client.ehlo_or_helo_if_needed()
        client.mail('a@x')
        client.rcpt('ok@x')
        # the upstream's own 250 text
        assert client.data(b'y\r\n') == (250, b'OK')


def closed_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_upstream_down_is_451(live_server):
    relay = live_server(RelayServer, remoteaddr=('127.0.0.1', closed_port()),
                        relay_timeout=2)
    with smtplib.SMTP(*relay.address, timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail('a@x', ['ok@x'], b'x\r\n')
    assert (info.value.smtp_code, info.value.smtp_error) == (
        451, UPSTREAM_UNAVAILABLE[4:].encode())


def test_silent_upstream_times_out_with_451(live_server):
    # Accepts the connection (backlog) but never greets.
    with socket.socket() as mute:
        mute.bind(('127.0.0.1', 0))
        mute.listen(5)
        relay = live_server(RelayServer, remoteaddr=mute.getsockname(),
                            relay_timeout=0.5)
        start = time.monotonic()
        with smtplib.SMTP(*relay.address, timeout=10) as client:
            client.ehlo()
            code, msg = client.mail('a@x')
        assert code == 451
        assert time.monotonic() - start < 5


def test_upstream_gone_mid_transaction(live_server, upstream):
    relay = live_server(RelayServer, remoteaddr=upstream.address, relay_timeout=5)
    with smtplib.SMTP(*relay.address, timeout=10) as client:
        client.ehlo()
        assert client.mail('a@x')[0] == 250
        assert client.rcpt('ok@x')[0] == 250
        # Drop the upstream's side of the session (on its loop thread).
        for channel in upstream.channels():
            upstream.call(channel.close)
        code, _ = client.rcpt('ok2@x')
        assert code == 451
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.data(b'x\r\n')
        assert 400 <= info.value.smtp_code < 500
    assert upstream.server.messages == []


def test_rset_abandons_upstream_transaction(relay, upstream):
    with smtplib.SMTP(*relay.address, timeout=10) as client:
        client.ehlo()
        client.mail('first@x')
        client.rcpt('ok@x')
        client.rset()
        client.sendmail('second@x', ['ok@x'], b'second\r\n')
    assert [m[1] for m in upstream.server.messages] == ['second@x']


class DSNUpstream(ESMTPServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((mailfrom, rcpttos, data, kwargs))


def test_dsn_and_bdat_through_the_relay(live_server):
    upstream = live_server(DSNUpstream)

    class Relay(ExtensionsMixin, RelayServer):
        pass
    relay = live_server(Relay, remoteaddr=upstream.address, relay_timeout=5)
    sock = socket.create_connection(relay.address, timeout=5)
    with sock:
        recv_reply(sock)
        sock.sendall(b'EHLO c\r\n')
        recv_reply(sock)
        sock.sendall(b'MAIL FROM:<a@x> RET=HDRS ENVID=Id+2B1\r\n'
                     b'RCPT TO:<b@x> NOTIFY=FAILURE ORCPT=rfc822;B@X\r\n'
                     b'BDAT 5 LAST\r\nhello')
        data = b''
        while data.count(b'\r\n') < 3:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    assert data.decode().splitlines()[-1].startswith('250 2.0.0')
    (mailfrom, rcpttos, body, kwargs), = upstream.server.messages
    assert (mailfrom, rcpttos, unreceived(body)) == ('a@x', ['b@x'], b'hello')
    assert b'\tfor <b@x>; ' in body
    assert kwargs['mail_options'] == ['RET=HDRS', 'ENVID=Id+2B1']
    assert kwargs['recipient_options'] == [['NOTIFY=FAILURE', 'ORCPT=rfc822;B@X']]


def test_bad_configuration():
    with pytest.raises(ValueError):
        RelayServer(('127.0.0.1', 0), None, map={})
    with pytest.raises(ValueError):
        RelayServer(('127.0.0.1', 0), ('127.0.0.1', 25), map={}, relay_timeout=0)


def test_cli_relay(upstream, cli_server):
    proc, port = cli_server('-c', 'RelayServer', '--relay-timeout', '5',
                            remoteaddr=upstream.address)
    # (How the command line exits on SIGTERM is test_cli's business; the
    # cli_server fixture kills this one at teardown.)
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        refused = client.sendmail('a@x', ['ok@x', 'refused@x'], b'cli\r\n')
    assert list(refused) == ['refused@x'] and refused['refused@x'][0] == 550
    assert [m[2] for m in upstream.server.messages] == [['ok@x']]


def test_cli_relay_timeout_errors(python_path_env):
    for args, message in ((['--relay-timeout', '3'], b'needs -c RelayServer'),
                          (['-c', 'RelayServer', '--relay-timeout', '-1'],
                           b'not a positive number')):
        result = subprocess.run([sys.executable, '-m', 'smtpd_compat', '-n'] + args,
                                env=python_path_env, capture_output=True, timeout=30)
        assert result.returncode == 1 and message in result.stderr


def test_address_smtplib_cannot_send_is_refused(relay, upstream, raw_client):
    sock, _ = raw_client(relay.address)
    sock.sendall(b'EHLO c\r\nMAIL FROM:<a@x>\r\n'
                 + 'RCPT TO:<j\u00fcrgen@x>\r\n'.encode('utf-8')
                 + b'RCPT TO:<ok@x>\r\nDATA\r\n')
    sock.settimeout(5)
    data = b''
    while not data.endswith(b'354 End data with <CR><LF>.<CR><LF>\r\n'):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    lines = data.decode().splitlines()
    assert lines[-4:] == ['250 OK', CANNOT_FORWARD_ADDRESS,
                          '250 OK', '354 End data with <CR><LF>.<CR><LF>']
    sock.sendall(b'x\r\n.\r\n')
    assert recv_reply(sock).startswith(b'250')
    assert [m[2] for m in upstream.server.messages] == [['ok@x']]


# ---------------------------------------------------------------------------
# Smuggling through the relay (issue 12, finding 11): the message goes
# upstream with CRLF line ends only, so no next hop can see two messages
# where the relay saw one.

class WireRecorder:
    """A minimal upstream SMTP server in a thread that records the bytes
    of each DATA section exactly as they came over the wire (dot-stuffing
    included, terminator excluded)."""

    def __init__(self):
        self.listener = socket.create_server(('127.0.0.1', 0)) \
            if hasattr(socket, 'create_server') else self._listen()
        self.listener.settimeout(0.2)
        self.address = self.listener.getsockname()
        self.messages = []
        self.commands = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _listen():
        sock = socket.socket()
        sock.bind(('127.0.0.1', 0))
        sock.listen(5)
        return sock

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(10)
                self._session(conn)

    def _session(self, conn):
        conn.sendall(b'220 recorder\r\n')
        buf = b''
        in_data = False
        while True:
            if in_data:
                end = buf.find(b'\r\n.\r\n')
                if end < 0:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                self.messages.append(buf[:end + 2])
                buf = buf[end + 5:]
                in_data = False
                conn.sendall(b'250 recorded\r\n')
                continue
            line, sep, rest = buf.partition(b'\r\n')
            if not sep:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                continue
            buf = rest
            verb = line[:4].upper()
            self.commands.append(line)
            if verb == b'DATA':
                in_data = True
                conn.sendall(b'354 go ahead\r\n')
            elif verb == b'QUIT':
                conn.sendall(b'221 bye\r\n')
                return
            else:
                conn.sendall(b'250 ok\r\n')

    def close(self):
        self._stop.set()
        self._thread.join(10)
        self.listener.close()


@pytest.fixture
def wire_recorder():
    recorder = WireRecorder()
    yield recorder
    recorder.close()


SMUGGLED = (b'MAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\n'
            b'Subject: smuggled\r\n\r\nsecond message\r\n')


def unstuff(wire):
    """What a correct next hop makes of DATA bytes (RFC 5321 section
    4.5.2): one leading dot removed from each CRLF line."""
    return b'\r\n'.join(line[1:] if line.startswith(b'.') else line
                        for line in wire.split(b'\r\n'))


# (what the client puts between "A" and the smuggled commands, what the
# upstream must get there after unstuffing)
SMUGGLING_VARIANTS = [
    (b'\r.\r', b'\r\n.\r\n'),
    (b'\r.\n', b'\r\n.\r\n'),
    (b'\n.\r\n', b'\r\n.\r\n'),
    (b'\n.\n', b'\r\n.\r\n'),
    (b'\n.\r', b'\r\n.\r\n'),
    (b'\r.\r\n', b'\r\n.\r\n'),
    (b'\r\n.\r', b'\r\n\r\n'),      # ".<CR>" is a dot-stuffed CRLF line
    (b'\r\n.\n', b'\r\n\r\n'),      # likewise ".<LF>"
    (b'\n..\n', b'\r\n..\r\n'),
    # (the core hands CRLF over as LF, so CR + CRLF is one line end)
    (b'\r\r\n.\n\n', b'\r\n\r\n\r\n'),
]


@pytest.mark.parametrize('decode_data', [False, True], ids=['bytes', 'str'])
@pytest.mark.parametrize('variant, expected', SMUGGLING_VARIANTS,
                         ids=[repr(v)[2:-1] for v, _ in SMUGGLING_VARIANTS])
def test_relay_cannot_be_used_to_smuggle(live_server, wire_recorder, raw_client,
                                         variant, expected, decode_data):
    relay = live_server(RelayServer, remoteaddr=wire_recorder.address,
                        relay_timeout=5, decode_data=decode_data)
    sock, greeting = raw_client(relay.address)
    sock.sendall(b'EHLO client\r\n')
    recv_reply(sock)
    for line in (b'MAIL FROM:<a@x>', b'RCPT TO:<b@x>', b'DATA'):
        sock.sendall(line + b'\r\n')
        assert recv_reply(sock)[:3] in (b'250', b'354')
    sock.sendall(b'Subject: one\r\n\r\nA' + variant + SMUGGLED + b'.\r\n')
    assert recv_reply(sock).startswith(b'250 recorded')
    sock.sendall(b'QUIT\r\n')
    recv_reply(sock)
    # Exactly one message, and not one smuggled command, reached upstream.
    (wire,) = wire_recorder.messages
    assert [c for c in wire_recorder.commands if b'evil' in c] == []
    # CRLF line ends only: no bare CR or LF for a next hop to interpret.
    assert re.search(rb'\r(?!\n)|(?<!\r)\n', wire) is None, wire
    # A next hop that takes any of CR, LF or CRLF as a line end still sees
    # no line that is a lone dot (that would end the message).
    assert b'.' not in re.split(rb'\r\n|\r|\n', wire)
    message = unreceived(unstuff(wire).replace(b'\r\n', b'\n'))
    assert message.replace(b'\n', b'\r\n') == (
        b'Subject: one\r\n\r\nA' + expected + SMUGGLED)


@pytest.mark.parametrize('seed', range(3))
def test_crlf_only_leaves_nothing_to_split(seed):
    # Random mixes of CR, LF, dots and letters: after crlf_only and the
    # dot-stuffing smtplib does, every line end is CRLF and no line is a
    # lone dot, whatever a next hop takes as a line end.
    rng = random.Random(seed)
    for _ in range(2000):
        data = bytes(rng.choice(b'\r\n.a') for _ in range(rng.randrange(1, 24)))
        wire = re.sub(rb'(?m)^\.', b'..', crlf_only(data))
        assert re.search(rb'\r(?!\n)|(?<!\r)\n', wire) is None, data
        assert b'.' not in re.split(rb'\r\n|\r|\n', wire), data
        # a correct next hop gets the content back, only line ends changed
        assert unstuff(wire) == crlf_only(data)
        assert re.sub(rb'[\r\n]', b'', crlf_only(data)) == re.sub(rb'[\r\n]', b'', data)

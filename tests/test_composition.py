"""Capabilities compose in any order (issue 11).

The matrix: every order of the six capability server mixins (PROXY, limits,
session log, TLS, AUTH, extensions) in front of each delivering base class.
The channel class must be the same for every order (checked for all of
them, it is cheap), and a full session through a real socket must come out
right: PROXY header, EHLO/LHLO, STARTTLS, AUTH, a BDAT and a DATA
transaction with several recipients and DSN parameters, QUIT.  Each session
checks what process_message received, the session log lines and that the
connection counters are back to zero after the close.
"""
import base64
import collections
import itertools
import logging
import os
import re
import socket
import ssl
import sys
import threading
from unittest import mock

import pytest

import smtpd_compat
from smtpd_compat.compose import channel_class_for, compose_server
from smtpd_compat.auth import AuthServerMixin
from smtpd_compat.delivery import MaildirServer, MboxServer
from smtpd_compat.extensions import ExtensionsMixin
from smtpd_compat.limits import LimitsServerMixin
from smtpd_compat.lmtp import LMTPServer
from smtpd_compat.logging_ import SessionLogServerMixin
from smtpd_compat.proxy_protocol import ProxyProtocolServerMixin
from smtpd_compat.relay import RelayServer
from smtpd_compat.session import LAYERS, SessionStateMixin
from smtpd_compat.tls import TLSServerMixin

import helpers
from conftest import RecordingServer, recv_reply
from test_fast_paths import _inline_values_kept

MIXINS = (ProxyProtocolServerMixin, LimitsServerMixin, SessionLogServerMixin,
          TLSServerMixin, AuthServerMixin, ExtensionsMixin)
ORDERS = list(itertools.permutations(MIXINS))
CLIENT = ('192.0.2.7', 40000)
USER, PASSWORD = 'user', 'pw'


class Recorder:
    """Records process_message's arguments, then lets the base deliver."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((peer, mailfrom, list(rcpttos), data, kwargs))
        try:
            return super().process_message(peer, mailfrom, rcpttos, data,
                                           **kwargs)
        except NotImplementedError:     # LMTPServer alone delivers nowhere
            return None


def _base(name, *classes):
    # The user's own spelling of the issue: the setting is on their base
    # class, behind whatever mixins they list in front of it.
    return type(name, (Recorder,) + classes, {'auth_user_kwarg': True})


BASES = {
    'maildir+lmtp': _base('MaildirLMTP', MaildirServer, LMTPServer),
    'maildir': _base('Maildir', MaildirServer),
    'mbox': _base('Mbox', MboxServer),
    'lmtp': _base('LMTP', LMTPServer),
    'relay': _base('Relay', RelayServer),
    'debugging': _base('Debugging', smtpd_compat.DebuggingServer),
}


def authenticate(mechanism, login, password, channel):
    return (login, password) == (USER, PASSWORD)


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines():
    handler = LogLines()
    logger = logging.getLogger('smtpd_compat')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _capability_mro(cls):
    return [c for c in cls.__mro__ if 'layer' in c.__dict__]


# -- the class for every order (no sockets) ----------------------------------

@pytest.mark.parametrize('base', sorted(BASES), ids=str)
def test_every_order_builds_the_same_channel_class(base):
    base_class = BASES[base]
    built = set()
    for order in ORDERS:
        user_class = type('S', order + (base_class,), {})
        built.add(channel_class_for(user_class, user_class.channel_class))
        # The CLI's and the plugin's spelling gives the same channel class.
        composed = compose_server(base_class, order)
        built.add(channel_class_for(composed, composed.channel_class))
    assert len(built) == 1
    channel = built.pop()
    # The added mixins, in front of the server's own channel class (which
    # may bring its own message layer, as LMTPChannel does), are in layer
    # order, the shared state innermost.
    mro = channel.__mro__
    added = mro[1:mro.index(channel.composed_base)]
    layers = [c.__dict__['layer'] for c in added]
    assert layers == sorted(layers) and added[-1] is SessionStateMixin
    names = [c.__name__ for c in _capability_mro(channel)]
    # (AUTH checks run in worker threads: the threads layer comes with it.)
    assert names[:7] == [
        'ProxyProtocolChannelMixin', 'SessionLogChannelMixin',
        'LimitsChannelMixin', 'TLSChannelMixin', 'AuthChannelMixin',
        'OffloadChannelMixin', 'ExtensionsChannelMixin']
    assert SessionStateMixin in channel.__mro__
    # Tracebacks name the user's module, not the composing one.
    assert channel.__module__ == channel.composed_base.__module__


def test_layers_cover_every_capability():
    for mixin in MIXINS:
        assert mixin.channel_mixin.layer in LAYERS.values()
    assert LAYERS['proxy'] < LAYERS['session_log'] < LAYERS['limits'] \
        < LAYERS['tls'] < LAYERS['auth'] < LAYERS['inbox'] \
        < LAYERS['threads'] < LAYERS['extensions'] < LAYERS['message'] \
        < LAYERS['trace'] < LAYERS['state']
    # One layer, one number: a layer is a place of its own.
    assert len(set(LAYERS.values())) == len(LAYERS)


def test_capability_defaults_never_shadow_user_attributes():
    class Base(RecordingServer):
        auth_user_kwarg = True
        idle_timeout = 7.0
        esmtp_extensions = ('DSN',)

    for order in itertools.permutations((AuthServerMixin, LimitsServerMixin,
                                         ExtensionsMixin)):
        cls = type('S', order + (Base,), {})
        assert cls.auth_user_kwarg is True
        server = cls(('127.0.0.1', 0), None, map={},
                     authenticator=authenticate, auth_allow_plaintext=True)
        try:
            assert server.idle_timeout == 7.0
            assert server.esmtp_extensions == frozenset({'DSN'})
            # A keyword still wins over the class attribute.
        finally:
            server.close()
    server = cls(('127.0.0.1', 0), None, map={}, idle_timeout=3.0,
                 authenticator=authenticate, auth_allow_plaintext=True)
    server.close()
    assert server.idle_timeout == 3.0


# -- full sessions ------------------------------------------------------------

class Session:
    """A client that speaks through the whole stack on a raw socket."""

    def __init__(self, address, client_context, lmtp):
        self.sock = socket.create_connection(address, timeout=10)
        self.context = client_context
        self.hello = 'LHLO' if lmtp else 'EHLO'

    def send(self, data):
        self.sock.sendall(data)

    def command(self, line, replies=1):
        self.send(line.encode('ascii') + b'\r\n')
        return self.read(replies)

    _pending = b''

    def read(self, replies=1):
        # Several replies may come in one read (the server sends the
        # replies to pipelined commands together).
        got = []
        while len(got) < replies:
            line, sep, rest = self._pending.partition(b'\r\n')
            reply = line
            while sep and line[3:4] == b'-':
                line, sep, rest = rest.partition(b'\r\n')
                reply += b'\r\n' + line
            if sep:
                got.append(reply + b'\r\n')
                self._pending = rest
                continue
            data = recv_reply(self.sock)
            assert data, 'connection closed'
            self._pending += data
        return got[0] if replies == 1 else got

    def starttls(self):
        assert self.command('STARTTLS')[:3] == b'220'
        self.sock = self.context.wrap_socket(self.sock,
                                             server_hostname='127.0.0.1')

    def close(self):
        self.sock.close()


def _code(reply):
    return int(reply[:3])


def run_session(server, address, client_context, lmtp):
    """One full session; returns the replies that matter."""
    s = Session(address, client_context, lmtp)
    try:
        s.send(b'PROXY TCP4 %s 127.0.0.1 %d 25\r\n'
               % (CLIENT[0].encode(), CLIENT[1]))
        assert s.read()[:3] == b'220'
        ehlo = s.command('%s client.example' % s.hello)
        assert b'STARTTLS' in ehlo and b'AUTH' not in ehlo
        s.starttls()
        ehlo = s.command('%s client.example' % s.hello)
        for keyword in (b'AUTH PLAIN', b'CHUNKING', b'DSN', b'PIPELINING'):
            assert keyword in ehlo
        token = base64.b64encode(b'\0%s\0%s' % (USER.encode(),
                                                PASSWORD.encode()))
        assert s.command('AUTH PLAIN %s' % token.decode())[:3] == b'235'
        per_message = 2 if lmtp else 1
        # A BDAT transaction: MAIL, two RCPTs and three chunks, pipelined.
        s.send(b'MAIL FROM:<a@example.com> RET=HDRS ENVID=env1\r\n'
               b'RCPT TO:<b@example.com> NOTIFY=SUCCESS '
               b'ORCPT=rfc822;b@example.com\r\n'
               b'RCPT TO:<c@example.com>\r\n'
               b'BDAT 14\r\nSubject: one\r\n'
               b'BDAT 2\r\n\r\n'
               b'BDAT 7 LAST\r\nbody 1\n')
        replies = s.read(5 + per_message)
        assert [_code(r) for r in replies] == [250] * (5 + per_message)
        # A DATA transaction.
        assert _code(s.command('MAIL FROM:<a@example.com>')) == 250
        assert _code(s.command('RCPT TO:<b@example.com>')) == 250
        assert _code(s.command('RCPT TO:<d@example.com>')) == 250
        assert _code(s.command('DATA')) == 354
        replies = s.command('Subject: two\r\n\r\nbody 2\r\n.', per_message)
        if per_message == 1:
            replies = [replies]
        assert [_code(r) for r in replies] == [250] * per_message
        assert _code(s.command('QUIT')) == 221
    finally:
        s.close()


def check_outcome(runner, log, tmp_path, base):
    server = runner.server
    messages = server.messages
    assert len(messages) == 2, messages
    (peer1, from1, to1, data1, kw1), (peer2, from2, to2, data2, kw2) = messages
    assert peer1 == peer2 == CLIENT
    assert from1 == from2 == 'a@example.com'
    assert to1 == ['b@example.com', 'c@example.com']
    assert to2 == ['b@example.com', 'd@example.com']
    assert data1 == b'Subject: one\n\nbody 1\n'
    assert data2 == b'Subject: two\n\nbody 2'
    assert kw1['auth_user'] == kw2['auth_user'] == USER
    assert kw1['mail_options'] == ['RET=HDRS', 'ENVID=env1']
    assert kw1['recipient_options'] == [
        ['NOTIFY=SUCCESS', 'ORCPT=rfc822;b@example.com'], []]
    # Every counter back to zero once the connection is gone (the server
    # closes its side after the client has read the 221).
    runner.wait_until(lambda: not server._limits_per_ip
                      and not server._limits_channels)
    runner.wait_until(lambda: any(line.startswith('disconnect') for line in log))
    connects = [line for line in log if line.startswith('connect')]
    disconnects = [line for line in log if line.startswith('disconnect')]
    assert len(connects) == 1 and len(disconnects) == 1, log
    assert re.match(r'connect from 192\.0\.2\.7:40000 via 127\.0\.0\.1:\d+$',
                    connects[0])
    assert disconnects[0].startswith(
        'disconnect from 192.0.2.7:40000: messages=2 ')
    assert sum(line.startswith('message from 192.0.2.7:40000')
               for line in log) == 2


def _server_kwargs(base, tmp_path, upstream, tls_certs):
    kwargs = dict(tls_context=tls_certs.server_context,
                  authenticator=authenticate)
    if 'maildir' in base:
        kwargs['maildir'] = str(tmp_path / 'Maildir')
    if base == 'mbox':
        kwargs['mbox'] = str(tmp_path / 'mbox')
    return kwargs


def _sample(orders, count):
    """``count`` orders spread evenly over all of them (first and last
    included)."""
    step = max(1, (len(orders) - 1) // (count - 1))
    return orders[::step][:count - 1] + [orders[-1]]


# The issue's own matrix runs every order; the other bases a spread sample
# of 24 (their channel class is identical for all orders, proven above).
FULL = [('maildir+lmtp', i) for i in range(0, len(ORDERS), 60)]
SAMPLED = [(base, ORDERS.index(order)) for base in sorted(BASES)
           if base != 'maildir+lmtp' for order in _sample(ORDERS, 24)]


@pytest.fixture(scope='module')
def upstream():
    """A recording SMTP server for the relay base, on its own loop."""
    served = helpers.start_server(RecordingServer, None)
    yield served.server
    served.stop()


@pytest.mark.parametrize('base,first', FULL + SAMPLED,
                         ids=lambda v: str(v))
def test_full_session_in_every_order(base, first, live_server, tls_certs,
                                     tmp_path, log_lines, upstream, capsys):
    # Each case runs a block of orders (all 720 for the base, in
    # twelve blocks of 60; one order per case for the sampled bases).
    orders = ORDERS[first:first + 60] if base == 'maildir+lmtp' \
        else [ORDERS[first]]
    lmtp = 'lmtp' in base
    for number, order in enumerate(orders):
        cls = type('S', order + (BASES[base],), {})
        directory = tmp_path / str(number)
        directory.mkdir()
        kwargs = _server_kwargs(base, directory, upstream, tls_certs)
        remote = upstream.socket.getsockname() if base == 'relay' \
            else ('127.0.0.1', 9)
        runner = live_server(cls, remote, **kwargs)
        runner.server.messages = []
        del log_lines[:]
        try:
            run_session(runner.server, runner.address,
                        tls_certs.client_context, lmtp)
            check_outcome(runner, log_lines, directory, base)
        except AssertionError as e:
            raise AssertionError('order %s: %s' % (
                [m.__name__ for m in order], e)) from None
        finally:
            runner.stop()
        if base in ('maildir', 'maildir+lmtp'):
            assert len(os.listdir(directory / 'Maildir' / 'new')) == 2
        if base == 'mbox':
            assert (directory / 'mbox').read_bytes().count(b'\nFrom ') == 1
    if base == 'relay':
        assert upstream.messages[-1][1] == 'a@example.com'
    if base == 'debugging':
        assert capsys.readouterr().out.count('---------- MESSAGE FOLLOWS') \
            == 2 * len(orders)


def test_counter_bug_of_the_natural_spelling(live_server, raw_client):
    """class S(LimitedServer-style limits before PROXY): the balancer's
    address was counted and never released, so after
    max_connections_per_ip connections in total everyone got 421."""
    class S(LimitsServerMixin, ProxyProtocolServerMixin, RecordingServer):
        pass
    runner = live_server(S, max_connections_per_ip=2)
    for n in range(6):
        sock = socket.create_connection(runner.address, timeout=5)
        sock.sendall(b'PROXY TCP4 192.0.2.%d 127.0.0.1 4000 25\r\n' % n)
        assert recv_reply(sock)[:3] == b'220'
        sock.sendall(b'QUIT\r\n')
        assert recv_reply(sock)[:3] == b'221'
        sock.close()
        runner.wait_until(lambda: not runner.server._limits_per_ip)
        assert runner.server._limits_per_ip == collections.Counter()


def test_composed_tls_deadline_is_the_one_deadline(live_server, tls_certs):
    """TLS runs no timer of its own: a stalled handshake is closed by the
    connection's deadline in the 'tls' phase."""
    class S(TLSServerMixin, LimitsServerMixin, RecordingServer):
        pass
    runner = live_server(S, loop='smtpd_compat', tls_context=tls_certs.server_context,
                         implicit_tls=True, tls_handshake_timeout=0.3,
                         clock=True)
    sock = socket.create_connection(runner.address, timeout=10)
    try:
        runner.wait_until(lambda: runner.server.connection_count == 1)
        runner.advance(0.29)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(100)                  # still open, nothing sent
        sock.settimeout(10)
        runner.advance(0.01)
        assert sock.recv(100) == b''        # closed without a reply
    finally:
        sock.close()


def test_ssl_is_used(tls_certs):
    # Guard for the matrix: the client context really verifies the server.
    assert tls_certs.client_context.verify_mode == ssl.CERT_REQUIRED


# -- BDAT is a message like DATA, for limits and for shutdown --------------------

class Chunked(ExtensionsMixin, LimitsServerMixin, RecordingServer):
    pass


def _open_transaction(address):
    sock = socket.create_connection(address, timeout=10)
    # Each write goes out at once (see helpers.Served.settle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert recv_reply(sock)[:3] == b'220'
    for line in (b'EHLO c', b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>'):
        sock.sendall(line + b'\r\n')
        assert recv_reply(sock)[:3] == b'250'
    return sock


MESSAGE = b'Subject: slow\r\n\r\n' + b'x' * 2381 + b'\r\n'   # 2400 bytes


def _trickle(runner, sock, data, rate):
    """Send ``data`` at ``rate`` bytes per second of ``runner``'s manual
    clock, in 100-byte pieces."""
    for i in range(0, len(data), 100):
        sock.sendall(data[i:i + 100])
        runner.settle(sock)
        runner.advance(100 / rate)


@pytest.mark.parametrize('verb', ['DATA', 'BDAT', 'BDAT-chunks'])
def test_slow_message_is_accepted_by_data_and_bdat_alike(verb, live_server):
    # 2400 bytes at 800 B/s take 3 s, under a 1 s timeout and a 100 B/s
    # minimum rate: progress keeps the data deadline ahead, by either verb.
    runner = live_server(Chunked, loop='smtpd_compat', idle_timeout=1.0,
                         data_timeout=1.0, min_data_rate=100, clock=True)
    assert len(MESSAGE) == 2400
    sock = _open_transaction(runner.address)
    try:
        if verb == 'DATA':
            sock.sendall(b'DATA\r\n')
            assert recv_reply(sock)[:3] == b'354'
            _trickle(runner, sock, MESSAGE, 800)
            sock.sendall(b'.\r\n')
        elif verb == 'BDAT':
            sock.sendall(b'BDAT %d LAST\r\n' % len(MESSAGE))
            _trickle(runner, sock, MESSAGE, 800)
        else:
            for n, start in enumerate(range(0, 2400, 800)):
                last = b' LAST' if start == 1600 else b''
                sock.sendall(b'BDAT 800%s\r\n' % last)
                _trickle(runner, sock, MESSAGE[start:start + 800], 800)
                if not last:
                    assert recv_reply(sock)[:3] == b'250'
        assert recv_reply(sock, timeout=10)[:3] == b'250'
    finally:
        sock.close()
    expected = MESSAGE.replace(b'\r\n', b'\n')
    if verb == 'DATA':
        expected = expected[:-1]    # the CRLF before the dot ends DATA
    assert runner.server.messages[0][3] == expected


def test_stalled_bdat_transaction_still_times_out(live_server):
    # The data deadline is not a free pass: a BDAT transaction that stops
    # between chunks is cut off like a stalled DATA.
    runner = live_server(Chunked, loop='smtpd_compat', idle_timeout=0.5,
                         data_timeout=0.5, min_data_rate=100, clock=True)
    sock = _open_transaction(runner.address)
    try:
        sock.sendall(b'BDAT 5\r\nhello')
        assert recv_reply(sock)[:3] == b'250'
        runner.advance(0.5)
        reply = recv_reply(sock, timeout=10)
        assert reply.startswith(b'421 4.4.2')
    finally:
        sock.close()


@pytest.mark.parametrize('verb', ['DATA', 'BDAT'])
def test_shutdown_lets_a_message_in_progress_finish(verb):
    from smtpd_compat.shutdown import GracefulShutdown
    map = {}
    server = Chunked(('127.0.0.1', 0), None, map=map)
    server.messages = []
    shutdown = GracefulShutdown(map, grace_period=10)
    thread = threading.Thread(target=shutdown.run, daemon=True)
    thread.start()
    sock = _open_transaction(server.socket.getsockname())
    try:
        if verb == 'DATA':
            sock.sendall(b'DATA\r\n')
            assert recv_reply(sock)[:3] == b'354'
            sock.sendall(b'Subject: x\r\n\r\nfirst')
        else:
            sock.sendall(b'BDAT 19\r\nSubject: x\r\n\r\nfirst')
            assert recv_reply(sock)[:3] == b'250'
        shutdown.request()
        # The rest comes once the shutdown has begun: the listener closed.
        helpers.poll_until(lambda: not server.accepting)
        if verb == 'DATA':
            sock.sendall(b' second\r\n.\r\n')
        else:
            sock.sendall(b'BDAT 9 LAST\r\n second\r\n')
        replies = recv_reply(sock, timeout=10)
        assert replies[:3] == b'250', replies
        rest = replies.split(b'\r\n', 1)[1] or recv_reply(sock, timeout=10)
        assert rest.startswith(b'421 4.3.2')
    finally:
        sock.close()
        thread.join(15)
    assert not thread.is_alive()
    expected = b'Subject: x\n\nfirst second' + (b'\n' if verb == 'BDAT' else b'')
    assert server.messages[0][3] == expected


# -- the contract: refused compositions, the class cache, the session ----------

from smtpd_compat import compose  # noqa: E402
from smtpd_compat.compose import (  # noqa: E402
    CapabilityServerMixin, CompositionError)


class OtherTLSChannelMixin:
    layer = LAYERS['tls']


class OtherTLSServerMixin(CapabilityServerMixin):
    channel_mixin = OtherTLSChannelMixin


def test_two_mixins_claiming_one_layer_are_refused_naming_both():
    for bases in [(OtherTLSServerMixin, TLSServerMixin),
                  (TLSServerMixin, OtherTLSServerMixin)]:
        with pytest.raises(CompositionError) as info:
            type('Both', bases + (smtpd_compat.SMTPServer,), {})
        message = str(info.value)
        for name in ('OtherTLSChannelMixin', 'OtherTLSServerMixin',
                     'TLSChannelMixin', 'TLSServerMixin', "40 (tls)"):
            assert name in message, message
    # The CLI's and the plugin's way is refused alike.
    with pytest.raises(CompositionError):
        compose_server(RecordingServer, [OtherTLSServerMixin, TLSServerMixin])


class NeedsTLSChannelMixin:
    layer = 45
    requires = ('tls',)


class NeedsTLSServerMixin(CapabilityServerMixin):
    channel_mixin = NeedsTLSChannelMixin


def test_a_missing_layer_is_refused_naming_the_capability_to_add():
    with pytest.raises(CompositionError) as info:
        class Lacking(NeedsTLSServerMixin, RecordingServer):
            pass
    message = str(info.value)
    assert 'NeedsTLSChannelMixin (from NeedsTLSServerMixin)' in message
    assert "'tls'" in message and 'smtpd_compat.tls.TLSServerMixin' in message

    class Complete(NeedsTLSServerMixin, TLSServerMixin, RecordingServer):
        pass
    # (Mixins in the making, not server classes yet, are not judged.)

    class Partial(NeedsTLSServerMixin):
        pass
    assert issubclass(Complete, Partial.__mro__[1])


def test_composed_classes_are_freed_with_the_users_class(tls_certs):
    import gc
    import weakref

    class UsersChannel(smtpd_compat.SMTPChannel):
        pass

    class Users(TLSServerMixin, LimitsServerMixin, RecordingServer):
        channel_class = UsersChannel
    server = Users(('127.0.0.1', 0), None, map={},
                   tls_context=tls_certs.server_context)
    server.close()
    channel = weakref.ref(server.channel_class)
    composed = weakref.ref(compose_server(Users, [ExtensionsMixin]))
    user = weakref.ref(Users)
    # Shared while in use: the same composition gives the same classes.
    assert compose_server(Users, [ExtensionsMixin]) is composed()
    assert channel_class_for(Users, Users.channel_class) is channel()
    entries = len(compose._cache)
    del Users, UsersChannel, server
    gc.collect()
    assert user() is None and channel() is None and composed() is None
    assert len(compose._cache) <= entries - 2


def test_the_old_module_name_is_the_same_module():
    import smtpd_compat._compose as old
    assert old is compose
    assert old.CapabilityServerMixin is CapabilityServerMixin


def test_session_facts_have_defaults_without_their_layers(live_server, raw_client):
    class Plain(LimitsServerMixin, RecordingServer):
        pass
    runner = live_server(Plain)
    sock, greeting = raw_client(runner.address)
    assert greeting.startswith(b'220 ')
    channel = next(obj for obj in list(runner.map.values())
                   if isinstance(obj, SessionStateMixin))
    assert channel.tls_active is False
    assert channel.auth_user is None
    assert channel.proxy_peer is None
    assert channel.receiving_message() is False


class OutcomeChannelMixin:
    """A layer of a test capability: what message_processed was told."""
    layer = LAYERS['inbox']

    def message_processed(self, peer, mailfrom, rcpttos, data, status):
        self.smtp_server.outcomes.append((mailfrom, list(rcpttos), data, status))
        super().message_processed(peer, mailfrom, rcpttos, data, status)


class OutcomeServerMixin(CapabilityServerMixin):
    channel_mixin = OutcomeChannelMixin
    outcomes = None


class OwnProcessMessage(smtpd_compat.SMTPServer):
    """process_message that calls no super(), answers per mailfrom."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if mailfrom == 'boom@x':
            raise RuntimeError('handler bug')
        return '550 refused' if mailfrom == 'no@x' else None


@pytest.mark.parametrize('threaded', [False, True], ids=['loop', 'threads'])
def test_message_processed_hook_sees_every_outcome(threaded, live_server, caplog):
    from smtpd_compat.session import INTERNAL_ERROR
    from smtpd_compat.threads import PROCESSING_FAILED, ThreadedServerMixin
    bases = (OutcomeServerMixin,) + ((ThreadedServerMixin,) if threaded else ()) \
        + (OwnProcessMessage,)
    cls = type('S', bases, {})
    runner = live_server(cls)
    runner.server.outcomes = []
    import smtplib
    with caplog.at_level(logging.CRITICAL, logger='smtpd_compat'):
        with smtplib.SMTP(*runner.address, timeout=10) as client:
            client.sendmail('yes@x', ['a@x'], b'one\r\n')
            with pytest.raises(smtplib.SMTPDataError):
                client.sendmail('no@x', ['b@x', 'c@x'], b'two\r\n')
            with pytest.raises(smtplib.SMTPDataError):
                client.sendmail('boom@x', ['d@x'], b'three\r\n')
    failed = PROCESSING_FAILED if threaded else INTERNAL_ERROR
    assert runner.server.outcomes == [
        ('yes@x', ['a@x'], b'one', None),
        ('no@x', ['b@x', 'c@x'], b'two', '550 refused'),
        ('boom@x', ['d@x'], b'three', failed)]


def test_graceful_shutdown_hangs_up_on_a_compat_channel_without_patching_it():
    """A plain SMTPChannel has no session state: it is hung up through the
    core's _input_paused hook, and a command pipelined behind the 421 is
    not processed."""
    from smtpd_compat.shutdown import GracefulShutdown
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    shutdown = GracefulShutdown(map, grace_period=5)
    thread = threading.Thread(target=shutdown.run, daemon=True)
    thread.start()
    sock = socket.create_connection(server.socket.getsockname()[:2], timeout=10)
    try:
        assert recv_reply(sock).startswith(b'220 ')
        sock.sendall(b'HELO c\r\n')
        assert recv_reply(sock).startswith(b'250 ')
        channel = next(obj for obj in list(map.values())
                       if isinstance(obj, smtpd_compat.SMTPChannel))
        shutdown.request()
        reply = recv_reply(sock, timeout=10)
        assert reply.startswith(b'421 4.3.2 ')
        try:
            sock.sendall(b'MAIL FROM:<a@b>\r\n')
        except OSError:
            pass
        assert sock.recv(100) == b''        # closed, nothing more said
        assert 'readable' not in vars(channel)
        assert channel.mailfrom is None
    finally:
        sock.close()
        thread.join(15)
    assert not thread.is_alive()
    assert map == {}


# -- idle memory: the layers' state in slots (CPython 3.11 and 3.12) -------

SLOTTED = (3, 11) <= sys.version_info < (3, 13)
# CPython 3.13 (where a class with slots loses its inline values): a
# composed class keeps its layers' state in a slotted cold state object,
# behind properties (smtpd_compat.compose.derive).
COLD = sys.version_info >= (3, 13)
INLINE_VALUES = sys.version_info[:2] == (3, 13) and sys.implementation.name == 'cpython'


def _channel_of(served):
    return served.call(lambda: next(
        obj for obj in list(served.map.values())
        if isinstance(obj, smtpd_compat.SMTPChannel)))


@pytest.mark.skipif(not (SLOTTED or COLD), reason='slots on 3.11 and 3.12, cold state on 3.13')
def test_composed_channel_dict_within_the_shared_keys_limit(live_server):
    # CPython shares the attribute-name table of instances with at most 29
    # names in __dict__; the stdlib's own attributes take 29 after MAIL,
    # so the layers' per-connection state lives in slots of the composed
    # class (3.11, 3.12) or in its cold state (3.13: 29 inline values),
    # each starting at its class default.
    Server = compose_server(RecordingServer, [
        SessionLogServerMixin, LimitsServerMixin, ExtensionsMixin,
        ProxyProtocolServerMixin])
    served = live_server(Server, loop='smtpd_compat', proxy_trusted=['127.0.0.1'])
    sock = socket.create_connection(served.address, timeout=10)
    try:
        sock.sendall(b'PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n')
        assert recv_reply(sock).startswith(b'220 ')
        channel = _channel_of(served)
        greeted = served.call(lambda: sorted(vars(channel)))
        for line in (b'EHLO c', b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>', b'DATA',
                     b'Subject: x\r\n\r\nbody\r\n.', b'RSET',
                     b'MAIL FROM:<a@b> BODY=8BITMIME', b'RCPT TO:<c@d>'):
            sock.sendall(line + b'\r\n')
            assert recv_reply(sock)[:1] in (b'2', b'3')
        names = served.call(lambda: sorted(vars(channel)))
        assert len(names) <= 29, (len(names), names)
        # No name comes after the greeting: CPython 3.11 stops growing a
        # class's shared table of names once instances exist, and a name
        # added late gives the channel a dict of its own.
        assert names == greeted
        for name in ('_deadline_timer', '_log_opened', '_limits_errors',
                     '_verb', '_proxy_buffer', 'proxy_header'):
            assert name not in names
        assert channel._verb == 'RCPT'
        assert channel.proxy_header.source == ('192.0.2.7', 40000)
        assert channel.auth_user is None and channel.waiting is False
        # Users still set attributes of their own.
        channel.my_note = 'kept'
        assert vars(channel)['my_note'] == 'kept'
    finally:
        sock.close()


def test_a_user_class_attribute_of_a_layer_state_name_is_kept(live_server):
    # A name the user's channel class defines is not put in a slot: it
    # is looked up along the MRO exactly as without slots.
    class Channel(smtpd_compat.SMTPChannel):
        _limits_ip = 'from the class'
        _reading_paused = False     # one of the core's slots
        my_state = 1

    class Server(SessionLogServerMixin, LimitsServerMixin, RecordingServer):
        channel_class = Channel

    served = live_server(Server, loop='smtpd_compat')
    sock = socket.create_connection(served.address, timeout=10)
    try:
        assert recv_reply(sock).startswith(b'220 ')
        channel = _channel_of(served)
        cls = type(channel)
        if SLOTTED:
            assert '_budget_held' in cls.__slots__
            assert '_limits_ip' not in cls.__slots__
            assert '_reading_paused' not in cls.__slots__
        if COLD:
            assert isinstance(cls.__dict__['_budget_held'], property)
            assert '_limits_ip' not in cls.__dict__
            assert '_limits_ip' in vars(channel)
        assert channel._budget_held == 0
        # Counted in _limits_per_ip under this key: set by the layer.
        assert channel._limits_ip == '127.0.0.1'
        assert 'my_state' not in vars(channel) and channel.my_state == 1
        for line in (b'HELO c', b'NOOP'):
            sock.sendall(line + b'\r\n')
            assert recv_reply(sock).startswith(b'250 ')
    finally:
        sock.close()


# The CLI's --production composition (the session log and the limits).
PRODUCTION = (SessionLogServerMixin, LimitsServerMixin)


@pytest.mark.skipif(sys.version_info[:2] != (3, 13) or
                    sys.implementation.name != 'cpython',
                    reason="CPython 3.13's inline values (see compose._COLD)")
def test_production_channels_keep_inline_values_on_313(live_server):
    # Past 29 names (the production channel had 40 once greeted) every
    # channel carried a dict of its own, ~1.5 KiB; and every channel must
    # add its names in one order, or it and those after it lose them.
    Server = compose_server(RecordingServer, PRODUCTION)
    served = live_server(Server, loop='smtpd_compat')
    socks = [socket.create_connection(served.address, timeout=10) for _ in range(3)]
    try:
        for sock in socks:
            assert recv_reply(sock).startswith(b'220 ')
        for sock in socks[:2]:
            for line in (b'EHLO c', b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>', b'DATA',
                         b'Subject: x\r\n\r\nbody\r\n.', b'RSET', b'NOOP',
                         b'MAIL FROM:<a@b> SIZE=10', b'RCPT TO:<c@d>'):
                sock.sendall(line + b'\r\n')
                assert recv_reply(sock)[:1] in (b'2', b'3')
        channels = served.call(lambda: [obj for obj in list(served.map.values())
                                        if isinstance(obj, smtpd_compat.SMTPChannel)])
        assert len(channels) == 3
        names = served.call(lambda: [list(vars(ch)) for ch in channels])
        assert names[0] == names[1] == names[2] and len(names[0]) <= 29, names
        assert served.call(lambda: [_inline_values_kept(ch) for ch in channels]) == [True] * 3
        # The layers' state is there all the same.
        assert served.call(lambda: channels[0]._limits_ip) == '127.0.0.1'
        assert served.call(lambda: channels[0]._log_messages) == 1
        assert served.call(lambda: channels[2].deadline_phase) == 'idle'
        socks[0].sendall(b'QUIT\r\n')
        assert recv_reply(socks[0]).startswith(b'221 ')
        served.wait_until(lambda: not channels[0].connected)
        assert served.call(lambda: [_inline_values_kept(ch) for ch in channels]) == [True] * 3
    finally:
        for sock in socks:
            sock.close()


def _layer_names(channel):
    """The names the layers of ``channel``'s composed class keep for it
    (slots on 3.11 and 3.12, its cold state on 3.13): those they list,
    less those another class defines (asyncore's ``closing``)."""
    cls = type(channel)
    return compose._layer_state(cls.__bases__[:-1], cls.composed_base)


def test_layer_state_reads_writes_deletes_and_patches_as_attributes(live_server):
    # Whether in slots (3.11, 3.12), properties over the cold state (3.13)
    # or plain attributes (before 3.11): set, read, patched and restored
    # like instance attributes, and not in vars(); deleted, one is missing
    # where it is kept apart (AttributeError, not the class default).
    Server = compose_server(RecordingServer, PRODUCTION)
    served = live_server(Server, loop='smtpd_compat')
    sock = socket.create_connection(served.address, timeout=10)
    try:
        assert recv_reply(sock).startswith(b'220 ')
        channel = _channel_of(served)

        def check():
            names = _layer_names(channel)
            assert {'_limits_ip', '_deadline', 'waiting', '_log_opened'} <= set(names)
            assert 'closing' not in names       # asyncore's
            # Each starts at its class default, or as its layer set it.
            assert channel.waiting is False and channel.auth_user is None
            assert channel._limits_ip == '127.0.0.1'
            assert channel.deadline_phase == 'idle'
            kept = {name: getattr(channel, name) for name in names
                    if hasattr(channel, name)}
            for name in kept:
                value = ['mine', name]
                with mock.patch.object(channel, name, value):
                    assert getattr(channel, name) is value
                assert getattr(channel, name) is kept[name], name
                setattr(channel, name, value)
                assert getattr(channel, name) is value
                if SLOTTED or COLD:
                    assert name not in vars(channel)
                delattr(channel, name)
                if SLOTTED or COLD:
                    assert not hasattr(channel, name)
                    with pytest.raises(AttributeError, match=name):
                        getattr(channel, name)
                    with pytest.raises(AttributeError):
                        delattr(channel, name)
                setattr(channel, name, kept[name])
            return sorted(kept)

        assert '_deadline_timer' in served.call(check)
        for line in (b'EHLO c', b'MAIL FROM:<a@b>', b'RCPT TO:<c@d>', b'DATA',
                     b'Subject: x\r\n\r\nbody\r\n.', b'NOOP'):
            sock.sendall(line + b'\r\n')
            assert recv_reply(sock)[:1] in (b'2', b'3')
        assert served.call(lambda: channel._log_messages) == 1
    finally:
        sock.close()


def test_a_class_attribute_of_a_subclass_of_the_composed_class_wins(live_server):
    # As over an instance attribute: the subclass's class attribute is
    # found first, and what the layer sets goes to the instance's __dict__.
    Server = compose_server(RecordingServer, PRODUCTION)
    served = live_server(Server, loop='smtpd_compat')
    composed = served.server.channel_class

    class Built(composed):
        _log_messages = 'from the class'
        _limits_junk = 'from the class'

    served.server.channel_class = Built
    sock = socket.create_connection(served.address, timeout=10)
    try:
        assert recv_reply(sock).startswith(b'220 ')
        channel = _channel_of(served)
        assert type(channel) is Built
        assert served.call(lambda: vars(channel)['_limits_junk']) == 0
        assert served.call(lambda: vars(channel)['_log_messages']) == 0
        served.call(lambda: delattr(channel, '_limits_junk'))
        assert served.call(lambda: channel._limits_junk) == 'from the class'
        served.call(lambda: setattr(channel, '_limits_junk', 0))
        for line in (b'HELO c', b'NOOP'):
            sock.sendall(line + b'\r\n')
            assert recv_reply(sock).startswith(b'250 ')
    finally:
        sock.close()


@pytest.mark.skipif(not (SLOTTED or COLD), reason='slots on 3.11 and 3.12, cold state on 3.13')
def test_a_full_stack_session_adds_no_name_after_its_first_command(
        live_server, tls_certs):
    # Every capability (PROXY, TLS, AUTH, BDAT, DSN, the session log ...):
    # a name added to a channel's __dict__ after its construction would
    # come after CPython 3.11 stopped growing the class's shared table of
    # names, and give every channel a dict of its own.
    seen = []

    inline = []

    class Watched(smtpd_compat.SMTPChannel):
        def found_terminator(self):
            seen.append(sorted(vars(self)))
            if INLINE_VALUES:
                inline.append(_inline_values_kept(self))
            super().found_terminator()

    base = type('Base', (Recorder, RecordingServer), {
        'channel_class': Watched, 'auth_user_kwarg': True})
    cls = type('S', MIXINS + (base,), {})
    runner = live_server(cls, tls_context=tls_certs.server_context,
                         authenticator=authenticate)
    runner.server.messages = []
    composed = runner.server.channel_class

    class Built(composed):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(sorted(vars(self)))     # once every layer is done

    runner.server.channel_class = Built
    run_session(runner.server, runner.address, tls_certs.client_context, False)
    assert len(seen) > 10
    assert len(seen[0]) <= 29, seen[0]
    for names in seen:
        assert names == seen[0]
    # On 3.13: every channel keeps its attributes inline throughout.
    assert all(inline) and len(inline) == INLINE_VALUES * (len(seen) - 1)

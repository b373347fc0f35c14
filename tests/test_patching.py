"""Faithful under patching: the test idioms that real suites use on the
stdlib's smtpd see exactly what they saw on CPython 3.11.

Suites patch asynchat's and asyncore's machinery (``mock.patch(
'asynchat.async_chat.push')``), build channels on ``Mock()`` sockets,
override ``push`` or ``recv`` in a subclass, and assert on the calls.  The
core replaces some of that machinery with faster code of its own (the list
is in docs/deviations.rst, "Faithful under patching"); each fast path must
give way while what it skips is patched or overridden.

Each scenario below is a function of the module under test (CPython's smtpd
or smtpd_compat) that returns what the patches saw, as plain data.  The
expected values were recorded from CPython 3.11.7's smtpd; the ``stdlib``
half of every test checks that record against the real stdlib where it
exists (Python 3.11 and older), and the ``ours`` half checks smtpd_compat
against it on every interpreter.  The second group of tests shows each fast
path is still taken when nothing is patched (seen with a profiler, which
patches nothing).
"""
import contextlib
import socket
import sys
import warnings
from unittest import mock

import pytest

import smtpd_compat
from conftest import HAVE_STDLIB_SMTPD

FQDN = 'test.invalid'
GREETING = b'220 test.invalid Python SMTP proxy version 0.3\r\n'


def _module(which):
    if which == 'ours':
        return smtpd_compat
    if not HAVE_STDLIB_SMTPD:
        pytest.skip('no stdlib smtpd on Python %d.%d: checked against the '
                    'values recorded from 3.11' % sys.version_info[:2])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import smtpd
    return smtpd


@pytest.fixture(autouse=True)
def _fqdn():
    # Both modules look the host name up through socket.getfqdn.
    with mock.patch('socket.getfqdn', return_value=FQDN):
        yield


@pytest.fixture(autouse=True)
def _devnull_untouched(monkeypatch):
    # A scenario that patches Devnull makes smtpd_compat notice it for the
    # rest of the process; later tests start from an untouched Devnull.
    monkeypatch.setattr(smtpd_compat, '_devnull_watched', False)


class Session:
    """A channel of ``channel_class`` on one end of a socket pair, with a
    Mock() server (the usual unit-test set-up); ``send(line)`` writes a
    command from the other end and lets the channel read it."""

    def __init__(self, module, channel_class=None, **kwargs):
        self.map = {}
        self.server = mock.Mock()
        self.server.process_message.return_value = None
        self.ours, self.peer = socket.socketpair()
        self.peer.settimeout(5)
        cls = channel_class or module.SMTPChannel
        try:
            self.channel = cls(self.server, self.ours, ('127.0.0.1', 1),
                               map=self.map, **kwargs)
        except BaseException:
            self.close()
            raise

    def send(self, *lines):
        for line in lines:
            self.peer.sendall(line + b'\r\n')
            self.channel.handle_read()

    def received(self):
        """What the client end has received so far."""
        self.peer.setblocking(False)
        data = b''
        try:
            while True:
                chunk = self.peer.recv(65536)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        self.peer.setblocking(True)
        return data

    def close(self):
        smtpd_compat.asyncore.close_all(map=self.map)
        self.ours.close()
        self.peer.close()


@contextlib.contextmanager
def session(module, channel_class=None, **kwargs):
    s = Session(module, channel_class, **kwargs)
    try:
        yield s
    finally:
        s.close()


def _plain(value, channel=None):
    """``value`` with mocks and the channel replaced by names, so that
    observations compare across runs and modules."""
    if channel is not None and value is channel:
        return '<channel>'
    if isinstance(value, mock.NonCallableMock):
        return '<mock>'
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, channel) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v, channel) for k, v in value.items()}
    return value


def _calls(the_mock, channel=None):
    """A mock's calls as (args, kwargs) with mocks and the channel named."""
    return [(_plain(tuple(c.args), channel), _plain(dict(c.kwargs), channel))
            for c in the_mock.call_args_list]


def _method_calls(the_mock):
    """A Mock socket's method calls as (name, args)."""
    return [(name, _plain(tuple(args))) for name, args, _ in the_mock.mock_calls]


def _error(exc):
    return '%s: %s' % (type(exc).__name__, exc)


HELO = b'HELO client.example.org'
MAIL = b'MAIL FROM:<a@example.org>'
RCPT = b'RCPT TO:<b@example.org>'


# -- the scenarios -----------------------------------------------------------

def push_patched_on_mock_sockets(module):
    # The idiom: every reply reaches the patched push, from the
    # constructor on; with nothing sent, mock sockets never fail.
    with mock.patch('asynchat.async_chat.push') as push:
        conn = mock.Mock()
        channel = module.SMTPChannel(mock.Mock(), conn, mock.Mock())
        try:
            conn.recv.return_value = HELO + b'\r\n'
            channel.handle_read()
            conn.recv.return_value = MAIL + b'\r\n'
            channel.handle_read()
            return {'push': _calls(push, channel),
                    'recv': _calls(conn.recv),
                    'socket': sorted({name for name, _ in _method_calls(conn)})}
        finally:
            channel.close()


def push_patched_session(module):
    # The same patch on a channel over a real socket: nothing reaches the
    # client, every reply reaches the patch, fed by found_terminator.
    with mock.patch('asynchat.async_chat.push') as push, \
            session(module) as s:
        for line in (HELO, MAIL, RCPT, b'DATA'):
            s.channel.collect_incoming_data(line)
            s.channel.found_terminator()
        return {'push': _calls(push, s.channel), 'client': s.received()}


def channel_on_mock_sockets(module):
    # SMTPChannel(Mock(), Mock(), Mock()) unpatched: the Mock's send result
    # cannot be compared with a length, in 3.11's asynchat as here.
    try:
        module.SMTPChannel(mock.Mock(), mock.Mock(), mock.Mock())
    except Exception as e:
        return _error(e)
    finally:
        module.asyncore.close_all(ignore_all=True)
    return 'no error'


def channel_on_mock_socket_that_sends(module):
    # A Mock connection whose send() reports every byte sent: the calls it
    # gets, in order (no TCP_NODELAY option on a Mock).
    conn = mock.Mock()
    conn.send.side_effect = len
    conn.getpeername.return_value = ('192.0.2.1', 5000)
    conn.recv.side_effect = [HELO + b'\r\n', MAIL + b'\r\n', b'']
    channel = module.SMTPChannel(mock.Mock(), conn, ('192.0.2.1', 5000),
                                 map={})
    try:
        for _ in range(3):
            channel.handle_read()
        return {'socket': _method_calls(conn), 'connected': channel.connected}
    finally:
        channel.close()


def send_patched(module):
    # mock.patch of asyncore.dispatcher.send: called with each reply (a
    # class attribute mock gets no self), its result handled by asynchat.
    sent = mock.patch('asyncore.dispatcher.send', side_effect=len)
    with sent as send, session(module) as s:
        s.send(HELO, MAIL, RCPT, b'NOOP')
        return {'send': _calls(send), 'client': s.received(),
                'queued': list(s.channel.producer_fifo)}


def send_patched_autospec(module):
    with mock.patch('asyncore.dispatcher.send', autospec=True,
                    return_value=3) as send, session(module) as s:
        s.send(b'NOOP')
        return {'send': _calls(send, s.channel),
                'queued': list(s.channel.producer_fifo)}


def send_patched_default(module):
    # The patch's default return value is a MagicMock, which asynchat
    # cannot compare with a length: the constructor raises, as on 3.11.
    with mock.patch('asyncore.dispatcher.send') as send:
        try:
            with session(module):
                pass
        except TypeError as e:
            return {'error': _error(e), 'send': _calls(send)}
    return 'no error'


def socket_class_patched(module):
    # mock.patch('socket.socket'): the server's socket is a MagicMock.  Its
    # calls (the listen backlog among them), then one handle_accept() with
    # a Mock connection from accept(): one channel, as in the stdlib.
    with mock.patch('socket.socket') as socket_class:
        listener = socket_class.return_value
        map = {}
        server = module.SMTPServer(('127.0.0.1', 0), None, map=map)
        try:
            conn = _mock_connection()
            listener.accept.return_value = (conn, ('192.0.2.1', 5000))
            server.handle_accept()
            return {'class': _calls(socket_class),
                    'listener': [(n, a) for n, a in _method_calls(listener)
                                 if not n.startswith('getsockopt().')],
                    'conn': _method_calls(conn),
                    'channels': len(map) - 1}
        finally:
            module.asyncore.close_all(map=map, ignore_all=True)


@contextlib.contextmanager
def listening(module):
    """An SMTPServer of ``module`` on 127.0.0.1 port 0, on its own map."""
    map = {}
    server = module.SMTPServer(('127.0.0.1', 0), None, map=map)
    try:
        yield server
    finally:
        module.asyncore.close_all(map=map, ignore_all=True)


def _mock_connection():
    conn = mock.MagicMock()
    conn.send.side_effect = len
    conn.getpeername.return_value = ('192.0.2.1', 5000)
    return conn


def accept_patched(module):
    # A patched accept handing out a Mock connection is asked once per
    # handle_accept, as asyncore's handle_accept asks it.
    conn = _mock_connection()
    with listening(module) as server, \
            mock.patch('asyncore.dispatcher.accept',
                       return_value=(conn, ('192.0.2.1', 5000))) as accept:
        server.handle_accept()
        return {'accept': _calls(accept), 'channels': len(server._map) - 1,
                'conn': [n for n, _ in _method_calls(conn)]}


def handle_accept_patched(module):
    with listening(module) as server, \
            mock.patch('asyncore.dispatcher.handle_accept') as handle_accept:
        server.handle_accept()
        return _calls(handle_accept)


def server_readable_patched(module):
    with listening(module) as server, \
            mock.patch('asyncore.dispatcher.readable',
                       return_value=False) as readable:
        return {'result': server.readable(), 'calls': _calls(readable)}


def recording_subclass(module):
    # A subclass overriding push to record the replies.
    class Recording(module.SMTPChannel):
        def __init__(self, *args, **kwargs):
            self.replies = []
            super().__init__(*args, **kwargs)

        def push(self, msg):
            self.replies.append(msg)
            super().push(msg)

    with session(module, Recording) as s:
        s.send(b'EHLO client.example.org', MAIL, RCPT, b'DATA')
        s.peer.sendall(b'Subject: hi\r\n\r\nhello\r\n.\r\n')
        s.channel.handle_read()
        s.send(b'QUIT')
        return {'replies': s.channel.replies, 'client': s.received(),
                'messages': _calls(s.server.process_message)}


def recording_subclass_without_super(module):
    # An override that only records: nothing is sent.
    class Silent(module.SMTPChannel):
        def push(self, msg):
            self.__dict__.setdefault('replies', []).append(msg)

    with session(module, Silent) as s:
        s.send(HELO, b'NOOP')
        return {'replies': s.channel.replies, 'client': s.received()}


def initiate_send_patched(module):
    # Nothing is sent; the replies stay queued.
    with mock.patch('asynchat.async_chat.initiate_send') as initiate_send, \
            session(module) as s:
        s.send(HELO, b'NOOP')
        return {'calls': _calls(initiate_send),
                'queued': list(s.channel.producer_fifo),
                'client': s.received()}


def readable_patched(module):
    with session(module) as s, \
            mock.patch('asynchat.async_chat.readable',
                       return_value=False) as readable:
        result = s.channel.readable()
        return {'result': result, 'calls': _calls(readable)}


def handle_write_patched(module):
    with session(module) as s, \
            mock.patch('asynchat.async_chat.handle_write') as handle_write:
        s.channel.handle_write()
        return _calls(handle_write)


def handle_read_patched(module):
    with session(module) as s, \
            mock.patch('asynchat.async_chat.handle_read') as handle_read:
        s.send(HELO)
        return {'calls': _calls(handle_read),
                'client': s.received()}


def set_terminator_patched(module):
    # No terminator is ever set, so reading fails; the commands are fed
    # the way CPython's own tests feed them.
    with mock.patch('asynchat.async_chat.set_terminator') as set_terminator, \
            session(module) as s:
        s.peer.sendall(HELO + b'\r\n')
        try:
            s.channel.handle_read()
        except AttributeError as e:
            error = _error(e)
        for line in (HELO, MAIL, RCPT, b'DATA'):
            s.channel.collect_incoming_data(line)
            s.channel.found_terminator()
        return {'calls': _calls(set_terminator), 'read': error,
                'client': s.received()}


def recv_patched(module):
    # A patched recv is asked for asynchat's read size (here 65536; the
    # core reads commands 4 KiB at a time only from a real socket).
    with session(module) as s, \
            mock.patch('asyncore.dispatcher.recv',
                       return_value=HELO + b'\r\n') as recv:
        s.channel.handle_read()
        return {'recv': _calls(recv), 'client': s.received()}


def recv_overridden(module):
    class Sizes(module.SMTPChannel):
        def recv(self, buffer_size):
            self.__dict__.setdefault('sizes', []).append(buffer_size)
            return super().recv(buffer_size)

    with session(module, Sizes) as s:
        s.send(HELO, MAIL, RCPT, b'DATA')
        s.peer.sendall(b'x\r\n.\r\n')
        s.channel.handle_read()
        return {'sizes': s.channel.sizes, 'client': s.received()}


def mixin_after_the_channel(module):
    # An async_chat subclass *after* SMTPChannel in the bases sits between
    # it and asynchat in the MRO: the stdlib's channel, which did not
    # override these methods, let the mixin's run for each of them.
    class Tracing(module.asynchat.async_chat):
        pass

    for name in ('push', 'initiate_send', 'readable', 'handle_write',
                 'handle_read', 'set_terminator', 'send', 'recv'):
        def method(self, *args, _name=name):
            self.__dict__.setdefault('trace', []).append(
                (_name, _plain(args)))
            return getattr(super(Tracing, self), _name)(*args)
        setattr(Tracing, name, method)

    class Channel(module.SMTPChannel, Tracing):
        pass

    with session(module, Channel) as s:
        s.send(HELO, b'NOOP')
        s.channel.readable()
        s.channel.handle_write()
        return {'trace': s.channel.trace, 'client': s.received()}


def address_parser_patched(module):
    # The stdlib split every address with the email parser's functions,
    # bound in its own namespace: patches of those names see each one.
    with mock.patch.object(module, 'get_angle_addr',
                           wraps=module.get_angle_addr) as angle, \
            mock.patch.object(module, 'get_addr_spec',
                              wraps=module.get_addr_spec) as spec, \
            session(module) as s:
        s.send(b'EHLO c', MAIL, b'RCPT TO:b@example.org', b'VRFY c@example.org')
        return {'angle': _calls(angle), 'spec': _calls(spec),
                'client': s.received()}


def print_patched(module):
    # The debug prints went to Devnull in 3.11, through print().
    with mock.patch('builtins.print') as printed, session(module) as s:
        s.send(HELO, MAIL, RCPT)
        return [(tuple(c.args), type(c.kwargs.get('file')).__name__)
                for c in printed.call_args_list]


def _written(write):
    """What a patched write() was given: how many calls, and the text."""
    return {'writes': write.call_count,
            'text': ''.join(c.args[0] for c in write.call_args_list)}


def devnull_write_patched(module):
    with mock.patch.object(module.Devnull, 'write') as write, \
            session(module) as s:
        s.send(HELO, MAIL, RCPT)
        return _written(write)


def debugstream_write_patched(module):
    with mock.patch.object(module.DEBUGSTREAM, 'write') as write, \
            session(module) as s:
        s.send(HELO, b'NOOP')
        return _written(write)


def debugstream_replaced(module):
    with mock.patch.object(module, 'DEBUGSTREAM') as stream, \
            session(module) as s:
        s.send(HELO, b'NOOP')
        return _written(stream.write)


SCENARIOS = [
    push_patched_on_mock_sockets, push_patched_session,
    channel_on_mock_sockets, channel_on_mock_socket_that_sends,
    send_patched, send_patched_autospec, send_patched_default,
    socket_class_patched, accept_patched, handle_accept_patched,
    server_readable_patched,
    recording_subclass, recording_subclass_without_super,
    initiate_send_patched, readable_patched, handle_write_patched,
    handle_read_patched, set_terminator_patched,
    recv_patched, recv_overridden, mixin_after_the_channel,
    address_parser_patched,
    print_patched, devnull_write_patched, debugstream_write_patched,
    debugstream_replaced,
]

# Recorded from CPython 3.11.7's smtpd: ``python tests/test_patching.py``
# prints them (``... ours`` prints smtpd_compat's).
_HELO_NOOP_TRACE = "Peer: ''\nData: b'HELO client.example.org'\nData: b'NOOP'\n"
EXPECTED = {'push_patched_on_mock_sockets': {'push': [(('<channel>',
                                             b'220 test.invalid Python SMTP proxy version 0.3\r\n'),
                                            {}),
                                           (('<channel>', b'250 test.invalid\r\n'), {}),
                                           (('<channel>', b'250 OK\r\n'), {})],
                                  'recv': [((65536,), {}), ((65536,), {})],
                                  'socket': ['fileno', 'getpeername', 'recv', 'setblocking']},
 'push_patched_session': {'push': [(('<channel>',
                                     b'220 test.invalid Python SMTP proxy version 0.3\r\n'),
                                    {}),
                                   (('<channel>', b'250 test.invalid\r\n'), {}),
                                   (('<channel>', b'250 OK\r\n'), {}),
                                   (('<channel>', b'250 OK\r\n'), {}),
                                   (('<channel>', b'354 End data with <CR><LF>.<CR><LF>\r\n'), {})],
                          'client': b''},
 'channel_on_mock_sockets': "TypeError: '<' not supported between instances of 'Mock' and 'int'",
 'channel_on_mock_socket_that_sends': {'socket': [('setblocking', (False,)),
                                                  ('fileno', ()),
                                                  ('getpeername', ()),
                                                  ('getpeername', ()),
                                                  ('send',
                                                   (b'220 test.invalid Python SMTP proxy version 0'
                                                    b'.3\r\n',)),
                                                  ('recv', (65536,)),
                                                  ('send', (b'250 test.invalid\r\n',)),
                                                  ('recv', (65536,)),
                                                  ('send', (b'250 OK\r\n',)),
                                                  ('recv', (65536,)),
                                                  ('close', ())],
                                       'connected': False},
 'send_patched': {'send': [((b'220 test.invalid Python SMTP proxy version 0.3\r\n',), {}),
                           ((b'250 test.invalid\r\n',), {}),
                           ((b'250 OK\r\n',), {}),
                           ((b'250 OK\r\n',), {}),
                           ((b'250 OK\r\n',), {})],
                  'client': b'',
                  'queued': []},
 'send_patched_autospec': {'send': [(('<channel>',
                                      b'220 test.invalid Python SMTP proxy version 0.3\r\n'),
                                     {}),
                                    (('<channel>',
                                      b' test.invalid Python SMTP proxy version 0.3\r\n'),
                                     {})],
                           'queued': [b'st.invalid Python SMTP proxy version 0.3\r\n',
                                      b'250 OK\r\n']},
 'send_patched_default': {'error': "TypeError: '<' not supported between instances of 'MagicMock' "
                                   "and 'int'",
                          'send': [((b'220 test.invalid Python SMTP proxy version 0.3\r\n',), {})]},
 'socket_class_patched': {'class': [((socket.AF_INET, socket.SOCK_STREAM),
                                     {})],
                          'listener': [('setblocking', (False,)),
                                       ('fileno', ()),
                                       ('fileno().__hash__', ()),
                                       ('getsockopt', (1, 2)),
                                       ('setsockopt', (1, 2, '<mock>')),
                                       ('bind', (('127.0.0.1', 0),)),
                                       ('listen', (5,)),
                                       ('accept', ())],
                          'conn': [('__bool__', ()),
                                   ('setblocking', (False,)),
                                   ('fileno', ()),
                                   ('fileno().__hash__', ()),
                                   ('getpeername', ()),
                                   ('getpeername', ()),
                                   ('send',
                                    (b'220 test.invalid Python SMTP proxy version 0.3\r\n',))],
                          'channels': 1},
 'accept_patched': {'accept': [((), {})],
                    'channels': 1,
                    'conn': ['__bool__',
                             'setblocking',
                             'fileno',
                             'fileno().__hash__',
                             'getpeername',
                             'getpeername',
                             'send']},
 'handle_accept_patched': [((), {})],
 'server_readable_patched': {'result': False, 'calls': [((), {})]},
 'recording_subclass': {'replies': ['220 test.invalid Python SMTP proxy version 0.3',
                                    '250-test.invalid',
                                    '250-SIZE 33554432',
                                    '250-8BITMIME',
                                    '250 HELP',
                                    '250 OK',
                                    '250 OK',
                                    '354 End data with <CR><LF>.<CR><LF>',
                                    '250 OK',
                                    '221 Bye'],
                        'client': b'220 test.invalid Python SMTP proxy version 0.3\r\n250-test.inv'
                                  b'alid\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n250'
                                  b' OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 OK'
                                  b'\r\n221 Bye\r\n',
                        'messages': [(('',
                                       'a@example.org',
                                       ['b@example.org'],
                                       b'Subject: hi\n\nhello'),
                                      {'mail_options': [], 'rcpt_options': []})]},
 'recording_subclass_without_super': {'replies': ['220 test.invalid Python SMTP proxy version 0.3',
                                                  '250 test.invalid',
                                                  '250 OK'],
                                      'client': b''},
 'initiate_send_patched': {'calls': [((), {}), ((), {}), ((), {})],
                           'queued': [b'220 test.invalid Python SMTP proxy version 0.3\r\n',
                                      b'250 test.invalid\r\n',
                                      b'250 OK\r\n'],
                           'client': b''},
 'readable_patched': {'result': False, 'calls': [((), {})]},
 'handle_write_patched': [((), {})],
 'handle_read_patched': {'calls': [((), {})],
                         'client': b'220 test.invalid Python SMTP proxy version 0.3\r\n'},
 'set_terminator_patched': {'calls': [((b'\r\n',), {}), ((b'\r\n',), {}), ((b'\r\n.\r\n',), {})],
                            'read': "AttributeError: 'SMTPChannel' object has no attribute "
                                    "'terminator'",
                            'client': b'220 test.invalid Python SMTP proxy version 0.3\r\n250 test'
                                      b'.invalid\r\n250 OK\r\n250 OK\r\n354 End data with <CR><LF>'
                                      b'.<CR><LF>\r\n'},
 'recv_patched': {'recv': [((65536,), {})],
                  'client': b'220 test.invalid Python SMTP proxy version 0.3\r\n250 test.invalid'
                            b'\r\n'},
 'recv_overridden': {'sizes': [65536, 65536, 65536, 65536, 65536],
                     'client': b'220 test.invalid Python SMTP proxy version 0.3\r\n250 test.invalid'
                               b'\r\n250 OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n2'
                               b'50 OK\r\n'},
 'mixin_after_the_channel': {'trace': [('set_terminator', (b'\r\n',)),
                                       ('initiate_send', ()),
                                       ('send',
                                        (b'220 test.invalid Python SMTP proxy version 0.3\r\n',)),
                                       ('handle_read', ()),
                                       ('recv', (65536,)),
                                       ('set_terminator', (b'\r\n',)),
                                       ('initiate_send', ()),
                                       ('send', (b'250 test.invalid\r\n',)),
                                       ('handle_read', ()),
                                       ('recv', (65536,)),
                                       ('initiate_send', ()),
                                       ('send', (b'250 OK\r\n',)),
                                       ('readable', ()),
                                       ('handle_write', ()),
                                       ('initiate_send', ())],
                             'client': b'220 test.invalid Python SMTP proxy version 0.3\r\n250 test'
                                       b'.invalid\r\n250 OK\r\n'},
 'address_parser_patched': {'angle': [(('<a@example.org>',), {})],
                            'spec': [(('b@example.org',), {}), (('c@example.org',), {})],
                            'client': b'220 test.invalid Python SMTP proxy version 0.3\r\n250-test'
                                      b'.invalid\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r'
                                      b'\n250 OK\r\n250 OK\r\n252 Cannot VRFY user, but will acce'
                                      b'pt message and attempt delivery\r\n'},
 'print_patched': [(('Peer:', "''"), 'Devnull'),
                   (('Data:', "b'HELO client.example.org'"), 'Devnull'),
                   (('Data:', "b'MAIL FROM:<a@example.org>'"), 'Devnull'),
                   (('===> MAIL', 'FROM:<a@example.org>'), 'Devnull'),
                   (('sender:', 'a@example.org'), 'Devnull'),
                   (('Data:', "b'RCPT TO:<b@example.org>'"), 'Devnull'),
                   (('===> RCPT', 'TO:<b@example.org>'), 'Devnull'),
                   (('recips:', ['b@example.org']), 'Devnull')],
 'devnull_write_patched': {'writes': 32,
                           'text': "Peer: ''\n"
                                   "Data: b'HELO client.example.org'\n"
                                   "Data: b'MAIL FROM:<a@example.org>'\n"
                                   "===> MAIL FROM:<a@example.org>\n"
                                   "sender: a@example.org\n"
                                   "Data: b'RCPT TO:<b@example.org>'\n"
                                   "===> RCPT TO:<b@example.org>\n"
                                   "recips: ['b@example.org']\n"},
 'debugstream_write_patched': {'writes': 12, 'text': _HELO_NOOP_TRACE},
 'debugstream_replaced': {'writes': 12, 'text': _HELO_NOOP_TRACE}}


@pytest.mark.parametrize('which', ['ours', 'stdlib'])
@pytest.mark.parametrize('scenario', SCENARIOS, ids=lambda f: f.__name__)
def test_observed_as_on_311(scenario, which):
    module = _module(which)
    assert scenario(module) == EXPECTED[scenario.__name__]


# -- nothing patched: the fast paths are taken ------------------------------
#
# Seen with a profiler (sys.setprofile), which patches nothing: which Python
# functions ran, and which builtins were called.

@contextlib.contextmanager
def _profiled():
    """Record the code objects of the Python functions called (with their
    arguments) and the builtins called, in this thread."""
    seen = {'code': [], 'builtin': []}

    def profile(frame, event, arg):
        if event == 'call':
            seen['code'].append((frame.f_code, dict(frame.f_locals)))
        elif event == 'c_call':
            seen['builtin'].append(arg)

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def _ran(seen, function):
    return [args for code, args in seen['code'] if code is function.__code__]


def test_fast_paths_taken_when_nothing_is_patched():
    chat = smtpd_compat.asynchat.async_chat
    dispatcher = smtpd_compat.asyncore.dispatcher
    with session(smtpd_compat) as s:
        assert s.received() == GREETING
        with _profiled() as seen:
            s.send(b'EHLO client', MAIL, b'RCPT TO:b@example.org')
        assert s.received().endswith(b'250 OK\r\n250 OK\r\n')
    # Each reply was queued and sent without asynchat's push and general
    # send loop, and without asyncore's send and recv around the socket's.
    for skipped in (chat.push, chat.initiate_send, chat.handle_read,
                    dispatcher.send, dispatcher.recv):
        assert _ran(seen, skipped) == [], skipped
    # Plain addresses are split without the email parser, and no debug
    # line was formatted for Devnull.
    assert _ran(seen, smtpd_compat.get_angle_addr) == []
    assert _ran(seen, smtpd_compat.get_addr_spec) == []
    assert print not in seen['builtin']


def test_commands_are_read_in_small_pieces_from_a_real_socket():
    # 10 KB of pipelined NOOPs: one read takes 4 KiB of them (the rest
    # waits for the next turn of the loop); from a recv that is not the
    # socket's own, asynchat's 64 KiB.
    noops = b'NOOP\r\n' * 2000

    def answered(s):
        # Replies sent, and those still queued (the socket pair's buffer
        # fills up).
        data = s.received() + b''.join(s.channel.producer_fifo)
        assert set(data.split(b'\r\n')) == {b'250 OK', b''}
        return data.count(b'\r\n')

    with session(smtpd_compat) as s:
        s.received()
        s.peer.sendall(noops)
        s.channel.handle_read()
        assert answered(s) == 4096 // 6
    with session(smtpd_compat) as s:
        s.received()
        s.peer.sendall(noops)
        with mock.patch('asyncore.dispatcher.recv',
                        side_effect=lambda size: s.ours.recv(size)):
            s.channel.handle_read()
        assert answered(s) == 2000


def test_listener_takes_the_system_backlog_and_bursts():
    dispatcher = smtpd_compat.asyncore.dispatcher
    map = {}
    with _profiled() as seen:
        server = smtpd_compat.SMTPServer(('127.0.0.1', 0), None, map=map)
    clients = []
    try:
        assert [a['num'] for a in _ran(seen, dispatcher.listen)] == \
            [socket.SOMAXCONN]
        clients = [socket.create_connection(server.socket.getsockname())
                   for _ in range(3)]
        # connect() returned: the kernel has queued all three, and one
        # wake-up accepts them all.
        server.handle_accept()
        assert len(map) == 4
    finally:
        for client in clients:
            client.close()
        smtpd_compat.asyncore.close_all(map=map)


def test_devnull_notices_being_patched():
    assert not smtpd_compat._debugging()
    with mock.patch.object(smtpd_compat.DEBUGSTREAM, 'write'):
        assert smtpd_compat._debugging()
    smtpd_compat._devnull_watched = False
    with mock.patch.object(smtpd_compat.Devnull, 'flush'):
        assert smtpd_compat._debugging()
    smtpd_compat._devnull_watched = False
    with mock.patch('builtins.print'):
        assert smtpd_compat._debugging()
    assert not smtpd_compat._debugging()


def _record(which='stdlib'):
    """Print EXPECTED as observed on the stdlib (run with Python 3.11)."""
    import pprint
    module = _module(which)
    with mock.patch('socket.getfqdn', return_value=FQDN):
        found = {}
        for scenario in SCENARIOS:
            smtpd_compat._devnull_watched = False
            found[scenario.__name__] = scenario(module)
    pprint.pprint(found, width=100, sort_dicts=False)


if __name__ == '__main__':
    _record(*sys.argv[1:])

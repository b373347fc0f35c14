"""Every capability setting goes through one rule (smtpd_compat.compose.setting):
the keyword when given, else the user's class attribute of that name, else
the capability's default.

The keywords are found, not listed: every server mixin of every capability
module and its ``__init__``'s keyword-only parameters (inspect.signature).
For each, a server gets a non-default value once as the keyword and once as
a class attribute, and a third gets neither: the first two must end up with
the same setting, the third with another.  A new keyword is covered the day
it is written; one whose value this file cannot build fails until VALUES
(by type) or BY_KEYWORD learns how.

The issue's own example runs over real sockets: a submission server whose
class says ``require_starttls = True`` and ``auth_required = True`` refuses
MAIL with 530 before STARTTLS and before AUTH.
"""
import base64
import collections.abc
import importlib
import inspect
import os
import re
import socket
import ssl
import sys
import typing
from pathlib import Path

import pytest

import smtpd_compat
from smtpd_compat.auth import AuthServerMixin, AuthThrottle
from smtpd_compat.compose import CapabilityServerMixin, Unset
from smtpd_compat.tls import TLSServerMixin
from smtpd_compat.web import Inbox

from conftest import RecordingServer, recv_reply

# Capability modules whose server mixins are checked.
MODULES = ('tls', 'auth', 'proxy_protocol', 'limits', 'extensions', 'lmtp',
           'delivery', 'relay', 'threads', 'logging_', 'workers', 'web')


def _server_mixins():
    found = []
    for name in MODULES:
        module = importlib.import_module('smtpd_compat.' + name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, CapabilityServerMixin)
                    and value.__module__ == module.__name__
                    and '__init__' in vars(value)):
                found.append(value)
    return sorted(set(found), key=lambda c: (c.__module__, c.__name__))


def _keywords(cls):
    """The keyword-only parameters of ``cls.__init__``, their annotations
    evaluated (modules with ``from __future__ import annotations`` keep
    them as text)."""
    init = vars(cls)['__init__']
    namespace = vars(sys.modules[cls.__module__])
    found = []
    for param in inspect.signature(init).parameters.values():
        if param.kind is param.KEYWORD_ONLY:
            annotation = param.annotation
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, dict(namespace))
                except TypeError:
                    # (os.PathLike[str] on 3.8: BY_KEYWORD builds those.)
                    annotation = None
            found.append(param.replace(annotation=annotation))
    return found


def authenticate(mechanism, login, password, channel):
    return password == 'pw'


def other_authenticator(mechanism, login, password, channel):
    return False


# How to build a server with each mixin: (bases after it, keywords it needs
# besides the one under test, as a function of the test's fixtures).
def _tls(ctx, tmp_path):
    return {'tls_context': ctx.server_context}


SETUPS = {
    'TLSServerMixin': ((RecordingServer,), _tls),
    'AuthServerMixin': ((TLSServerMixin, RecordingServer),
                        lambda ctx, tmp: dict(_tls(ctx, tmp), authenticator=authenticate)),
    'MaildirServer': ((), lambda ctx, tmp: {'maildir': str(tmp / 'base-maildir')}),
    'MboxServer': ((), lambda ctx, tmp: {'mbox': str(tmp / 'base-mbox')}),
    'RelayServer': ((), lambda ctx, tmp: {}),
    # (A free port: the default, 8025, would collide between workers.)
    'WebInboxServerMixin': ((RecordingServer,), lambda ctx, tmp: {'web': '127.0.0.1:0'}),
}

# Keywords that only mean something beside another one, or replace one.
COMPANIONS = {
    'tls_keyfile': lambda ctx, tmp: {'tls_context': None, 'tls_certfile': _cert_only(ctx, tmp)},
    'tls_certfile': lambda ctx, tmp: {'tls_context': None},
    'unix_socket_mode': lambda ctx, tmp: {'unix_socket': str(tmp / 'mode.sock')},
}

# Where a keyword's value ends up, when not under its own name.
ATTRIBUTE = {'process_message_threads': 'offload_threads', 'web': 'web_address'}
# The class attribute a keyword reads, when not its own name.
CLASS_ATTRIBUTE = {'web': 'web_address'}


def _cert_only(ctx, tmp):
    """The test certificate without its key, and the key alone, as files."""
    blocks = re.findall(r'-----BEGIN [^-]+-----.*?-----END [^-]+-----\n',
                        Path(ctx.cert_file).read_text(), re.S)
    (tmp / 'key.pem').write_text(''.join(b for b in blocks if 'PRIVATE KEY' in b))
    (tmp / 'cert.pem').write_text(''.join(b for b in blocks if 'PRIVATE KEY' not in b))
    return str(tmp / 'cert.pem')


# A non-default value, by keyword where the type says too little (a str is a
# path of one kind or another, a sequence of names names something)...
BY_KEYWORD = {
    'maildir': lambda base, ctx, tmp: str(tmp / 'Maildir'),
    'mbox': lambda base, ctx, tmp: str(tmp / 'mbox'),
    'unix_socket': lambda base, ctx, tmp: str(tmp / 'lmtp.sock'),
    'unix_socket_mode': lambda base, ctx, tmp: 0o600,
    'tls_certfile': lambda base, ctx, tmp: ctx.cert_file,
    'tls_keyfile': lambda base, ctx, tmp: str(tmp / 'key.pem'),
    'auth_mechanisms': lambda base, ctx, tmp: ('LOGIN',),
    'proxy_trusted': lambda base, ctx, tmp: '10.0.0.0/8',
    'esmtp_extensions': lambda base, ctx, tmp: ('DSN',),
    'web_relay': lambda base, ctx, tmp: '127.0.0.1:2525',
    'web_relay_allowed': lambda base, ctx, tmp: '@example[.]org$',
    'web_db': lambda base, ctx, tmp: str(tmp / 'inbox.db'),
    'web_allowed_hosts': lambda base, ctx, tmp: 'mail.example',
}


def _new_context(base, ctx, tmp):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ctx.cert_file)
    return context


def _new_inbox(base, ctx, tmp):
    # Not empty: inboxes compare by their messages, and the server's own
    # (the default) starts empty.  No ingest thread to outlive the test.
    inbox = Inbox(ingest=False)
    inbox.add(b'Subject: settings\n\nx\n', 'a@example.org', ['b@example.org'])
    return inbox


# ... else by type: the first member of the keyword's annotation (besides
# Unset and None) found here.
VALUES = [
    (bool, lambda base, ctx, tmp: not base),
    (int, lambda base, ctx, tmp: (base or 0) + 3),
    (float, lambda base, ctx, tmp: (base or 0) + 7.5),
    (ssl.SSLContext, _new_context),
    (AuthThrottle, lambda base, ctx, tmp: AuthThrottle(max_failures=2)),
    (Inbox, _new_inbox),
    # An address, (host, port): another free port's spelling than the
    # setup's '127.0.0.1:0'.
    (tuple, lambda base, ctx, tmp: ('127.0.0.1', 0)),
    (collections.abc.Callable, lambda base, ctx, tmp: other_authenticator),
]


def _members(annotation):
    args = getattr(annotation, '__args__', None)
    members = args if typing.get_origin(annotation) is typing.Union else (annotation,)
    return [m for m in members if m not in (Unset, type(None))]


def _value_for(param, base, ctx, tmp):
    if param.name in BY_KEYWORD:
        return BY_KEYWORD[param.name](base, ctx, tmp)
    for member in _members(param.annotation):
        origin = typing.get_origin(member) or member
        for kind, build in VALUES:
            if origin is kind or (isinstance(origin, type) and isinstance(kind, type)
                                  and issubclass(origin, kind)
                                  and not (kind is int and origin is bool)):
                return build(base, ctx, tmp)
    pytest.fail('no way to build a non-default value for the keyword %s '
                '(%r): add one to BY_KEYWORD or VALUES in %s'
                % (param.name, param.annotation, __file__))


CASES = [(cls, param.name) for cls in _server_mixins() for param in _keywords(cls)]


def test_the_mixins_and_keywords_are_found():
    names = {(cls.__name__, keyword) for cls, keyword in CASES}
    for expected in [('TLSServerMixin', 'require_starttls'),
                     ('AuthServerMixin', 'auth_required'),
                     ('LimitsServerMixin', 'idle_timeout'),
                     ('ProxyProtocolServerMixin', 'proxy_trusted'),
                     ('ExtensionsMixin', 'esmtp_extensions'),
                     ('LMTPServer', 'unix_socket'), ('MaildirServer', 'maildir'),
                     ('MboxServer', 'dotlock'), ('RelayServer', 'relay_timeout'),
                     ('ThreadedServerMixin', 'process_message_threads'),
                     ('WebInboxServerMixin', 'web'), ('WebInboxServerMixin', 'inbox'),
                     ('WebInboxServerMixin', 'web_db')]:
        assert expected in names
    assert len(CASES) >= 30


@pytest.mark.parametrize('cls, keyword', CASES,
                         ids=['%s.%s' % (c.__name__, k) for c, k in CASES])
def test_every_keyword_honours_a_class_attribute(cls, keyword, tls_certs, tmp_path):
    param = next(p for p in _keywords(cls) if p.name == keyword)
    bases, setup = SETUPS.get(cls.__name__, ((RecordingServer,), lambda c, t: {}))
    if issubclass(cls, smtpd_compat.SMTPServer):
        bases = ()
    kwargs = setup(tls_certs, tmp_path)
    # (Only beside the value under test: the default needs the setup.)
    companions = COMPANIONS.get(keyword, lambda c, t: {})(tls_certs, tmp_path)
    remote = ('127.0.0.1', 9)
    attribute = ATTRIBUTE.get(keyword, keyword)
    class_attribute = CLASS_ATTRIBUTE.get(keyword, keyword)
    made = []

    def build(namespace, **extra):
        server_class = type(cls.__name__ + 'Test', (cls,) + bases, namespace)
        given = dict(kwargs, **extra)
        if namespace or extra:
            given.update(companions)
        if class_attribute in namespace:
            # The class attribute under test, not a keyword from the setup.
            given.pop(keyword, None)
        server = server_class(('127.0.0.1', 0), remote, map={}, **given)
        made.append(server)
        return getattr(server, attribute)

    try:
        default = build({})
        value = _value_for(param, default, tls_certs, tmp_path)
        by_keyword = build({}, **{keyword: value})
        by_attribute = build({class_attribute: value})
    finally:
        for server in made:
            server.close()
    assert by_keyword != default, 'the value built for %s is its default' % keyword
    assert by_attribute == by_keyword


def test_a_keyword_wins_over_the_class_attribute(tls_certs):
    class Strict(TLSServerMixin, RecordingServer):
        require_starttls = True
    server = Strict(('127.0.0.1', 0), None, map={},
                    tls_context=tls_certs.server_context, require_starttls=False)
    server.close()
    assert server.require_starttls is False


def test_a_required_keyword_may_come_from_the_class(tmp_path):
    from smtpd_compat.delivery import MaildirServer

    class Mine(MaildirServer):
        maildir = str(tmp_path / 'Maildir')
    server = Mine(('127.0.0.1', 0), None, map={})
    server.close()
    assert server.maildir == str(tmp_path / 'Maildir')
    with pytest.raises(TypeError, match=r'MaildirServer needs maildir='):
        MaildirServer(('127.0.0.1', 0), None, map={})


# -- the example, over real sockets ------------------------------------

class Submission(TLSServerMixin, AuthServerMixin, RecordingServer):
    require_starttls = True
    auth_required = True


def _command(sock, line):
    sock.sendall(line + b'\r\n')
    return recv_reply(sock)


def test_submission_class_attributes_refuse_mail_before_starttls_and_auth(
        live_server, tls_certs):
    runner = live_server(Submission, tls_context=tls_certs.server_context,
                         authenticator=authenticate)
    sock = socket.create_connection(runner.address, timeout=10)
    try:
        assert recv_reply(sock).startswith(b'220 ')
        assert _command(sock, b'EHLO client').startswith(b'250')
        reply = _command(sock, b'MAIL FROM:<a@example.com>')
        assert reply.startswith(b'530 5.7.0 Must issue a STARTTLS command first')
        assert _command(sock, b'STARTTLS').startswith(b'220 ')
        sock = tls_certs.client_context.wrap_socket(sock, server_hostname='127.0.0.1')
        assert _command(sock, b'EHLO client').startswith(b'250')
        reply = _command(sock, b'MAIL FROM:<a@example.com>')
        assert reply.startswith(b'530 5.7.0 Authentication required')
        token = base64.b64encode(b'\0user\0pw')
        assert _command(sock, b'AUTH PLAIN ' + token).startswith(b'235 ')
        assert _command(sock, b'MAIL FROM:<a@example.com>').startswith(b'250 ')
    finally:
        sock.close()


def test_without_the_class_attributes_mail_is_accepted_in_plaintext(
        live_server, tls_certs):
    # The control: the refusals above come from the class attributes.
    class Open(TLSServerMixin, AuthServerMixin, RecordingServer):
        pass
    runner = live_server(Open, tls_context=tls_certs.server_context,
                         authenticator=authenticate)
    sock = socket.create_connection(runner.address, timeout=10)
    try:
        assert recv_reply(sock).startswith(b'220 ')
        assert _command(sock, b'EHLO client').startswith(b'250')
        assert _command(sock, b'MAIL FROM:<a@example.com>').startswith(b'250 ')
    finally:
        sock.close()

"""The options ``python -m smtpd_compat`` adds for the capabilities, and
what each does to the server it builds; the rule of production mode.

This is the command line's part of every capability, kept with the command
line (:mod:`smtpd_compat.__main__`) rather than in the capability modules,
which never import anything above them.  :data:`GROUPS` lists, in the order
they are applied, one :class:`Group` per capability module: the heading of
its options in the help text, the options (getopt long names: ``'tls-cert='``
takes a value, ``'smtps'`` does not; the value's placeholder; one line of
help), and ``configure(cli)``, which reads ``cli.given`` and changes
``cli.mixins``, ``cli.server_kwargs`` or ``cli.serve``, and calls
``cli.error(msg)`` for a bad combination.

Production mode: without any of its options the command line runs the
stdlib's server exactly as ``python -m smtpd`` did.  In production mode the
groups add every timeout and limit with its default
(:mod:`smtpd_compat.limits`), the session log at INFO, and graceful
shutdown (:mod:`smtpd_compat.shutdown`).  It is on when ``--production``
is given, or an option that configures something that only exists in
production mode -- a limit or timeout, the listen backlog, the shutdown
grace period, worker processes.  Options that switch on a capability of
their own (TLS, AUTH, the PROXY protocol, delivery, relay, LMTP, ESMTP
extensions) do not, and neither does ``--log-level``, which only
configures logging.
"""
import importlib.util
import logging
import os
import sys
from typing import (Any, Callable, Container, Dict, List, NamedTuple, NoReturn,
                    Optional, Protocol, Tuple, cast)

import smtpd_compat as _smtpd
from smtpd_compat import loop as _loop
from smtpd_compat._version import VERSION
from smtpd_compat.delivery import MaildirServer, MboxServer, _StoringServer
from smtpd_compat.extensions import EXTENSIONS, ExtensionsMixin
from smtpd_compat.limits import (
    PRODUCTION_DEFAULTS, LimitsServerMixin, _check_limit)
from smtpd_compat.lmtp import LMTPServer
from smtpd_compat.logfmt import stream_handler
from smtpd_compat.logging_ import SessionLogServerMixin
from smtpd_compat.proxy_protocol import ProxyProtocolServerMixin, parse_networks
from smtpd_compat.shutdown import DEFAULT_GRACE_PERIOD, serve_gracefully
from smtpd_compat.threads import PoolServerMixin, ThreadedServerMixin
from smtpd_compat.workers import run_workers

__all__ = ['GROUPS', 'Group', 'PRODUCTION_OPTIONS', 'RULE',
           'hardening_requested']

_Options = Tuple[Tuple[str, str, str], ...]


class Serve(Protocol):
    """``cli.serve``: runs the built server until shutdown.  (A protocol
    rather than a Callable attribute: older mypy binds a Callable declared
    in a protocol's body like a method.)"""

    def __call__(self, cli: Any, server: _smtpd.SMTPServer) -> object: ...


class CommandLine(Protocol):
    """What a group's ``configure`` uses of :class:`smtpd_compat.__main__.CLI`."""

    given: Dict[str, str]
    server_class: Any
    mixins: List[type]
    server_kwargs: Dict[str, Any]
    serve: Serve

    def error(self, msg: str) -> NoReturn: ...

    def require_class(self, base: type, option: str) -> None: ...

    def stop_requested(self) -> bool: ...


class Group(NamedTuple):
    """The options of one capability module."""

    #: The capability module (``smtpd_compat.<module>``); ``-c`` looks a
    #: bare class name up in it too.
    module: str
    #: The heading of the options in the help text.
    title: str
    options: _Options
    #: Adjusts the command line after parsing (None: nothing to do).
    configure: Optional[Callable[[CommandLine], None]]


# -- production mode ----------------------------------------------------------

#: The long options (without dashes) that switch production mode on.
PRODUCTION_OPTIONS = frozenset({
    'production',
    # smtpd_compat.limits
    'idle-timeout', 'data-timeout', 'min-data-rate', 'max-connections',
    'max-connections-per-ip', 'max-recipients', 'max-errors',
    'max-line-length', 'max-junk-commands', 'max-message-memory', 'backlog',
    # smtpd_compat.shutdown
    'grace-period',
    # smtpd_compat.workers
    'workers',
})

#: The rule as the help text and docs/cli.rst state it.
RULE = ('Production mode (every limit and timeout with its default, the '
        'session log at INFO, graceful shutdown) is on with --production or '
        'any option that configures it: a limit or timeout, --backlog, '
        '--grace-period, --workers.  Other options (TLS, AUTH, PROXY '
        'protocol, delivery, relay, LMTP, --esmtp, --log-level) do not '
        'switch it on.')


def hardening_requested(given: Container[str]) -> bool:
    """True when the command line's capability options (``cli.given``: long
    names without dashes) switch production mode on (see ``RULE``)."""
    return any(option in given for option in PRODUCTION_OPTIONS)


# -- limits and the session log -------------------------------------------------

def _size(text: str) -> int:
    # "268435456", "256M", "1g": bytes.
    text = text.strip()
    scale = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}.get(text[-1:].upper())
    if scale is not None:
        return int(text[:-1]) * scale
    return int(text)


_CLI_LIMITS: Tuple[Tuple[str, str, Callable[[str], float], str], ...] = (
    ('idle-timeout', 'idle_timeout', float,
     'Seconds to wait for a command before "421 4.4.2" (default 300).'),
    ('data-timeout', 'data_timeout', float,
     'Seconds DATA may stall before "421 4.4.2" (default 300).'),
    ('min-data-rate', 'min_data_rate', float,
     'Bytes/s of DATA that keep the DATA deadline from coming closer '
     '(default 500; 0 = any progress resets it).'),
    ('max-connections', 'max_connections', int,
     'Concurrent connections before "421 4.7.0" (default 1000).'),
    ('max-connections-per-ip', 'max_connections_per_ip', int,
     'Concurrent connections per client address (default 50).'),
    ('max-recipients', 'max_recipients', int,
     'Recipients per message before "452 4.5.3" (default 1000).'),
    ('max-errors', 'max_errors', int,
     'Error replies before "421" and close (default 20).'),
    ('max-line-length', 'max_line_length', int,
     'Longest command line in bytes (default 512).'),
    ('max-junk-commands', 'max_junk_commands', int,
     'NOOP/RSET/VRFY/EXPN/HELP/ETRN commands without a delivered message '
     'before "421 4.7.0" and close (default 100).'),
    ('max-message-memory', 'max_message_memory', _size,
     'Bytes of message content the whole process holds at once (DATA/BDAT '
     'buffers, messages in worker threads; K, M, G suffixes) before DATA '
     'gets "452 4.3.1" (default 128M; peak memory is about twice it).'),
)


LIMITS_OPTIONS: _Options = (
    ('production', '',
     'Production mode: every timeout and limit below with its default, the '
     'session log and graceful shutdown (also implied by any option below '
     'but --log-level); the message size limit becomes 10240000 bytes '
     'unless -s gives another (-s 0: none).'),
) + tuple((flag + '=', 'N', text) for flag, _, _, text in _CLI_LIMITS) + (
    ('backlog=', 'N', 'Listen backlog (default: the system maximum).'),
    ('log-level=', 'LEVEL',
     'Log to stderr at this level (INFO shows one line per connection and '
     'message; default INFO in production mode).  Does not switch on '
     'production mode.'),
)

# Descriptors kept free for everything that is not a client connection
# (listening sockets, log files, deliveries, an upstream connection) when
# the command line fits max_connections to the descriptor limit.
_FD_RESERVE = 64

# The limits' logger: the line about fitting max_connections is theirs.
_limits_log = logging.getLogger('smtpd_compat.limits')


def configure_limits(cli: CommandLine) -> None:
    """Add the limits and the session log in production mode (see
    :data:`RULE`), only the session log with --log-level alone; without
    either, the stdlib's behaviour is kept exactly."""
    given = cli.given
    if not hardening_requested(given):
        if 'log-level' in given:
            _configure_logging(cli, given['log-level'])
        return
    kwargs: Dict[str, Optional[float]] = {}
    for flag, keyword, kind, _ in _CLI_LIMITS:
        if flag in given:
            text = given[flag]
            value: Optional[float]
            try:
                value = kind(text)
            except ValueError:
                cli.error('Invalid --%s: %s' % (flag, text))
            if value <= 0:
                # 0 switches a limit off (min-data-rate: "no rate").
                value = None
            kwargs[keyword] = value
    try:
        for keyword, value in kwargs.items():
            _check_limit(keyword, value)
    except (TypeError, ValueError) as e:
        cli.error(str(e))
    if 'backlog' in given:
        try:
            cli.server_kwargs['backlog'] = int(given['backlog'])
        except ValueError:
            cli.error('Invalid --backlog: %s' % given['backlog'])
    cli.server_kwargs.update(kwargs)
    _configure_logging(cli, given.get('log-level') or 'INFO')
    cli.mixins.append(LimitsServerMixin)
    # Thousands of connections need more descriptors than the usual soft
    # limit of 1024.
    soft = _loop.raise_fd_limit()
    _fit_connections_to_descriptors(cli.server_kwargs, soft)


def _configure_logging(cli: CommandLine, level: str) -> None:
    """The session log, and the package's log lines on stderr at ``level``."""
    cli.mixins.append(SessionLogServerMixin)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        cli.error('Invalid --log-level: %s' % level)
    # The package's logger: every module logs below it (smtpd_compat.*).
    root = logging.getLogger('smtpd_compat')
    if not root.handlers:
        root.addHandler(stream_handler())
    root.setLevel(numeric)


def _fit_connections_to_descriptors(kwargs: Dict[str, Any],
                                    soft: Optional[int]) -> None:
    """Lower max_connections (in ``kwargs``, else the default) so that
    the connections and a reserve fit in ``soft`` descriptors: a server
    that runs out of them refuses with 421 instead of failing accept()."""
    if soft is None or soft < 0:
        return
    wanted = kwargs.get('max_connections',
                        PRODUCTION_DEFAULTS['max_connections'])
    room = max(1, soft - min(_FD_RESERVE, soft // 4))
    if wanted is None or wanted > room:
        _limits_log.warning('max_connections lowered from %s to %d: the '
                            'descriptor limit is %d', wanted, room, soft)
        kwargs['max_connections'] = room


# -- PROXY protocol -------------------------------------------------------------

PROXY_OPTIONS: _Options = (
    ('proxy-protocol', '',
     'Expect a PROXY protocol (v1 or v2) header on every connection, as sent '
     'by HAProxy\'s send-proxy / send-proxy-v2; X-Peer shows the original '
     'client.'),
    ('proxy-trusted=', 'CIDR[,CIDR...]',
     'Balancers allowed to send the PROXY header; connections from anywhere '
     'else are closed (default 127.0.0.0/8,::1/128).'),
)


def configure_proxy_protocol(cli: CommandLine) -> None:
    """Add the PROXY mixin when --proxy-protocol is given."""
    given = cli.given
    if 'proxy-protocol' not in given:
        if 'proxy-trusted' in given:
            cli.error('--proxy-trusted needs --proxy-protocol')
        return
    if 'proxy-trusted' in given:
        try:
            trusted = parse_networks(given['proxy-trusted'])
        except ValueError as e:
            cli.error('Invalid --proxy-trusted: %s' % e)
        cli.server_kwargs['proxy_trusted'] = trusted
    cli.mixins.append(ProxyProtocolServerMixin)


# -- graceful shutdown and workers ----------------------------------------------

SHUTDOWN_OPTIONS: _Options = (
    ('grace-period=', 'SECONDS',
     'On SIGTERM/SIGINT stop accepting, let messages in DATA finish for up '
     'to this long, then 421 the rest and exit 0 (default 30 in '
     'production mode).'),
)


def configure_shutdown(cli: CommandLine) -> None:
    """Serve with graceful shutdown when a production option is given."""
    if not hardening_requested(cli.given):
        return
    grace = DEFAULT_GRACE_PERIOD
    if 'grace-period' in cli.given:
        text = cli.given['grace-period']
        try:
            grace = float(text)
        except ValueError:
            cli.error('Invalid --grace-period: %s' % text)
        if not grace >= 0:
            cli.error('Invalid --grace-period: %s' % text)

    def serve(cli: CommandLine, server: _smtpd.SMTPServer) -> None:
        serve_gracefully(server._map, grace, requested=cli.stop_requested)

    cli.serve = serve


WORKERS_OPTIONS: _Options = (
    ('workers=', 'N',
     'Run N worker processes sharing the listening socket; a dead worker '
     'is restarted; SIGTERM stops them all gracefully.'),
)


def configure_workers(cli: CommandLine) -> None:
    """Fork workers around the (graceful) serve of the other groups."""
    if 'workers' not in cli.given:
        return
    text = cli.given['workers']
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        cli.error('Invalid --workers: %s' % text)
    if not hasattr(os, 'fork'):
        cli.error('--workers needs os.fork(), which this platform lacks')
    inner = cli.serve

    def serve(cli: CommandLine, server: _smtpd.SMTPServer) -> None:
        run_workers(count, lambda: inner(cli, server), server=server,
                    requested=cli.stop_requested)

    cli.serve = serve


# -- TLS and AUTH ---------------------------------------------------------------

TLS_OPTIONS: _Options = (
    ('tls-cert=', 'FILE',
     'PEM certificate chain (may also hold the key); enables STARTTLS.'),
    ('tls-key=', 'FILE', 'PEM private key for --tls-cert.'),
    ('smtps', '',
     'Implicit TLS (RFC 8314, port 465) instead of STARTTLS; needs --tls-cert.'),
    ('require-starttls', '',
     'Refuse MAIL/RCPT/DATA/AUTH with 530 until the client has used STARTTLS.'),
    ('tls-handshake-timeout=', 'SECONDS',
     'Close connections that have not finished the TLS handshake in time.'),
)


def configure_tls(cli: CommandLine) -> None:
    """Add TLSServerMixin when --tls-cert is given; check the combination."""
    given = cli.given
    if 'tls-cert' not in given:
        for option in ('tls-key', 'smtps', 'require-starttls',
                       'tls-handshake-timeout'):
            if option in given:
                cli.error('--%s needs --tls-cert' % option)
        return
    if 'smtps' in given and 'require-starttls' in given:
        cli.error('--require-starttls has no meaning with --smtps')
    timeout: Optional[float] = None
    if 'tls-handshake-timeout' in given:
        try:
            timeout = float(given['tls-handshake-timeout'])
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            cli.error('Invalid --tls-handshake-timeout: %s'
                      % given['tls-handshake-timeout'])
    from smtpd_compat.tls import TLSServerMixin, server_context
    certfile, keyfile = given['tls-cert'], given.get('tls-key') or None
    try:
        # Loaded here too so that a bad file is a usage error, not a
        # traceback from the constructor.
        server_context(certfile, keyfile)
    except OSError as e:    # ssl.SSLError is one
        cli.error('--tls-cert/--tls-key: %s' % (e.strerror or e))
    cli.mixins.append(TLSServerMixin)
    cli.server_kwargs.update(
        tls_certfile=certfile, tls_keyfile=keyfile,
        implicit_tls='smtps' in given,
        require_starttls='require-starttls' in given,
        tls_handshake_timeout=timeout)


AUTH_OPTIONS: _Options = (
    ('auth-file=', 'FILE',
     'Offer AUTH PLAIN/LOGIN, checking "login:hash" lines from FILE '
     '(make them with: python -m smtpd_compat.auth hash LOGIN).'),
    ('auth-required', '', 'Refuse MAIL with 530 until the client has authenticated.'),
    ('auth-allow-plaintext', '',
     'Offer AUTH without TLS too (only on a trusted network).'),
)


def configure_auth(cli: CommandLine) -> None:
    """Add AuthServerMixin when --auth-file is given; check the combination."""
    given = cli.given
    if 'auth-file' not in given:
        for option in ('auth-required', 'auth-allow-plaintext'):
            if option in given:
                cli.error('--%s needs --auth-file' % option)
        return
    if 'tls-cert' not in given and 'auth-allow-plaintext' not in given:
        cli.error('--auth-file needs --tls-cert (AUTH is offered only over '
                  'TLS) or --auth-allow-plaintext')
    from smtpd_compat.auth import AuthServerMixin, FileAuthenticator
    try:
        authenticator = FileAuthenticator(given['auth-file'])
    except OSError as e:
        cli.error('--auth-file: cannot read %r: %s'
                  % (given['auth-file'], e.strerror or e))
    except ValueError as e:     # names the file and the line
        cli.error('--auth-file: %s' % e)
    cli.mixins.append(AuthServerMixin)
    cli.server_kwargs.update(
        authenticator=authenticator,
        auth_required='auth-required' in given,
        auth_allow_plaintext='auth-allow-plaintext' in given)


# -- delivery, relay, LMTP ------------------------------------------------------

DELIVERY_OPTIONS: _Options = (
    ('maildir=', 'DIR', 'With -c MaildirServer or -c LMTPServer: the Maildir to deliver into (tmp/, new/, cur/ are created).'),
    ('mbox=', 'FILE', 'With -c MboxServer or -c LMTPServer: the mbox file to append to (mboxrd, fcntl-locked).'),
    ('mbox-dotlock', '', 'With --mbox: also take the dot-lock FILE.lock while appending.'),
)


def configure_delivery(cli: CommandLine) -> None:
    cls = cli.server_class

    def named(base: type) -> bool:
        return isinstance(cls, type) and issubclass(cls, base)
    # -c LMTPServer --maildir/--mbox: an LMTP delivery agent, the storing
    # server composed in front of the LMTP server (configure_lmtp refuses a
    # bare LMTPServer, which would deliver nowhere).
    lmtp = named(LMTPServer) and not named(_StoringServer)
    server_class: type
    for option, server_class in (('maildir', MaildirServer),
                                 ('mbox', MboxServer)):
        value = cli.given.get(option)
        if named(server_class) and value is None:
            cli.error('-c %s needs --%s' % (cls.__name__, option))
        if value is None:
            continue
        if lmtp:
            if any(issubclass(m, _StoringServer) for m in cli.mixins):
                cli.error('--maildir and --mbox cannot be combined')
            cli.mixins.append(server_class)
        elif not named(server_class):
            cli.error('--%s needs -c %s' % (option, server_class.__name__))
        cli.server_kwargs[option] = value
    if 'mbox' in cli.given and importlib.util.find_spec('fcntl') is None:
        cli.error('--mbox needs POSIX file locks (the fcntl module), which '
                  'this platform lacks; use -c MaildirServer --maildir DIR')
    if 'mbox-dotlock' in cli.given:
        if 'mbox' not in cli.given:
            cli.error('--mbox-dotlock needs --mbox')
        cli.server_kwargs['dotlock'] = True


RELAY_OPTIONS: _Options = (
    ('relay-timeout=', 'SECONDS',
     'With -c RelayServer: how long to wait for the upstream server (default 30).'),
)


def configure_relay(cli: CommandLine) -> None:
    value = cli.given.get('relay-timeout')
    if value is None:
        return
    from smtpd_compat.relay import RelayServer
    cli.require_class(RelayServer, 'relay-timeout')
    cli.server_kwargs['relay_timeout'] = _seconds(cli, 'relay-timeout', value)


def _seconds(cli: CommandLine, option: str, value: str) -> float:
    # A positive number of seconds, else a usage error.
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        cli.error('--%s: not a positive number: %s' % (option, value))
    return seconds


LMTP_OPTIONS: _Options = (
    ('lmtp-socket=', 'PATH',
     'With -c LMTPServer (or a subclass): listen on this UNIX socket instead of TCP.'),
    ('lmtp-socket-mode=', 'MODE',
     'With --lmtp-socket: the socket\'s permissions, octal (e.g. 660).'),
)


def configure_lmtp(cli: CommandLine) -> None:
    cls = cli.server_class
    if isinstance(cls, type) and issubclass(cls, LMTPServer):
        # LMTPServer's own process_message (the stdlib's) raises
        # NotImplementedError: every message would drop the connection.
        # configure_delivery has put MaildirServer/MboxServer in front for
        # --maildir/--mbox; without a store, refuse to start.
        stock = _smtpd.SMTPServer.process_message
        if not any(issubclass(c, _smtpd.SMTPServer)
                   and c.process_message is not stock
                   for c in list(cli.mixins) + [cls]):
            cli.error('-c %s needs --maildir DIR or --mbox FILE to deliver '
                      'into (or name a subclass that overrides '
                      'process_message)' % cls.__name__)
    path = cli.given.get('lmtp-socket')
    mode = cli.given.get('lmtp-socket-mode')
    if mode is not None:
        if path is None:
            cli.error('--lmtp-socket-mode needs --lmtp-socket')
        try:
            value = int(mode, 8)
        except ValueError:
            value = -1
        if not 0 <= value <= 0o7777:
            cli.error('--lmtp-socket-mode: not an octal mode: %s' % mode)
        cli.server_kwargs['unix_socket_mode'] = value
    if path is None:
        return
    cli.require_class(LMTPServer, 'lmtp-socket')
    cli.server_kwargs['unix_socket'] = path


# -- worker threads, ESMTP extensions, the web inbox, the version ---------------

THREADS_OPTIONS: _Options = (
    ('threads=', 'N',
     'Run process_message in N worker threads, so a slow handler does not '
     'stop other sessions (it must be thread-safe; see docs/threads.rst).'),
    ('handler-timeout=', 'SECONDS',
     'Answer "451 4.3.0" (AUTH: "454 4.7.0") when work in a worker thread '
     '(a handler, a delivery, a relay step, a password check) runs longer; '
     'the thread is left to finish and its result is dropped and logged.'),
)


def configure_threads(cli: CommandLine) -> None:
    """Put ThreadedServerMixin in front of the server class for --threads;
    the pool's settings (PoolServerMixin) for --handler-timeout alone."""
    timeout = cli.given.get('handler-timeout')
    if timeout is not None:
        cli.server_kwargs['handler_timeout'] = _seconds(
            cli, 'handler-timeout', timeout)
    value = cli.given.get('threads')
    if value is None:
        if timeout is not None:
            # The pool's settings, for AUTH, delivery and relay work.
            cli.mixins.append(PoolServerMixin)
        return
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        cli.error('--threads: not a positive integer: %s' % value)
    cli.mixins.append(ThreadedServerMixin)
    cli.server_kwargs['process_message_threads'] = threads


EXTENSIONS_OPTIONS: _Options = (
    ('esmtp=', 'LIST',
     'Enable ESMTP extensions: "all" or a comma list of '
     + ','.join(EXTENSIONS) + '.'),
)


def configure_extensions(cli: CommandLine) -> None:
    value = cli.given.get('esmtp')
    if value is None:
        return
    names = EXTENSIONS if value.strip().lower() == 'all' else \
        [n for n in value.split(',') if n.strip()]
    unknown = {n.strip().upper() for n in names}.difference(EXTENSIONS)
    if unknown:
        cli.error('--esmtp: unknown extension(s) %s' % ', '.join(sorted(unknown)))
    if not issubclass(cli.server_class, ExtensionsMixin):
        cli.mixins.append(ExtensionsMixin)
    cli.server_kwargs['esmtp_extensions'] = tuple(names)


WEB_OPTIONS: _Options = (
    ('web=', '[HOST:]PORT',
     'Also show every accepted message in a web inbox on this address '
     '(host default 127.0.0.1), with a Mailpit-compatible API.'),
    ('web-db=', 'FILE',
     'Keep the web inbox in this SQLite file, so it survives a restart.'),
    ('web-allowed-hosts=', 'NAMES',
     'Host names the web inbox answers to besides localhost, IP addresses '
     'and its bound name (comma-separated; .example.org for subdomains).'),
    ('web-relay=', 'HOST:PORT',
     'With --web: release (relay) messages from the inbox to this SMTP '
     'server on request (off by default).'),
    ('web-relay-allowed=', 'REGEX',
     'With --web-relay: only release to addresses this regular expression '
     'matches.'),
)


def configure_web(cli: CommandLine) -> None:
    """``--web [HOST:]PORT``: put the inbox in front of the -c class (the
    command line's start line says where the page is); its database,
    allowed host names and release relay."""
    if 'smtpd_compat.web' not in sys.modules and not any(
            option.startswith('web') for option in cli.given):
        # Nothing asks for the inbox, and the -c class is none (its module
        # would have imported the web package).  Not imported: ~10 MiB of
        # memory in every process, --workers or not.
        return
    from smtpd_compat.web import WebInboxServerMixin, make_upstream, parse_address
    from smtpd_compat.web.db import Database
    from smtpd_compat.web.http import parse_allowed_hosts
    has_inbox = isinstance(cli.server_class, type) and issubclass(
        cli.server_class, WebInboxServerMixin)
    for option in ('web-db', 'web-allowed-hosts'):
        if option in cli.given and 'web' not in cli.given and not has_inbox:
            cli.error('--%s needs --web' % option)
    if 'web-allowed-hosts' in cli.given:
        try:
            cli.server_kwargs['web_allowed_hosts'] = parse_allowed_hosts(
                cli.given['web-allowed-hosts'])
        except ValueError as e:
            cli.error('Invalid --web-allowed-hosts: %s' % (e,))
    if 'web-db' in cli.given:
        path = cli.given['web-db']
        try:
            # Checked here: a file that cannot serve is a short error.
            Database(path).close()
        except (OSError, ValueError) as e:
            cli.error('Invalid --web-db: %s' % (e,))
        cli.server_kwargs['web_db'] = path
    if 'web' in cli.given:
        try:
            address = parse_address(cli.given['web'])
        except (TypeError, ValueError) as e:
            cli.error('Invalid --web: %s' % (e,))
        if 'workers' in cli.given:
            # Each forked worker would keep its own inbox, invisible to the
            # one page the parent serves.
            cli.error('--web cannot be combined with --workers')
        if not has_inbox:
            cli.mixins.append(WebInboxServerMixin)
        cli.server_kwargs['web'] = address
    elif not has_inbox:
        for option in ('web-relay', 'web-relay-allowed'):
            if option in cli.given:
                cli.error('--%s needs --web' % option)
        return
    if 'web-relay-allowed' in cli.given and 'web-relay' not in cli.given:
        cli.error('--web-relay-allowed needs --web-relay')
    if 'web-relay' in cli.given:
        try:
            make_upstream(cli.given['web-relay'], cli.given.get('web-relay-allowed'))
        except (TypeError, ValueError) as e:
            cli.error('Invalid --web-relay: %s' % (e,))
        cli.server_kwargs['web_relay'] = cli.given['web-relay']
        cli.server_kwargs['web_relay_allowed'] = cli.given.get('web-relay-allowed')


# ``python -m smtpd_compat --package-version``: -V/--version stay the
# stdlib's ("Python SMTP proxy version 0.3"), so the distribution's own
# version gets a flag of its own.
VERSION_OPTIONS: _Options = (
    ('package-version', '', 'Print "smtpd-compat X.Y.Z" (the installed '
     'distribution\'s version) and exit.'),
)


def configure_version(cli: CommandLine) -> None:
    if 'package-version' in cli.given:
        print('smtpd-compat', VERSION)
        raise SystemExit(0)


#: Every group, in the order their options appear in the help text and
#: their ``configure`` runs (delivery before LMTP, which checks what
#: delivery added; shutdown before workers, which wraps its serve; the web
#: inbox after workers, which it refuses).
GROUPS: Tuple[Group, ...] = (
    Group('loop', 'Event loop', (), None),
    Group('limits', 'Production mode and limits', LIMITS_OPTIONS,
          configure_limits),
    Group('proxy_protocol', 'PROXY protocol', PROXY_OPTIONS,
          configure_proxy_protocol),
    Group('shutdown', 'Graceful shutdown', SHUTDOWN_OPTIONS, configure_shutdown),
    Group('workers', 'Workers', WORKERS_OPTIONS, configure_workers),
    Group('tls', 'TLS', TLS_OPTIONS, configure_tls),
    Group('auth', 'AUTH', AUTH_OPTIONS, configure_auth),
    Group('delivery', 'Delivery', DELIVERY_OPTIONS, configure_delivery),
    Group('relay', 'Relay', RELAY_OPTIONS, configure_relay),
    Group('lmtp', 'LMTP', LMTP_OPTIONS, configure_lmtp),
    Group('threads', 'Worker threads', THREADS_OPTIONS, configure_threads),
    Group('extensions', 'ESMTP extensions', EXTENSIONS_OPTIONS,
          configure_extensions),
    Group('controller', 'Controller', (), None),
    Group('web', 'Web inbox', WEB_OPTIONS, configure_web),
    Group('_version', 'Package', VERSION_OPTIONS, configure_version),
)

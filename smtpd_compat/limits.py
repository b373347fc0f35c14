"""Timeouts and limits: what keeps one client from taking the server down.

The stdlib's smtpd waits forever for a client and accepts any number of
connections, recipients and errors.  :class:`LimitsServerMixin` (with its
channel mixin :class:`LimitsChannelMixin`) adds, each as a keyword:

===========================  ========  =========================================
keyword                      default   on breach
===========================  ========  =========================================
``idle_timeout``             300 s     ``421 4.4.2`` and close (RFC 5321
                                       §4.5.3.2.7: at least 5 minutes)
``data_timeout``             300 s     ``421 4.4.2`` and close
``min_data_rate``            500 B/s   (see below)
``max_connections``          1000      ``421 4.7.0`` instead of the greeting
``max_connections_per_ip``   50        ``421 4.7.0`` instead of the greeting
``max_recipients``           1000      ``452 4.5.3`` (RFC 5321 §4.5.3.1.10)
``max_errors``               20        ``421 4.7.0`` and close
``max_line_length``          512       the stdlib's ``500 Error: line too long``
``max_junk_commands``        100       ``421 4.7.0`` and close
``data_size_limit``          10240000  ``552`` (advertised with SIZE, RFC 1870)
``max_message_memory``       128 MiB   ``452 4.3.1`` (see below)
===========================  ========  =========================================

Junk commands are NOOP, RSET, VRFY, EXPN, HELP and ETRN; the count (like
the error count) starts again after each delivered message.
``data_size_limit`` is the stdlib's own argument: given as None (or left
out), the production default applies; 0 means no limit.  It bounds DATA
and BDAT alike, and a message over it is not kept in memory.

``max_message_memory`` bounds the bytes of message content held by the
whole process at once (:mod:`smtpd_compat.budget`): every DATA and BDAT
buffer, and every message queued for or held by a worker thread, until
that work ends.  Past it, DATA gets ``452 4.3.1`` and a message whose
content arrives meanwhile is read to its end without being kept and
refused with the same reply.  ``data_size_limit`` (SIZE) bounds one
message and ``max_connections`` the connections, so without this budget
the bound is their product (1000 x 10 MB); with it, the budget.

``None`` switches a limit off.  The defaults are Postfix's (smtpd_timeout,
smtpd_min_data_rate, smtpd_client_connection_count_limit,
smtpd_recipient_limit, smtpd_hard_error_limit, smtpd_junk_command_limit,
message_size_limit) where it has one.  The compat classes themselves
(SMTPServer, DebuggingServer, ...) are unchanged: only a server that
includes this mixin has limits.

How the deadlines work (states of one connection):

* waiting for a command: the deadline is ``idle_timeout`` after the last
  complete command line (or the connection).  Bytes that do not complete a
  line do not move it, so a client dripping one byte at a time is cut off.
* receiving a message (DATA content, or a BDAT transaction from its first
  chunk to its LAST): the deadline starts ``data_timeout`` after the 354
  reply (or the first BDAT) and every N bytes received move it
  N / ``min_data_rate`` seconds later, never beyond ``data_timeout`` from
  now (Postfix's rule).  A big message sent at a steady, sane rate never
  times out, by DATA or by BDAT alike; a trickle does.  With
  ``min_data_rate=None`` any progress restarts the full ``data_timeout``.

The deadline is the connection's one deadline, kept by
:class:`smtpd_compat.session.SessionStateMixin` (phases 'idle' and 'data'
here); other capabilities arm it for their own phases (a PROXY header, a
TLS handshake, an AUTH exchange), and this mixin leaves those alone.
Timers run only under :func:`smtpd_compat.loop.loop`, not plain
``asyncore.loop()``.
"""
from __future__ import annotations

import collections
import logging
import socket
from typing import (TYPE_CHECKING, Any, Callable, Counter, Dict, Optional,
                    Set, Tuple, Type, Union)

import smtpd_compat as _smtpd
from smtpd_compat.budget import (INSUFFICIENT_STORAGE, PIECE_OVERHEAD,
                                 PROCESS_BUDGET)
from smtpd_compat.compose import CapabilityServerMixin, UNSET, Unset, settings
from smtpd_compat import loop as _loop
from smtpd_compat.session import LAYERS
from smtpd_compat.logging_ import LogEvery, SessionLogServerMixin, format_peer

if TYPE_CHECKING:
    # Typed as what it is composed into (a SessionStateMixin, and so an
    # SMTPChannel); at run time a plain mixin.
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

__all__ = [
    'LimitsChannelMixin', 'LimitsServerMixin', 'LimitedServer',
    'PRODUCTION_DEFAULTS',
]

logger = logging.getLogger(__name__)

#: Keyword -> default (None switches a limit off).
PRODUCTION_DEFAULTS: Dict[str, Optional[float]] = {
    'idle_timeout': 300.0,
    'data_timeout': 300.0,
    'min_data_rate': 500,
    'max_connections': 1000,
    'max_connections_per_ip': 50,
    'max_recipients': 1000,
    'max_errors': 20,
    'max_line_length': 512,
    'max_junk_commands': 100,
    'data_size_limit': 10240000,
    # Peak RSS reaches about twice this (measured): each message's pieces,
    # then its joined copy, and the allocator keeps the pieces' memory.
    'max_message_memory': 128 * 1024 * 1024,
}

# Commands that move no mail: more than max_junk_commands of them without
# a delivered message and the client is hung up on (Postfix's
# smtpd_junk_command_limit counts NOOP, VRFY, ETRN and RSET).
_JUNK_VERBS = frozenset(('NOOP', 'RSET', 'VRFY', 'EXPN', 'HELP', 'ETRN'))

_NUMBERS = ('idle_timeout', 'data_timeout', 'min_data_rate')


_line_length_factories: Dict[int, Callable[[], int]] = {}


def _line_length(length: int) -> Callable[[], int]:
    """The default_factory of a channel's command_size_limits under
    max_line_length ``length``: one function per length, not one per
    connection (~200 bytes each, issue 20)."""
    factory = _line_length_factories.get(length)
    if factory is None:
        if len(_line_length_factories) >= 32:
            _line_length_factories.clear()
        factory = _line_length_factories[length] = lambda: length
    return factory


class LimitsChannelMixin(_ChannelBase):
    """Channel mixin enforcing the limits its server was built with (read
    from ``self.smtp_server``, see :class:`LimitsServerMixin`).  The
    deadline itself, "closing" and "receiving a message" are the shared
    state of :class:`smtpd_compat.session.SessionStateMixin`; this mixin
    decides which deadline applies when."""

    layer = LAYERS['limits']
    capability_name = 'Limits'
    smtp_server: LimitsServerMixin
    # The client's address while it is counted in _limits_per_ip.
    _limits_ip: Optional[object] = None
    # Bytes of the message being received charged to the memory budget,
    # and whether it went past the budget (its content is then dropped
    # and the message refused).
    _budget_held = 0
    _budget_over = False
    # (With _limits_errors, _limits_junk and _limits_in_process, which
    # __init__ sets: no class defaults, see SMTPChannel.__init__.)
    instance_state = ('_limits_ip', '_budget_held', '_budget_over',
                      '_limits_errors', '_limits_junk', '_limits_in_process')

    def __init__(self, server: LimitsServerMixin, conn: socket.socket,
                 addr: Any, *args: Any, **kwargs: Any) -> None:
        self._limits_errors = 0
        self._limits_junk = 0
        self._limits_in_process = False
        # Counted before the greeting can run, released by close().
        server._limits_channels.add(self)
        super().__init__(server, conn, addr, *args, **kwargs)
        if not self.connected:
            return
        length = server.max_line_length
        if length is not None:
            self.command_size_limit = length
            self.command_size_limits = collections.defaultdict(
                _line_length(length))
        if self.deadline is None and not self.closing:
            # Unless an outer phase (a PROXY header, a TLS handshake) has
            # armed its own deadline already.
            self.set_deadline(server.idle_timeout)

    # -- connection limits --------------------------------------------------

    def _greet(self) -> None:
        # At greeting time, not accept time: behind a PROXY-protocol
        # balancer the client's address is only known now (the PROXY layer
        # sits outside this one and calls the greeting once the header is
        # read).  Counted once, whatever calls the greeting.
        if self._limits_ip is None:
            server = self.smtp_server
            limit = server.max_connections_per_ip
            ip = self.peer[0] if isinstance(self.peer, tuple) else self.peer
            if limit is not None and server._limits_per_ip[ip] >= limit:
                self.hang_up('421 4.7.0 %s Error: too many connections from '
                             'your address' % self.fqdn,
                             'too many connections from address')
                return
            server._limits_per_ip[ip] += 1
            self._limits_ip = ip
        super()._greet()

    # -- deadlines ----------------------------------------------------------

    def _data_deadline(self) -> None:
        server = self.smtp_server
        self.set_deadline(server.data_timeout if server.data_timeout is not None
                          else server.idle_timeout, 'data')

    def collect_incoming_data(self, data: bytes) -> None:
        limit = self.smtp_server.max_message_memory
        # receiving_message(), asked at most once per piece.
        receiving: Optional[bool] = None
        if limit is not None and self.smtp_state != self.COMMAND \
                and (receiving := self.receiving_message()):
            if self._budget_over or not PROCESS_BUDGET.charge(
                    len(data) + PIECE_OVERHEAD, limit):
                # Past the budget: read on to the end of the message, keep
                # none of it (the inner layers see no bytes; their own
                # counts of the stream go on), refuse it at the end.
                if not self._budget_over and self.smtp_state == self.DATA:
                    # What DATA kept so far goes now (the core's buffer;
                    # the core empties it alike past the size limit), and
                    # with it the charge: when many messages arrive at
                    # once, each one refused lets the others finish,
                    # instead of all of them running out together.
                    self.received_lines = []
                    self._budget_release()
                self._budget_over = True
                data = b''
            else:
                self._budget_held += len(data) + PIECE_OVERHEAD
        if self.deadline_phase == 'data' and (
                receiving if receiving is not None else self.receiving_message()):
            timeout = self.smtp_server.data_timeout
            deadline = self.deadline    # (set while a phase is)
            if timeout is not None and deadline is not None:
                now = self.now()
                rate = self.smtp_server.min_data_rate
                if rate:
                    # Progress buys time in proportion to its size, capped
                    # at a full data_timeout from now (Postfix's rule).
                    self.extend_deadline(min(
                        deadline + len(data) / rate, now + timeout))
                else:
                    self.extend_deadline(now + timeout)
        super().collect_incoming_data(data)

    def found_terminator(self) -> None:
        limit = getattr(self.smtp_server, 'max_junk_commands', None)
        if (limit is not None and self.smtp_state == self.COMMAND
                and not self.closing):
            if self._command_verb() in _JUNK_VERBS:
                self._limits_junk += 1
                if self._limits_junk > limit:
                    self.received_lines = []
                    self.hang_up('421 4.7.0 %s Error: too many junk commands'
                                 % self.fqdn, 'too many junk commands')
                    return
        super().found_terminator()
        if self.closing or not self.connected or self.waiting:
            return
        phase = self.deadline_phase
        if phase not in (None, 'idle', 'data'):
            return      # another capability's phase (an AUTH exchange ...)
        if self.receiving_message():
            if phase != 'data':
                self._data_deadline()
        else:
            self.set_deadline(self.smtp_server.idle_timeout)

    # -- recipients and errors ---------------------------------------------

    def check_rcpt_parameters(self, params: _smtpd._Params) -> Optional[str]:
        limit = self.smtp_server.max_recipients
        if limit is not None and len(self.rcpttos) >= limit:
            # RFC 5321 §4.5.3.1.10: "452 too many recipients"; the client
            # sends the rest in another transaction.
            return '452 4.5.3 Error: too many recipients'
        return super().check_rcpt_parameters(params)

    def smtp_DATA(self, arg: str) -> None:
        limit = self.smtp_server.max_message_memory
        if (limit is not None and self.rcpttos and not arg
                and self.smtp_state == self.COMMAND
                and PROCESS_BUDGET.full(limit)):
            # A transaction that would be accepted; the budget says no
            # before any content comes.
            self.push(INSUFFICIENT_STORAGE)
            return
        super().smtp_DATA(arg)

    def _process_data(self, data: Union[bytes, str]) -> None:
        if self._budget_over:
            self._set_post_data_state()
            self.push(INSUFFICIENT_STORAGE)
            return
        self._limits_in_process = True
        try:
            super()._process_data(data)
        finally:
            self._limits_in_process = False
            self._budget_release()

    def _hand_over_message(self) -> Callable[[], None]:
        # The message goes to a worker thread: its bytes stay charged until
        # that work has ended.  (Called by the threads layer, inside this
        # one, which is then present.)
        release: Callable[[], None] = getattr(
            super(), '_hand_over_message')()
        held, self._budget_held = self._budget_held, 0

        def finished() -> None:
            PROCESS_BUDGET.release(held)
            release()
        return finished

    def _budget_release(self) -> None:
        held = self._budget_held
        if held:
            self._budget_held = 0
            PROCESS_BUDGET.release(held)

    def _set_post_data_state(self) -> None:
        # Every end of a transaction (message answered, 552, RSET, EHLO).
        self._budget_release()
        self._budget_over = False
        super()._set_post_data_state()

    # SMTPChannel.push takes a reply line (str), async_chat's takes bytes.
    def push(self, msg: str) -> None:  # type: ignore[override]
        super().push(msg)
        if self.closing:
            return
        if self._limits_in_process and msg[:1] == '2':
            # A delivered message wipes the slate, as in Postfix: the limit
            # is on errors (and junk) without delivering mail.
            self._limits_errors = 0
            self._limits_junk = 0
            return
        limit = self.smtp_server.max_errors
        if limit is not None and msg[:1] == '5':
            self._limits_errors += 1
            if self._limits_errors >= limit:
                self.hang_up('421 4.7.0 %s Error: too many errors'
                             % self.fqdn, 'too many errors')

    # -- bookkeeping --------------------------------------------------------

    def close(self) -> None:
        self._budget_release()
        server = self.smtp_server
        server._limits_channels.discard(self)
        ip = self._limits_ip
        if ip is not None:
            self._limits_ip = None
            counts = server._limits_per_ip
            counts[ip] -= 1
            if counts[ip] <= 0:
                del counts[ip]
        super().close()


class LimitsServerMixin(CapabilityServerMixin):
    """Server mixin: timeouts and limits for every connection.

    Keyword-only arguments (None switches one off; see the module docstring
    for defaults and replies): ``idle_timeout``, ``data_timeout`` (seconds),
    ``min_data_rate`` (bytes per second), ``max_connections``,
    ``max_connections_per_ip``, ``max_recipients``, ``max_errors``,
    ``max_line_length`` (bytes of a command line, CRLF excluded),
    ``max_junk_commands``, ``max_message_memory`` (bytes of message
    content held by the whole process, see :mod:`smtpd_compat.budget`).
    A keyword not given takes the value of the
    class attribute of the same name when the server's class defines one,
    else the default.  The stdlib's ``data_size_limit`` (third positional
    argument or keyword) defaults to 10,240,000 bytes here when it is left
    out or None; 0 switches it off.  The rest go to the next class.  Serve
    it with :func:`smtpd_compat.loop.loop` so that the deadlines fire.
    """

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = LimitsChannelMixin

    # Set by __init__ (the keyword, else the class attribute, else the
    # default); None switches a limit off.
    idle_timeout: Optional[float]
    data_timeout: Optional[float]
    min_data_rate: Optional[float]
    max_connections: Optional[int]
    max_connections_per_ip: Optional[int]
    max_recipients: Optional[int]
    max_errors: Optional[int]
    max_line_length: Optional[int]
    max_junk_commands: Optional[int]
    max_message_memory: Optional[int]
    _limits_channels: Set[_smtpd.SMTPChannel]
    # Open connections per client address.
    _limits_per_ip: Counter[object]
    _limits_refused: LogEvery

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any,
                 idle_timeout: Union[float, None, Unset] = UNSET,
                 data_timeout: Union[float, None, Unset] = UNSET,
                 min_data_rate: Union[float, None, Unset] = UNSET,
                 max_connections: Union[int, None, Unset] = UNSET,
                 max_connections_per_ip: Union[int, None, Unset] = UNSET,
                 max_recipients: Union[int, None, Unset] = UNSET,
                 max_errors: Union[int, None, Unset] = UNSET,
                 max_line_length: Union[int, None, Unset] = UNSET,
                 max_junk_commands: Union[int, None, Unset] = UNSET,
                 max_message_memory: Union[int, None, Unset] = UNSET,
                 **kwargs: Any) -> None:
        given = dict(idle_timeout=idle_timeout, data_timeout=data_timeout,
                     min_data_rate=min_data_rate,
                     max_connections=max_connections,
                     max_connections_per_ip=max_connections_per_ip,
                     max_recipients=max_recipients, max_errors=max_errors,
                     max_line_length=max_line_length,
                     max_junk_commands=max_junk_commands,
                     max_message_memory=max_message_memory)
        defaults = {name: value for name, value in PRODUCTION_DEFAULTS.items()
                    if name in given}
        for name, value in settings(self, given, defaults).items():
            _check_limit(name, value)
        self._limits_channels = set()
        self._limits_per_ip = collections.Counter()
        self._limits_refused = LogEvery(1.0)
        # The stdlib's SMTPServer(localaddr, remoteaddr, data_size_limit,
        # ...): None (the command line without -s) or absent means the
        # production default, so that memory per message is bounded.
        default_size = PRODUCTION_DEFAULTS['data_size_limit']
        if args:
            if args[0] is None:
                args = (default_size,) + args[1:]
        elif kwargs.get('data_size_limit') is None:
            kwargs['data_size_limit'] = default_size
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    @property
    def connection_count(self) -> int:
        """Connections open on this server now."""
        return len(self._limits_channels)

    def handle_accepted(self, conn: socket.socket, addr: Any) -> None:
        limit = self.max_connections
        if limit is not None and len(self._limits_channels) >= limit:
            # Refused before any channel exists: the cheapest answer, so a
            # flood costs the sessions in progress as little as possible.
            fqdn = _smtpd._server_fqdn(self)
            try:
                conn.setblocking(False)
                conn.send(('421 4.7.0 %s Error: too many connections\r\n'
                           % fqdn).encode('ascii', 'replace'))
            except OSError:
                pass
            conn.close()
            refused = self._limits_refused.count()
            if refused:
                logger.warning('refused %d connection(s), last from %s: '
                               'too many connections (%d)',
                               refused, format_peer(addr), limit)
            return
        super().handle_accepted(conn, addr)


def _check_limit(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError('%s must be a number or None, not %r' % (name, value))
    if name in _NUMBERS:
        if not value > 0:
            raise ValueError('%s must be positive, not %r' % (name, value))
    elif not isinstance(value, int) or value < 1:
        raise ValueError('%s must be a positive integer, not %r'
                         % (name, value))


class LimitedServer(SessionLogServerMixin, LimitsServerMixin,
                    _smtpd.SMTPServer):
    """An SMTPServer with the production limits and the session log on
    (subclass it and override process_message)."""

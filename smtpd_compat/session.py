"""The state every capability shares, and the hooks several of them
extend: one place for the facts about a session (TLS active, the
authenticated user, the PROXY balancer, "receiving a message",
"closing", "waiting for server-side work"), the connection's one deadline
and its clock.

Every channel class that :mod:`smtpd_compat.compose` builds for a server
with capabilities has :class:`SessionStateMixin` innermost, right in front of
the server's own channel class, so each capability can rely on it instead of
keeping its own copy of the same state (and each asks it instead of
comparing ``smtp_state`` with ``DATA`` itself).  The compat classes
(:class:`smtpd_compat.SMTPChannel` and a server's plain ``channel_class``)
never get it; the module-level functions below answer for them too.

States of one connection, as the capabilities see them:

* **receiving a message** (:meth:`~SessionStateMixin.receiving_message`):
  DATA content is arriving, a BDAT chunk is being read, or a BDAT
  transaction has started and its LAST chunk has not come yet (the
  extensions module extends the method).  Limits apply the data deadline
  and graceful shutdown lets it finish.
* **waiting** (:attr:`~SessionStateMixin.waiting`): work for this channel
  runs off the loop thread (:mod:`smtpd_compat.threads`); nothing is read
  meanwhile and the deadline does not run.
* **closing** (:attr:`~SessionStateMixin.closing`): the server has said its
  last reply (:meth:`~SessionStateMixin.hang_up`): nothing more is read or
  processed, the connection closes once the reply is sent (or when the
  deadline passes, if the client does not read).
* otherwise **idle**: between commands.

Facts a layer sets and others read, with their defaults here (a layer
that knows better overrides them): :attr:`~SessionStateMixin.tls_active`
(the TLS layer), :attr:`~SessionStateMixin.auth_user` (AUTH),
:attr:`~SessionStateMixin.proxy_peer` (PROXY; ``peer`` is then the
client the header named).

Hooks several layers extend, each calling ``super()``:
:meth:`~SessionStateMixin.reset_session` (TLS calls it after STARTTLS;
AUTH forgets its login), :meth:`~SessionStateMixin.message_processed`
(once per message, with process_message's result),
:meth:`~SessionStateMixin.handle_timeout` (a layer handles the phase it
armed), :meth:`~SessionStateMixin.receiving_message` (extensions: BDAT).

The deadline: at most one per connection, armed with
:meth:`~SessionStateMixin.set_deadline` ``(seconds, phase)``.  The phase
names who armed it and decides what happens when it passes
(:meth:`~SessionStateMixin.handle_timeout`): ``'idle'`` and ``'data'``
(limits) and ``'auth'`` (an AUTH exchange) answer ``421 4.4.2`` and close;
``'proxy'`` (no PROXY header yet) and ``'tls'`` (a handshake in progress)
close without a reply, since no SMTP reply could be read there.  Timers
fire only under :func:`smtpd_compat.loop.loop`.
"""
import logging
from typing import (TYPE_CHECKING, Any, ClassVar, Deque, List, Optional, Tuple,
                    Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat import loop as _loop
from smtpd_compat.logfmt import format_peer

if TYPE_CHECKING:
    # Every class this mixin is composed into is an SMTPChannel; at run
    # time it is a plain mixin.
    from smtpd_compat import SMTPChannel as _ChannelBase
else:
    _ChannelBase = object

__all__ = ['SessionStateMixin', 'receiving_message', 'busy', 'hang_up',
           'LAYERS', 'INTERNAL_ERROR']

#: Where each capability's channel mixin sits, outermost first: the
#: composed channel class lists its mixins in this order, whatever order the
#: server's bases were written in.  A mixin's ``layer`` is one of these.
LAYERS = {
    'proxy': 10,        # PROXY header: before anything else, sets the peer
    'session_log': 20,  # logs what the layers inside it decide
    'limits': 30,       # deadlines, connection/recipient/error limits
    'tls': 40,          # transport: STARTTLS and implicit TLS
    'auth': 50,         # AUTH and its gate on MAIL
    'inbox': 52,        # the web inbox records accepted messages
    'threads': 55,      # process_message off the loop thread
    'extensions': 60,   # PIPELINING, CHUNKING/BDAT, DSN, ENHANCEDSTATUSCODES
    'message': 70,      # per-recipient options, the message path
    'trace': 80,        # the session for Received: headers (delivery, relay)
    'state': 100,       # SessionStateMixin, innermost
}

# How long a client that does not read its last reply may keep the socket.
_HANG_UP_GRACE = 5.0

logger = logging.getLogger(__name__)

#: The reply to a message whose ``process_message`` raised (see
#: ``SessionStateMixin._call_process_message``).
INTERNAL_ERROR = '451 4.3.0 Error: internal server error'


def receiving_message(channel: '_smtpd.SMTPChannel') -> bool:
    """True while ``channel`` is receiving message content; works for the
    compat channels (DATA state) too."""
    if isinstance(channel, SessionStateMixin):
        return channel.receiving_message()
    return channel.smtp_state == channel.DATA


def busy(channel: '_smtpd.SMTPChannel') -> bool:
    """True while ``channel`` is receiving a message or waiting for work in
    flight: graceful shutdown lets such a channel finish."""
    if isinstance(channel, SessionStateMixin):
        return channel.busy()
    return channel.smtp_state == channel.DATA


def hang_up(channel: '_smtpd.SMTPChannel', reply: str, reason: str) -> None:
    """Say ``reply`` (a 421) on ``channel``, process nothing more it sends,
    and close it once the reply is sent: :meth:`SessionStateMixin.hang_up`
    for a capability channel.  A compat channel has no session state; it
    gets the same through the core's own hook ``_input_paused`` (no
    further input is processed; set only here and by capabilities, never
    by the core), and the reason is not kept.  Saying it twice does
    nothing."""
    if isinstance(channel, SessionStateMixin):
        if channel.connected:
            channel.hang_up(reply, reason)
        return
    if channel._input_paused:
        return      # said already
    channel._input_paused = True
    cast(Any, channel).ac_in_buffer = b''
    if not channel.connected:
        return
    try:
        channel.push(reply)
    except Exception:      # a channel broken in some way: just close it
        logger.exception('while hanging up on %r', channel)
        channel.close()
        return
    channel.close_when_done()
    _loop.update(channel)


class SessionStateMixin(_ChannelBase):
    """Channel mixin holding the state shared by the capabilities (see the
    module docstring).  Who overrides what:

    * :meth:`receiving_message`: the extensions module (BDAT) extends it,
      calling ``super()``.
    * :meth:`handle_timeout`: a capability that arms its own phase handles
      that phase and calls ``super()`` for the others (TLS, PROXY do).
    * :meth:`reset_session`: AUTH extends it (after ``super()``).
    * :meth:`message_processed`: a layer that acts on each message's
      outcome (the web inbox) extends it and calls ``super()``.
    * :meth:`readable`, :meth:`close`: capabilities may extend them and must
      call ``super()``.
    """

    layer = LAYERS['state']

    # -- facts the layers share (set by one, read by others) -----------

    @property
    def tls_active(self) -> bool:
        """True once TLS protects the session (the TLS layer answers;
        without it a session is plaintext)."""
        return False

    #: The login of the client that authenticated (AUTH sets it), or None.
    auth_user: Optional[str] = None
    #: The TCP peer (the balancer) when a PROXY header named the client,
    #: whose address ``peer`` then is; None without the PROXY layer.
    proxy_peer: Any = None

    #: True once the server has said its last reply.
    closing = False
    #: Why the server closed the connection (logged): 'timeout', a limit,
    #: 'shutdown', ...; None when the client went away by itself.
    close_reason: Optional[str] = None
    #: True while work for this channel runs off the loop thread.
    waiting = False
    #: The phase of the armed deadline, or None.
    deadline_phase: Optional[str] = None
    _deadline: Optional[float] = None
    _deadline_timer: Optional[_loop.TimerHandle] = None
    _loop_services: Optional[_loop.LoopServices] = None
    # Per-connection state with the class defaults above (and _batching
    # below): slots in composed classes on 3.11 and 3.12, a cold state
    # object on 3.13 (smtpd_compat.compose.derive).
    instance_state: ClassVar[Tuple[str, ...]] = (
        'auth_user', 'proxy_peer', 'closing', 'close_reason', 'waiting',
        'deadline_phase', '_deadline', '_deadline_timer', '_loop_services',
        '_batching', '_verb_of')
    # asyncore's, for the type checker (no class attributes).
    _map: _loop.SocketMap
    _fileno: Optional[int]
    producer_fifo: Deque[Any]

    # -- state ----------------------------------------------------------

    def receiving_message(self) -> bool:
        """True while message content is arriving (DATA here; extended for
        BDAT)."""
        return self.smtp_state == self.DATA

    def busy(self) -> bool:
        """Receiving a message or waiting for work in flight."""
        return self.receiving_message() or self.waiting

    def hang_up(self, reply: str, reason: str) -> None:
        """Send ``reply`` (a 421), read and process nothing more, close once
        it is sent (or after a few seconds if the client does not read)."""
        if self.closing:
            return
        self.close_reason = reason
        self.push(reply)
        self.closing = True
        # Inside found_terminator this drops the rest of pipelined input.
        self.ac_in_buffer = b''
        self.close_when_done()
        self.set_deadline(_HANG_UP_GRACE, 'closing')
        _loop.update(self)

    # -- time and the deadline ---------------------------------------------

    @property
    def loop_services(self) -> _loop.LoopServices:
        """The services of this connection's socket map
        (:func:`smtpd_compat.loop.services`): its timers and clock."""
        services = self._loop_services
        if services is None:
            services = self._loop_services = _loop.services(self._map)
        return services

    def now(self) -> float:
        """The time on this connection's clock (its socket map's
        :attr:`~smtpd_compat.loop.LoopServices.clock`): what deadlines and
        data rates are measured in."""
        return (self._loop_services or self.loop_services).clock()

    def set_deadline(self, seconds: Optional[float],
                     phase: str = 'idle') -> None:
        """Arm the connection's deadline ``seconds`` from now for ``phase``
        (``None`` disarms it).  When it passes, :meth:`handle_timeout`
        runs with the phase.  Moving a deadline later costs no timer
        operation: the timer, when it fires early, re-arms itself."""
        if seconds is None:
            self._deadline = None
            self.deadline_phase = None
            return
        # (The loop_services property, inlined: called for every command.)
        services = self._loop_services or self.loop_services
        when = services.clock() + seconds
        self._deadline = when
        self.deadline_phase = phase
        timer = self._deadline_timer
        if timer is not None and timer.when <= when:
            return
        if timer is not None:
            timer.cancel()
        self._deadline_timer = services.call_at(when, self._check_deadline)

    def extend_deadline(self, when: float) -> None:
        """Move the armed deadline to the time ``when`` on the connection's
        clock (:meth:`now`): progress in a phase that allows it, such as
        DATA."""
        if self._deadline is not None:
            self._deadline = when
            timer = self._deadline_timer
            if timer is None or timer.when > when:
                if timer is not None:
                    timer.cancel()
                self._deadline_timer = self.loop_services.call_at(
                    when, self._check_deadline)

    @property
    def deadline(self) -> Optional[float]:
        """The armed deadline (on the connection's clock, :meth:`now`), or
        None."""
        return self._deadline

    def reset_idle_deadline(self) -> None:
        """Arm the deadline for waiting for the next command: the server's
        ``idle_timeout`` when it has one (limits), else disarm it."""
        self.set_deadline(getattr(self.smtp_server, 'idle_timeout', None))

    def _check_deadline(self) -> None:
        self._deadline_timer = None
        deadline = self._deadline
        if deadline is None or not self.connected:
            return
        services = self.loop_services
        if deadline > services.clock():
            # Moved later since the timer was set (see set_deadline).
            self._deadline_timer = services.call_at(deadline, self._check_deadline)
            return
        phase = self.deadline_phase
        self._deadline = None
        self.deadline_phase = None
        self.handle_timeout(phase)

    def handle_timeout(self, phase: Optional[str]) -> None:
        """The deadline of ``phase`` passed.  For 'idle', 'data' and 'auth':
        ``421 4.4.2`` and close at once (a client that does not read its
        replies must not hold the socket); for 'proxy', 'tls' and
        'closing': close without a reply."""
        if self.closing or phase in ('proxy', 'tls', 'closing'):
            if self.close_reason is None:
                self.close_reason = 'timeout'
            self.close()
            return
        self.close_reason = 'timeout'
        self.closing = True
        self.push('421 4.4.2 %s Error: timeout exceeded' % self.fqdn)
        self.close()

    # -- the session and the message ---------------------------------------

    def reset_session(self) -> None:
        """Forget everything learnt from the client: the envelope, the
        greeting, EHLO-raised line limits (RFC 3207 section 4.2: after a
        STARTTLS handshake; the client must send EHLO again).  Layers that
        keep more session state (AUTH: its login) extend this and call
        ``super()``."""
        self._set_rset_state()
        self.seen_greeting = ''
        self.extended_smtp = False
        self.command_size_limits.clear()

    def message_processed(self, peer: Any, mailfrom: Optional[str],
                          rcpttos: List[str], data: Union[bytes, str],
                          status: Any) -> None:
        """process_message returned ``status`` for this message (None, a
        reply line, or LMTP's list or dict; :data:`INTERNAL_ERROR` or
        the threads module's ``PROCESSING_FAILED`` when it raised).  Called
        once per message on the loop thread, wherever process_message ran,
        before the reply is sent; whatever process_message a subclass
        wrote, and whether or not it called ``super()``.  Layers extend it
        (calling ``super()``) to act on every outcome: the web inbox keeps
        what was accepted.  Here: nothing."""

    def _call_process_message(self, peer: Any, mailfrom: str, rcpttos: List[str],
                              data: Union[bytes, str]) -> Optional[str]:
        # Capability servers only (the compat classes let the exception
        # reach asyncore, which prints it and drops the connection): an
        # exception from process_message is logged with its traceback and
        # answered 451 4.3.0 (RFC 3463: other or undefined mail system
        # status, the client retries); the transaction ends and the
        # session goes on.
        try:
            status = super()._call_process_message(peer, mailfrom, rcpttos, data)
        except _smtpd.asyncore.ExitNow:
            raise       # leaves the loop, as the stdlib lets it
        except Exception:
            logger.exception('process_message failed for a message from %s '
                             '(%d recipient(s)); answered 451',
                             format_peer(peer), len(rcpttos))
            status = INTERNAL_ERROR
        self.message_processed(peer, mailfrom, rcpttos, data, status)
        return status

    # -- asyncore plumbing ------------------------------------------------

    def readable(self) -> bool:
        if self.closing or self.waiting:
            return False
        return super().readable()

    # Speed fix (the same bytes on the wire): the replies to everything one
    # read holds are queued and sent together afterwards, several per
    # send(), not with one send() each (60,000 pipelined one-byte BDAT
    # chunks spent most of their time in send()).  Only here: the compat
    # channel sends each reply as it is pushed, as the stdlib did, so code
    # that inspects each send() (CPython's own tests) sees the same calls.
    # True while handle_read processes a read: initiate_send waits.
    _batching = False

    def handle_read(self) -> None:
        if self._batching:
            super().handle_read()
            return
        self._batching = True
        try:
            super().handle_read()
        finally:
            self._batching = False
            if self.producer_fifo:
                self._send_queued()

    def initiate_send(self) -> None:
        if self._batching:
            return      # handle_read sends once the read is processed
        fifo = self.producer_fifo
        if len(fifo) > 1 and type(fifo[0]) is bytes and type(fifo[1]) is bytes:
            # Several queued replies go out in one send(): asynchat sends
            # one queued item per call.
            limit = self.ac_out_buffer_size
            parts = [fifo.popleft()]
            size = len(parts[0])
            while fifo and type(fifo[0]) is bytes and \
                    size + len(fifo[0]) <= limit:
                item = fifo.popleft()
                parts.append(item)
                size += len(item)
            fifo.appendleft(b''.join(parts))
        super().initiate_send()

    def _send_queued(self) -> None:
        """Send what is queued, as far as the socket takes it; the rest
        goes out from handle_write."""
        fifo = self.producer_fifo
        while fifo and self.connected:
            count = len(fifo)
            self.initiate_send()
            if len(fifo) >= count:
                return      # a partial send (or none): wait for writable

    def _command_line(self) -> Union[bytes, str]:
        """The command line received (bytes; str on a decode_data=True
        channel), for a layer that looks at it before the core does.  It is
        joined once: ``received_lines`` becomes that one line, so neither
        the next layer nor the core joins it again."""
        lines = self.received_lines
        if len(lines) == 1:
            return lines[0]     # (what join() gives for one line: itself)
        line = self._emptystring.join(lines)  # type: ignore[arg-type]
        self.received_lines = [line]
        return line

    # (line, _command_verb() of it) while a read is handled.
    _verb_of: Optional[Tuple[Union[bytes, str], str]] = None

    def _command_verb(self) -> str:
        """The first word of the command line received (see
        _command_line), in upper case, as text ('' for a blank line): for
        the layers that look at it before the core does (limits' junk
        commands, extensions' reply codes).  Worked out once a line."""
        line = self._command_line()
        known = self._verb_of
        if known is not None and known[0] is line:
            return known[1]
        # (A verb is short: the first 16 characters hold any the layers
        # look for.)
        word = line[:16].split(None, 1)
        verb = word[0] if word else ''
        if isinstance(verb, bytes):
            verb = verb.decode('ascii', 'replace')
        verb = verb.upper()
        self._verb_of = (line, verb)
        return verb

    def _handle_input(self, data: bytes) -> None:
        if self.closing:
            return
        super()._handle_input(data)
        # (The lines of this read are handled: none is kept.)
        self._verb_of = None

    def found_terminator(self) -> None:
        if self.closing:
            self.received_lines = []
            return
        try:
            super().found_terminator()
        except Exception as err:
            # Deviations (b)/(c): an exception the stdlib raised for client
            # input is answered where it leaves the user's channel class
            # (this mixin is innermost), so the capabilities outside go on
            # as after any reply: the limits still move the idle deadline.
            if not self._answer_escaped(err):
                raise

    def close(self) -> None:
        if self._batching and self.producer_fifo and self.connected:
            # Closed while a read is processed: send the replies queued so
            # far first, as the stdlib (which sent each one at once) did.
            self._batching = False
            self._send_queued()
        timer = self._deadline_timer
        if timer is not None:
            self._deadline_timer = None
            timer.cancel()
        self._deadline = None
        self.deadline_phase = None
        super().close()

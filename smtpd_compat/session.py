"""The state every capability shares: one place for "receiving a message",
"closing", "waiting for server-side work" and the connection's one deadline.

Every channel class that :mod:`smtpd_compat._compose` builds for a server
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
import time
from typing import Optional

import smtpd_compat as _smtpd
from smtpd_compat import loop as _loop

__all__ = ['SessionStateMixin', 'receiving_message', 'busy', 'LAYERS',
           'INTERNAL_ERROR']

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
    'state': 100,       # SessionStateMixin, innermost
}

# How long a client that does not read its last reply may keep the socket.
_HANG_UP_GRACE = 5.0

logger = logging.getLogger(__name__)

#: The reply to a message whose ``process_message`` raised (see
#: ``SessionStateMixin._call_process_message``).
INTERNAL_ERROR = '451 4.3.0 Error: internal server error'


def receiving_message(channel) -> bool:
    """True while ``channel`` is receiving message content; works for the
    compat channels (DATA state) too."""
    method = getattr(channel, 'receiving_message', None)
    if method is not None:
        return method()
    return channel.smtp_state == channel.DATA


def busy(channel) -> bool:
    """True while ``channel`` is receiving a message or waiting for work in
    flight: graceful shutdown lets such a channel finish."""
    return receiving_message(channel) or bool(getattr(channel, 'waiting',
                                                      False))


class SessionStateMixin:
    """Channel mixin holding the state shared by the capabilities (see the
    module docstring).  Who overrides what:

    * :meth:`receiving_message`: the extensions module (BDAT) extends it,
      calling ``super()``.
    * :meth:`handle_timeout`: a capability that arms its own phase handles
      that phase and calls ``super()`` for the others (TLS does).
    * :meth:`readable`, :meth:`close`: capabilities may extend them and must
      call ``super()``.
    """

    layer = LAYERS['state']

    #: True once the server has said its last reply.
    closing = False
    #: Why the server closed the connection (logged): 'timeout', a limit,
    #: 'shutdown', ...; None when the client went away by itself.
    close_reason: Optional[str] = None
    #: True while work for this channel runs off the loop thread.
    waiting = False
    #: The phase of the armed deadline, or None.
    deadline_phase: Optional[str] = None
    _deadline = None
    _deadline_timer = None

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

    # -- the deadline -----------------------------------------------------

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
        when = time.monotonic() + seconds
        self._deadline = when
        self.deadline_phase = phase
        timer = self._deadline_timer
        if timer is not None and timer.when <= when:
            return
        if timer is not None:
            timer.cancel()
        self._deadline_timer = _loop.call_later(
            seconds, self._check_deadline, map=self._map)

    def extend_deadline(self, when: float) -> None:
        """Move the armed deadline to the monotonic time ``when`` (progress
        in a phase that allows it, such as DATA)."""
        if self._deadline is not None:
            self._deadline = when
            timer = self._deadline_timer
            if timer is None or timer.when > when:
                self.set_deadline(when - time.monotonic(), self.deadline_phase)

    @property
    def deadline(self) -> Optional[float]:
        """The armed deadline (``time.monotonic()`` scale), or None."""
        return self._deadline

    def reset_idle_deadline(self) -> None:
        """Arm the deadline for waiting for the next command: the server's
        ``idle_timeout`` when it has one (limits), else disarm it."""
        self.set_deadline(getattr(self.smtp_server, 'idle_timeout', None))

    def _check_deadline(self):
        self._deadline_timer = None
        deadline = self._deadline
        if deadline is None or not self.connected:
            return
        left = deadline - time.monotonic()
        if left > 0:
            self._deadline_timer = _loop.call_later(
                left, self._check_deadline, map=self._map)
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

    # -- the message ------------------------------------------------------

    def _call_process_message(self, peer, mailfrom, rcpttos, data):
        # Capability servers only (the compat classes let the exception
        # reach asyncore, which prints it and drops the connection): an
        # exception from process_message is logged with its traceback and
        # answered 451 4.3.0 (RFC 3463: other or undefined mail system
        # status, the client retries); the transaction ends and the
        # session goes on.
        try:
            return super()._call_process_message(peer, mailfrom, rcpttos, data)
        except _smtpd.asyncore.ExitNow:
            raise       # leaves the loop, as the stdlib lets it
        except Exception:
            # (Imported here: logging_ imports this module.)
            from smtpd_compat.logging_ import format_peer
            logger.exception('process_message failed for a message from %s '
                             '(%d recipient(s)); answered 451',
                             format_peer(peer), len(rcpttos))
            return INTERNAL_ERROR

    # -- asyncore plumbing ------------------------------------------------

    def readable(self):
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

    def handle_read(self):
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

    def initiate_send(self):
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

    def _send_queued(self):
        """Send what is queued, as far as the socket takes it; the rest
        goes out from handle_write."""
        fifo = self.producer_fifo
        while fifo and self.connected:
            count = len(fifo)
            self.initiate_send()
            if len(fifo) >= count:
                return      # a partial send (or none): wait for writable

    def _handle_input(self, data):
        if self.closing:
            return
        super()._handle_input(data)

    def found_terminator(self):
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

    def close(self):
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

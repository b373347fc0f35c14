"""One log line per connection and per message, on the ``smtpd_compat``
logger.

The stdlib's DEBUGSTREAM prints stay as they are (they are a debugging
aid, off by default); these lines are for operators.  At INFO level:

* ``connect from 192.0.2.7:51234`` (plus ``via 10.0.0.2:40000`` when a
  PROXY-protocol balancer relayed it), when the greeting is due;
* ``message from 192.0.2.7:51234: id=5E0C3A9F17B2 from=<a@example.org>
  size=1234 recipients=2 reply='250 OK'``, once per message handed to
  ``process_message`` (the id is new for every message: it ties this
  line to the others about the same message);
* ``disconnect from 192.0.2.7:51234: messages=1 duration=0.42s`` (plus
  ``reason=...`` when the server hung up: a timeout, a limit, shutdown).

Every field that comes from a client (an EHLO name, an address, PROXY
data, an AUTH login, a reply echoing them) goes through :func:`safe` before
it reaches a log line, so that a line is always one line: a client cannot
forge another log line with CR, LF or an escape sequence of its own.

The module is named ``logging_`` so that it never shadows the stdlib's
``logging``.  Nothing here configures handlers: the application (or
``python -m smtpd_compat --log-level``) does.
"""
import logging
import os
import re
import time

from smtpd_compat._compose import CapabilityServerMixin
from smtpd_compat.session import LAYERS

__all__ = ['logger', 'SessionLogChannelMixin', 'SessionLogServerMixin',
           'LogEvery',
           'format_peer', 'safe']

logger = logging.getLogger(__name__)

# What safe() escapes: the C0 controls (CR, LF, TAB, ESC, ...), DEL, the
# C1 controls, the backslash itself (so that an escape in the log always
# means an escaped byte, never a client's literal "\n"), and any other
# character Python does not call printable (line and paragraph separators
# U+2028/U+2029, which some log viewers break lines at, format characters,
# unassigned code points).  The space stays as it is.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f\\]|[^\x00-\x7e]')


def _escape(match):
    char = match.group()
    if char == '\\':
        return '\\\\'
    if char.isprintable():
        return char
    code = ord(char)
    if 0xdc80 <= code <= 0xdcff:
        # A byte that was not UTF-8 (see safe()): shown as that byte.
        return '\\x%02x' % (code - 0xdc00)
    if code <= 0xff:
        return '\\x%02x' % code
    if code <= 0xffff:
        return '\\u%04x' % code
    return '\\U%08x' % code


def safe(value) -> str:
    """``value`` as text for one log field: ``str(value)`` (bytes are
    decoded as UTF-8) with every control or non-printable character, and
    the backslash, written as a backslash escape (``\\n``, ``\\x1b``,
    ``\\u2028``, ``\\\\``; a byte that is not UTF-8 as ``\\xNN``).  The
    result is one line without control characters, whatever a client
    sent."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode('utf-8', 'surrogateescape')
    else:
        value = str(value)
    return _UNSAFE.sub(_escape, value)



class LogEvery:
    """Counts events that a flood could repeat and says when to log them: at
    most once per ``interval`` seconds, with how many happened since the
    last line, so that a flood never floods the log."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._count = 0
        self._last = -1e9

    def count(self) -> int:
        """Count one event.  Returns how many to report now (this one and
        those held back since the last report), or 0 inside the interval."""
        self._count += 1
        now = time.monotonic()
        if now < self._last + self.interval:
            return 0
        count, self._count, self._last = self._count, 0, now
        return count

def format_peer(peer) -> str:
    """``host:port`` for an address tuple (``[v6]:port`` for IPv6),
    escaped with :func:`safe` (an AF_UNIX peer is a path, a PROXY header
    may carry anything)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = safe(peer[0])
        if ':' in host:
            host = '[%s]' % host
        return '%s:%s' % (host, safe(peer[1]))
    return safe(peer)


class SessionLogChannelMixin:
    """Channel mixin writing the connection and message lines.

    ``close_reason`` (the shared state's, None by default) is added to the
    disconnect line.  It sits inside the PROXY layer, so both lines name the
    client the header announced.
    """

    layer = LAYERS['session_log']
    capability_name = 'SessionLog'
    _log_opened = None
    _log_reply_pending = None

    def _greet(self):
        # Logged here rather than in __init__ so that a PROXY header (read
        # before the greeting) has already replaced self.peer.
        if self._log_opened is None:
            self._log_opened = time.monotonic()
            self._log_messages = 0
            via = getattr(self, 'proxy_peer', None)
            if via is not None and via != self.peer:
                logger.info('connect from %s via %s', format_peer(self.peer),
                            format_peer(via))
            else:
                logger.info('connect from %s', format_peer(self.peer))
        super()._greet()

    def _process_data(self, data):
        # The next reply pushed is process_message's answer.
        self._log_reply_pending = (len(data), len(self.rcpttos), self.mailfrom)
        try:
            super()._process_data(data)
        finally:
            self._log_reply_pending = None

    def push(self, msg):
        pending = self._log_reply_pending
        if pending is not None:
            self._log_reply_pending = None
            self._log_messages += 1
            # The sender and the reply (which may echo an address) are
            # client text.
            size, recipients, sender = pending
            logger.info("message from %s: id=%s from=<%s> size=%d "
                        "recipients=%d reply='%s'", format_peer(self.peer),
                        os.urandom(6).hex().upper(),
                        safe('' if sender == '<>' else sender or ''),
                        size, recipients, safe(msg))
        super().push(msg)

    def close(self):
        opened = self._log_opened
        if opened is not None:
            self._log_opened = None
            text = 'disconnect from %s: messages=%d duration=%.2fs' % (
                format_peer(self.peer), self._log_messages,
                time.monotonic() - opened)
            if self.close_reason:
                text += ' reason=%s' % safe(self.close_reason)
            logger.info('%s', text)
        super().close()


class SessionLogServerMixin(CapabilityServerMixin):
    """Server mixin adding :class:`SessionLogChannelMixin` to its channels."""

    channel_mixin = SessionLogChannelMixin

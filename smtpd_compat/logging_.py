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

Every field that comes from a client goes through
:func:`smtpd_compat.logfmt.safe` before it reaches a log line (the helpers
live in that leaf module; this one offers them under their old names too).

The module is named ``logging_`` so that it never shadows the stdlib's
``logging``.  Nothing here configures handlers: the application (or
``python -m smtpd_compat --log-level``) does.
"""
import logging
import os
from typing import TYPE_CHECKING, List, Optional, Tuple, Type, Union

import smtpd_compat as _smtpd
from smtpd_compat.compose import CapabilityServerMixin
from smtpd_compat.logfmt import LogEvery, format_peer, log_info, safe
from smtpd_compat.session import LAYERS, SessionStateMixin

if TYPE_CHECKING:
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

__all__ = ['logger', 'SessionLogChannelMixin', 'SessionLogServerMixin',
           'LogEvery',
           'format_peer', 'safe']

logger = logging.getLogger(__name__)

# Message ids (12 hexadecimal digits, 48 random bits each) are made in
# batches: one getrandom() system call for _IDS_PER_BATCH messages
# instead of one per message.
_IDS_PER_BATCH = 64
_ids: List[str] = []


def _message_id() -> str:
    """A new random message id."""
    try:
        return _ids.pop()
    except IndexError:
        raw = os.urandom(6 * _IDS_PER_BATCH).hex().upper()
        _ids.extend([raw[i:i + 12] for i in range(12, len(raw), 12)])
        return raw[:12]


def _forget_ids() -> None:
    # A forked child (the command line's --workers) draws its own ids, not
    # the ones its parent may also hand out.
    del _ids[:]


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_ids)


class SessionLogChannelMixin(_ChannelBase):
    """Channel mixin writing the connection and message lines.

    ``close_reason`` (the shared state's, None by default) is added to the
    disconnect line.  It sits inside the PROXY layer, so both lines name the
    client the header announced.
    """

    layer = LAYERS['session_log']
    capability_name = 'SessionLog'
    _log_opened: Optional[float] = None
    # (size, recipients, sender) of the message whose reply is due.
    _log_reply_pending: Optional[Tuple[int, int, Optional[str]]] = None
    _log_messages = 0
    # The peer whose format_peer() text is in _log_peer_text (the peer may
    # change once, when a PROXY header names the client).
    _log_peer: object = None
    _log_peer_text = ''
    instance_state = ('_log_opened', '_log_reply_pending', '_log_messages',
                      '_log_peer', '_log_peer_text')

    def _greet(self) -> None:
        # Logged here rather than in __init__ so that a PROXY header (read
        # before the greeting) has already replaced self.peer.
        if self._log_opened is None:
            self._log_opened = self.now()
            self._log_messages = 0
            via = self.proxy_peer
            if via is not None and via != self.peer:
                log_info(logger, 'connect from %s via %s', format_peer(self.peer),
                         format_peer(via))
            else:
                log_info(logger, 'connect from %s', format_peer(self.peer))
        super()._greet()

    def _process_data(self, data: Union[bytes, str]) -> None:
        # The next reply pushed is process_message's answer.
        self._log_reply_pending = (len(data), len(self.rcpttos), self.mailfrom)
        try:
            super()._process_data(data)
        finally:
            self._log_reply_pending = None

    def push(self, msg: str) -> None:  # type: ignore[override]
        pending = self._log_reply_pending
        if pending is not None:
            self._log_reply_pending = None
            self._log_messages += 1
            # The sender and the reply (which may echo an address) are
            # client text.
            size, recipients, sender = pending
            # (Its fields are worked out only for a line that is logged.)
            if logger.isEnabledFor(logging.INFO):
                peer = self.peer
                if peer is not self._log_peer or self._log_peer is None:
                    self._log_peer_text = format_peer(peer)
                    self._log_peer = peer
                # (log_info: logger.info, the short way to the command
                # line's handler while nothing else would see the line.)
                log_info(logger, "message from %s: id=%s from=<%s> size=%d "
                         "recipients=%d reply='%s'", self._log_peer_text,
                         _message_id(),
                         safe('' if sender == '<>' else sender or ''),
                         size, recipients, safe(msg))
        super().push(msg)

    def close(self) -> None:
        opened = self._log_opened
        if opened is not None:
            self._log_opened = None
            text = 'disconnect from %s: messages=%d duration=%.2fs' % (
                format_peer(self.peer), self._log_messages,
                self.now() - opened)
            if self.close_reason:
                text += ' reason=%s' % safe(self.close_reason)
            log_info(logger, '%s', text)
        super().close()


class SessionLogServerMixin(CapabilityServerMixin):
    """Server mixin adding :class:`SessionLogChannelMixin` to its channels."""

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = SessionLogChannelMixin

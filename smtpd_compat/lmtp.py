"""LMTP, the Local Mail Transfer Protocol (RFC 2033).

LMTP is SMTP for the last hop into a mail store, with two differences that
matter: the client greets with LHLO (HELO and EHLO are not LMTP commands),
and after the message the server answers once for every recipient it
accepted, so one mailbox being over quota does not fail or duplicate the
others.

:class:`LMTPServer` listens on TCP or, with ``unix_socket=PATH``, on a UNIX
socket.  Its ``process_message`` may return

* None: every recipient gets 250;
* a reply string: every recipient gets that reply;
* a list with one entry (None or a reply) per entry of ``rcpttos``;
* a dict mapping recipient address to None or a reply.  A recipient with
  no entry gets ``451 4.3.0`` rather than a 250 nobody vouched for.

It composes with :mod:`smtpd_compat.extensions` (PIPELINING, CHUNKING,
ENHANCEDSTATUSCODES ...) and :mod:`smtpd_compat.delivery`.  On the
command line, ``-c LMTPServer`` needs ``--maildir`` or ``--mbox`` (it is
then composed with MaildirServer or MboxServer): LMTPServer's own
process_message stores nothing.
"""
from __future__ import annotations

import logging
import os
import stat
from typing import (TYPE_CHECKING, Any, Dict, List, Optional, Sequence,
                    Tuple, Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat.compose import UNSET, CapabilityServerMixin, Unset, setting
from smtpd_compat.message import MessageChannelMixin

if TYPE_CHECKING:
    import socket


__all__ = ['LMTPChannel', 'LMTPServer']

log = logging.getLogger(__name__)

_NO_RESULT = '451 4.3.0 Error: no delivery result for this recipient'

# What an LMTP process_message may return: None (250 for everyone), one
# reply for everyone, one entry per rcpttos entry, or address -> reply.
_LMTPStatus = Union[None, str, Sequence[Optional[str]],
                   Dict[str, Optional[str]]]


class LMTPChannel(MessageChannelMixin, _smtpd.SMTPChannel):
    """An SMTPChannel speaking LMTP."""

    #: For the Received: line of the delivering servers (RFC 3848).
    transmission_type = 'LMTP'

    def smtp_HELO(self, arg: str) -> None:
        # RFC 2033 section 4.1: LHLO replaces HELO and EHLO.
        self.push('500 Error: command "HELO" not recognized')

    def smtp_EHLO(self, arg: str) -> None:
        self.push('500 Error: command "EHLO" not recognized')

    def smtp_LHLO(self, arg: str) -> None:
        if not arg:
            self.push('501 Syntax: LHLO hostname')
            return
        # Same reply and state as EHLO (RFC 2033 section 4.1).
        super().smtp_EHLO(arg)

    def smtp_HELP(self, arg: str) -> None:
        if arg:
            super().smtp_HELP(arg)
        else:
            self.push('250 Supported commands: LHLO MAIL RCPT DATA '
                      'RSET NOOP QUIT VRFY')

    def _reply_to_message(self, status: _LMTPStatus,
                          rcpttos: List[str]) -> None:
        # RFC 2033 section 4.2: one reply per accepted RCPT, in RCPT order.
        for reply in _per_recipient(status, rcpttos):
            try:
                self.push(reply)
            except UnicodeEncodeError as err:
                # Every recipient gets its reply, non-ASCII escaped
                # (deviation (b) would answer only the first).
                if not self._answer_escaped(err):
                    raise


def _per_recipient(status: _LMTPStatus, rcpttos: List[str]) -> List[str]:
    """Expand process_message's result into one reply per recipient."""
    if status is None or isinstance(status, str):
        return [status or '250 <%s> OK' % r for r in rcpttos]
    if isinstance(status, dict):
        return [status[r] or '250 <%s> OK' % r if r in status else _NO_RESULT
                for r in rcpttos]
    results = list(status)
    if len(results) != len(rcpttos):
        # A programming error in process_message: claim nothing.
        log.error('process_message returned %d results for %d recipients',
                  len(results), len(rcpttos))
        return [_NO_RESULT] * len(rcpttos)
    return [result or '250 <%s> OK' % r for result, r in zip(results, rcpttos)]


# A file system path, as os.fspath() takes it.
_Path = Union[str, 'os.PathLike[str]']


class LMTPServer(CapabilityServerMixin, _smtpd.SMTPServer):
    """An LMTP server; override process_message (see the module docs).

    ``unix_socket``: listen on this filesystem path instead of
    ``localaddr`` (an existing socket file there is replaced; any other
    file is an error).  ``unix_socket_mode``: permissions for it."""

    channel_class = LMTPChannel

    if TYPE_CHECKING:
        # LMTP answers per recipient, so process_message may return more
        # than the one reply SMTPServer's may (a subclass returning a list
        # or dict needs the same ignore: mypy checks it against SMTPServer
        # too).  Not defined at run time: the stdlib's raises
        # NotImplementedError, and the command line looks for an override.
        def process_message(  # type: ignore[override]
                self, peer: _smtpd._Address, mailfrom: str,
                rcpttos: List[str], data: Union[bytes, str],
                **kwargs: Any) -> _LMTPStatus: ...

    def __init__(self, localaddr: _smtpd._Address, remoteaddr: _smtpd._Address,
                 *args: Any,
                 unix_socket: Union[_Path, None, Unset] = UNSET,
                 unix_socket_mode: Union[int, None, Unset] = UNSET,
                 **kwargs: Any) -> None:
        # (Through Any: mypy 1.14 infers the join of the union's members,
        # object; mypy 2 gets it right.)
        given: Optional[_Path] = cast(Any, setting(self, 'unix_socket',
                                                   unix_socket, None))
        unix_socket = self.unix_socket = given
        unix_socket_mode = self.unix_socket_mode = setting(
            self, 'unix_socket_mode', unix_socket_mode, None)
        if unix_socket is None:
            super().__init__(localaddr, remoteaddr, *args, **kwargs)
            return
        path = os.fspath(unix_socket)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)   # left over from an earlier run
        except FileNotFoundError:
            pass
        # SMTPServer binds what getaddrinfo(localaddr) names; a UNIX path
        # is not an address it knows, so give it a harmless placeholder
        # and swap the listening socket afterwards.
        super().__init__(('127.0.0.1', 0), remoteaddr, *args, **kwargs)
        self.del_channel()
        cast('socket.socket', self.socket).close()    # (bound just now)
        self._localaddr = path
        try:
            self.create_socket(_smtpd.socket.AF_UNIX, _smtpd.socket.SOCK_STREAM)
            self.bind(path)
            # For python -m smtpd_compat to hand to nobody (see delivery).
            vars(self).setdefault('created_paths', []).append(path)
            if unix_socket_mode is not None:
                os.chmod(path, unix_socket_mode)
            self.listen(_smtpd._SOMAXCONN)
        except BaseException:
            self.close()
            raise

"""A relay that tells the truth.

:class:`RelayServer` forwards mail to the upstream server named by
``remoteaddr``, mirroring the client's transaction on one upstream SMTP
session (smtplib):

* the client's MAIL opens the upstream session and sends MAIL there; the
  client gets the upstream refusal if there is one;
* each RCPT is sent upstream before it is answered, so a recipient the
  upstream refuses is refused to the client, with the upstream's code and
  text (a 550 stays a 550);
* at the end of DATA (or BDAT LAST) the message goes upstream and the
  client gets the upstream's reply to it;
* a connection failure or time-out at any step answers
  ``451 4.4.1`` so the sender retries.

So a 250 to the client always means the upstream said 250 to the same
thing.  The faithful :class:`smtpd_compat.PureProxy` stays as it was.
Every call to the upstream (connect, EHLO, MAIL, RCPT, DATA, QUIT) runs in
the server's worker threads (:mod:`smtpd_compat.threads`), bounded by
``relay_timeout`` seconds each: the client's session waits for it, the
other sessions do not.

The message goes upstream with a ``Received:`` line of ours on top (RFC
5321 section 4.4) and with CRLF line ends only: every bare CR and bare LF
becomes CRLF (:func:`crlf_only`), so the message this server saw is the
one every next hop sees, however it treats bare line ends (no "SMTP
smuggling" of a second message through ``<CR>.<CR>`` and the like).
"""
from __future__ import annotations

import logging
import re
import smtplib
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Optional,
                    Tuple, Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat.delivery import (Session, TraceChannelMixin, line_end,
                                   trace_headers)
from smtpd_compat.compose import UNSET, Unset, setting
from smtpd_compat.message import MessageChannelMixin
from smtpd_compat.threads import HandlerTimeout, OffloadServerMixin, server_pool

if TYPE_CHECKING:
    from smtpd_compat.threads import OffloadChannelMixin

__all__ = ['RelayChannel', 'RelayServer', 'UPSTREAM_UNAVAILABLE',
           'CANNOT_FORWARD_ADDRESS', 'crlf_only']

log = logging.getLogger(__name__)

#: The reply when the upstream server cannot be reached or went away.
UPSTREAM_UNAVAILABLE = '451 4.4.1 Error: upstream server unavailable'
CANNOT_FORWARD_ADDRESS = '553 5.6.7 Error: this address cannot be passed upstream'

# Which upstream EHLO keyword a client parameter needs to be passed on.
_FORWARD_IF = {'BODY': '8bitmime', 'SMTPUTF8': 'smtputf8', 'SIZE': 'size',
               'RET': 'dsn', 'ENVID': 'dsn', 'NOTIFY': 'dsn', 'ORCPT': 'dsn'}


def _reply(code: int, msg: object) -> str:
    """An upstream reply as one reply line for our client."""
    if isinstance(msg, bytes):
        msg = msg.decode('utf-8', 'replace')
    text = ' '.join(str(msg).split())
    return '%d %s' % (code, text) if text else str(code)


_LINE_END = re.compile(rb'\r\n|\r|\n')


def crlf_only(data: Union[bytes, str]) -> bytes:
    """``data`` (bytes, or str sent as UTF-8) with every line end -- CRLF,
    bare CR, bare LF -- written as CRLF.

    Why: RFC 5321 section 2.3.8 allows CR and LF in content only as CRLF,
    and servers differ on what a bare one means.  smtplib sends bytes as
    given and dot-stuffs only after LF (RFC 5321 section 4.5.2), so a
    ``<CR>.<CR>`` left in would reach a next hop that takes bare CR as a
    line end as the end of the message, and what follows as a second
    one.  Once every line end is CRLF, smtplib stuffs every line that
    starts with a dot, and ``<CRLF>.<CRLF>`` can only be the real end."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    return _LINE_END.sub(b'\r\n', data)


def _upstream_error(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException) and \
            400 <= exc.smtp_code < 600:
        return _reply(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, ValueError):
        # smtplib refuses to send the address (non-ASCII without SMTPUTF8
        # upstream, or a stray CR/LF): retrying would not help.
        return CANNOT_FORWARD_ADDRESS
    log.warning('upstream failure: %r', exc)
    return UPSTREAM_UNAVAILABLE


def _quit(session: smtplib.SMTP) -> None:
    """End an upstream session (on a worker thread)."""
    try:
        session.quit()
    except (OSError, smtplib.SMTPException):
        session.close()


def _forwarded(session: smtplib.SMTP, options: List[str]) -> List[str]:
    return [o for o in options
            if session.has_extn(_FORWARD_IF.get(o.partition('=')[0], '-'))]


def _open_session(remoteaddr: _smtpd._Address, timeout: float, address: str,
                  mail_options: List[str]
                  ) -> Union[Tuple[smtplib.SMTP, None], Tuple[None, str]]:
    """Connect, EHLO and MAIL upstream (on a worker thread); returns
    (session, None) when MAIL was accepted, else (None, reply)."""
    session = smtplib.SMTP(timeout=timeout)
    try:
        session.connect(*remoteaddr)
        session.ehlo_or_helo_if_needed()
        code, msg = session.mail(address, _forwarded(session, mail_options))
    except (OSError, smtplib.SMTPException, ValueError) as e:
        _quit(session)
        return None, _upstream_error(e)
    if code != 250:
        _quit(session)
        return None, _reply(code, msg)
    return session, None


def _send_rcpt(session: smtplib.SMTP, address: str, rcpt_options: List[str]
               ) -> Tuple[Optional[str], bool]:
    """RCPT upstream (on a worker thread); returns (reply or None, whether
    the session is still usable)."""
    try:
        code, msg = session.rcpt(address, _forwarded(session, rcpt_options))
    except ValueError as e:
        return _upstream_error(e), True   # this address only; session intact
    except (OSError, smtplib.SMTPException) as e:
        return _upstream_error(e), False
    if code not in (250, 251):
        return _reply(code, msg), True
    return None, True


class _Deferred(Exception):
    """Raised from check_mail/rcpt_parameters to leave the command
    unanswered until the upstream has answered: ``fn(*args)`` asks it."""

    def __init__(self, fn: Callable[..., object], args: Tuple[Any, ...]
                 ) -> None:
        super().__init__()
        self.fn, self.args = fn, args


class RelayChannel(TraceChannelMixin, MessageChannelMixin, _smtpd.SMTPChannel):
    """Mirrors the transaction on an upstream session (``_upstream``);
    process_message also gets the ``session`` for the Received: line.

    MAIL and RCPT (states of one command): the first run of smtp_MAIL /
    smtp_RCPT goes through every check down to check_*_parameters, which
    raises _Deferred with the upstream call to make; the call runs in a
    worker thread while the channel waits; with the upstream's verdict
    stored in ``_relay_verdict`` the command runs again from the top and
    check_*_parameters returns the verdict, so the core and the other
    mixins answer exactly as they would have without the wait.
    ``offload`` and ``waiting`` come from OffloadChannelMixin, which
    RelayServer composes in (OffloadServerMixin).
    """

    _upstream: Optional[smtplib.SMTP] = None
    # (reply or None,) for the command being run again; None otherwise.
    _relay_verdict: Optional[Tuple[Optional[str]]] = None
    smtp_server: RelayServer

    def _close_upstream(self) -> None:
        s, self._upstream = self._upstream, None
        if s is not None:
            server_pool(self.smtp_server).submit_detached(_quit, (s,))

    def _set_post_data_state(self) -> None:
        # Every end of a transaction (message done, RSET, new EHLO, 552)
        # ends the upstream one too.
        self._close_upstream()
        super()._set_post_data_state()

    def close(self) -> None:
        # While a worker uses the session it is left to it: _relay_dropped
        # closes it when the work is done.
        if not self.waiting:
            self._close_upstream()
        super().close()

    def smtp_MAIL(self, arg: str) -> None:
        self._relay_command('MAIL', super().smtp_MAIL, arg)

    def smtp_RCPT(self, arg: str) -> None:
        self._relay_command('RCPT', super().smtp_RCPT, arg)

    def _relay_command(self, verb: str, command: Callable[[str], None],
                       arg: str) -> None:
        try:
            command(arg)
        except _Deferred as deferred:
            # offload() is OffloadChannelMixin's, which RelayServer
            # composes in front of this class (OffloadServerMixin).
            # The session RCPT works on (MAIL opens its own).
            used = self._upstream if verb == 'RCPT' else None
            cast('OffloadChannelMixin', self).offload(
                deferred.fn, deferred.args,
                lambda ok, value: self._relay_answered(verb, arg, ok, value),
                lambda ok, value: self._relay_dropped(verb, ok, value, used))

    def _relay_answered(self, verb: str, arg: str, ok: bool, value: Any
                        ) -> None:
        if verb == 'MAIL':
            session, reply = value if ok else (None, _upstream_error(value))
            self._upstream = session
        else:
            reply, usable = value if ok else (_upstream_error(value), False)
            if isinstance(value, HandlerTimeout):
                # The worker still uses the session: it is quit once the
                # worker is done with it (_relay_dropped), not now.
                self._upstream = None
            elif not usable:
                self._close_upstream()
        self._relay_verdict = (reply,)
        try:
            # Run again from the outermost mixin, with the verdict known.
            getattr(self, 'smtp_' + verb)(arg)
        finally:
            self._relay_verdict = None

    def _relay_dropped(self, verb: str, ok: bool, value: Any,
                       used: Optional[smtplib.SMTP]) -> None:
        # The client went away while the upstream worked, or the handler
        # timeout answered for the step: the session is not needed now.
        pool = server_pool(self.smtp_server)
        if verb == 'MAIL' and ok and value[0] is not None:
            pool.submit_detached(_quit, (value[0],))
        if used is not None and used is not self._upstream:
            pool.submit_detached(_quit, (used,))
        if not self.connected:
            self._close_upstream()

    def _hand_over_message(self) -> Callable[[], None]:
        # process_message sends the message on the upstream session (its
        # upstream= keyword, taken just before this): from now on the
        # session is the worker's, and is quit once the worker no longer
        # uses it -- not at the end of the transaction, which comes first
        # when the handler timeout answers (or the client leaves).
        session, self._upstream = self._upstream, None
        pool = server_pool(self.smtp_server)

        def finished() -> None:
            if session is not None:
                pool.submit_detached(_quit, (session,))
        return finished

    def _take_verdict(self) -> Optional[Tuple[Optional[str]]]:
        verdict, self._relay_verdict = self._relay_verdict, None
        return verdict

    def check_mail_parameters(self, params: _smtpd._Params) -> Optional[str]:
        refusal = super().check_mail_parameters(params)
        if refusal or params:
            return refusal    # leftovers: the stdlib's 555, nothing sent
        if 'BODY=BINARYMIME' in self.mail_options:
            return '554 5.6.1 Error: cannot relay BINARYMIME content'
        verdict = self._take_verdict()
        if verdict is not None:
            return verdict[0]
        address = self._command_address('FROM:')[0]
        server = self.smtp_server
        upstream = server._remoteaddr
        assert upstream is not None     # RelayServer's constructor checked it
        self._close_upstream()
        raise _Deferred(_open_session, (tuple(upstream),
                                        server.relay_timeout, address,
                                        list(self.mail_options)))

    def check_rcpt_parameters(self, params: _smtpd._Params) -> Optional[str]:
        refusal = super().check_rcpt_parameters(params)
        if refusal or params:
            return refusal
        verdict = self._take_verdict()
        if verdict is not None:
            return verdict[0]
        if self._upstream is None:
            return UPSTREAM_UNAVAILABLE
        address = self._command_address('TO:')[0]
        raise _Deferred(_send_rcpt, (self._upstream, address,
                                     list(self.rcpt_options)))

    def smtp_DATA(self, arg: str) -> None:
        if self.seen_greeting and self.rcpttos and self._upstream is None:
            # The upstream session was lost after some RCPTs: say so now
            # rather than take a message that cannot go anywhere.
            self.push(UPSTREAM_UNAVAILABLE)
            return
        super().smtp_DATA(arg)

    def _message_kwargs(self) -> Dict[str, Any]:
        kwargs = super()._message_kwargs()
        kwargs['upstream'] = self._upstream
        return kwargs


class RelayServer(OffloadServerMixin, _smtpd.SMTPServer):
    """Relays to ``remoteaddr``; ``relay_timeout`` (keyword-only, seconds)
    bounds each upstream connect and reply."""

    # Every upstream step runs in the worker pool (OffloadServerMixin).
    channel_class = RelayChannel
    relay_timeout: float

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any, relay_timeout: Union[float, Unset] = UNSET,
                 **kwargs: Any) -> None:
        relay_timeout = setting(self, 'relay_timeout', relay_timeout, 30.0)
        if not relay_timeout or relay_timeout <= 0:
            raise ValueError('relay_timeout must be a positive number')
        self.relay_timeout = relay_timeout
        super().__init__(localaddr, remoteaddr, *args, **kwargs)
        if not isinstance(self._remoteaddr, tuple) or len(self._remoteaddr) != 2:
            self.close()
            raise ValueError('RelayServer needs remoteaddr=(host, port)')

    #: Put a Received: line of ours in front of each forwarded message.
    add_trace_headers = True

    def process_message(self, peer: _smtpd._Address, mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        upstream: Optional[smtplib.SMTP] = None,
                        session: Optional[Session] = None,
                        **kwargs: Any) -> Optional[str]:
        """Send the message on ``upstream`` (the session holding this
        transaction's MAIL and RCPTs), with a Received: line in front and
        CRLF line ends only, and return the upstream's reply.  Subclasses
        may change ``data`` and call super().  Runs in a worker thread: it
        may use its arguments, not the channel."""
        if upstream is None:
            return UPSTREAM_UNAVAILABLE
        message = data.encode('utf-8') if isinstance(data, str) else bytes(data)
        if self.add_trace_headers:
            if session is None:
                session = Session('', peer, 'SMTP', _smtpd._server_fqdn(self))
            # A relay is not the final delivery: no Return-Path (RFC 5321
            # section 4.4).
            message = trace_headers(mailfrom, rcpttos, session,
                                    return_path=False,
                                    linesep=line_end(message)) + message
        try:
            code, msg = upstream.data(crlf_only(message))
        except (OSError, smtplib.SMTPException) as e:
            return _upstream_error(e)
        return _reply(code, msg)

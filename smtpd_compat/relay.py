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
Calls to the upstream block the event loop for up to ``relay_timeout``
seconds each.

The message goes upstream with a ``Received:`` line of ours on top (RFC
5321 section 4.4) and with CRLF line ends only: every bare CR and bare LF
becomes CRLF (:func:`crlf_only`), so the message this server saw is the
one every next hop sees, however it treats bare line ends (no "SMTP
smuggling" of a second message through ``<CR>.<CR>`` and the like).
"""
import logging
import re
import smtplib
from typing import Optional

import smtpd_compat as _smtpd
from smtpd_compat._compose import CapabilityServerMixin
from smtpd_compat.delivery import (Session, TraceChannelMixin, line_end,
                                   trace_headers)
from smtpd_compat.message import MessageChannelMixin

__all__ = ['RelayChannel', 'RelayServer', 'UPSTREAM_UNAVAILABLE',
           'CANNOT_FORWARD_ADDRESS', 'crlf_only']

log = logging.getLogger(__name__)

#: The reply when the upstream server cannot be reached or went away.
UPSTREAM_UNAVAILABLE = '451 4.4.1 Error: upstream server unavailable'
CANNOT_FORWARD_ADDRESS = '553 5.6.7 Error: this address cannot be passed upstream'

# Which upstream EHLO keyword a client parameter needs to be passed on.
_FORWARD_IF = {'BODY': '8bitmime', 'SMTPUTF8': 'smtputf8', 'SIZE': 'size',
               'RET': 'dsn', 'ENVID': 'dsn', 'NOTIFY': 'dsn', 'ORCPT': 'dsn'}


def _reply(code: int, msg) -> str:
    """An upstream reply as one reply line for our client."""
    if isinstance(msg, bytes):
        msg = msg.decode('utf-8', 'replace')
    text = ' '.join(str(msg).split())
    return '%d %s' % (code, text) if text else str(code)


_LINE_END = re.compile(rb'\r\n|\r|\n')


def crlf_only(data) -> bytes:
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


def _upstream_error(exc) -> str:
    if isinstance(exc, smtplib.SMTPResponseException) and \
            400 <= exc.smtp_code < 600:
        return _reply(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, ValueError):
        # smtplib refuses to send the address (non-ASCII without SMTPUTF8
        # upstream, or a stray CR/LF): retrying would not help.
        return CANNOT_FORWARD_ADDRESS
    log.warning('upstream failure: %r', exc)
    return UPSTREAM_UNAVAILABLE


class RelayChannel(TraceChannelMixin, MessageChannelMixin, _smtpd.SMTPChannel):
    """Mirrors the transaction on an upstream session (``_upstream``);
    process_message also gets the ``session`` for the Received: line."""

    _upstream = None

    def _forwarded(self, options):
        s = self._upstream
        return [o for o in options
                if s.has_extn(_FORWARD_IF.get(o.partition('=')[0], '-'))]

    def _close_upstream(self):
        s, self._upstream = self._upstream, None
        if s is not None:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                s.close()

    def _set_post_data_state(self):
        # Every end of a transaction (message done, RSET, new EHLO, 552)
        # ends the upstream one too.
        self._close_upstream()
        super()._set_post_data_state()

    def close(self):
        self._close_upstream()
        super().close()

    def check_mail_parameters(self, params):
        refusal = super().check_mail_parameters(params)
        if refusal or params:
            return refusal    # leftovers: the stdlib's 555, nothing sent
        if 'BODY=BINARYMIME' in self.mail_options:
            return '554 5.6.1 Error: cannot relay BINARYMIME content'
        address = self._command_address('FROM:')[0]
        server = self.smtp_server
        self._close_upstream()
        try:
            self._upstream = smtplib.SMTP(timeout=server.relay_timeout)
            host, port = server._remoteaddr
            self._upstream.connect(host, port)
            self._upstream.ehlo_or_helo_if_needed()
            code, msg = self._upstream.mail(
                address, self._forwarded(self.mail_options))
        except (OSError, smtplib.SMTPException, ValueError) as e:
            self._close_upstream()
            return _upstream_error(e)
        if code != 250:
            self._close_upstream()
            return _reply(code, msg)
        return None

    def check_rcpt_parameters(self, params):
        refusal = super().check_rcpt_parameters(params)
        if refusal or params:
            return refusal
        if self._upstream is None:
            return UPSTREAM_UNAVAILABLE
        address = self._command_address('TO:')[0]
        try:
            code, msg = self._upstream.rcpt(
                address, self._forwarded(self.rcpt_options))
        except ValueError as e:
            return _upstream_error(e)   # this address only; session intact
        except (OSError, smtplib.SMTPException) as e:
            self._close_upstream()
            return _upstream_error(e)
        if code not in (250, 251):
            return _reply(code, msg)
        return None

    def smtp_DATA(self, arg):
        if self.seen_greeting and self.rcpttos and self._upstream is None:
            # The upstream session was lost after some RCPTs: say so now
            # rather than take a message that cannot go anywhere.
            self.push(UPSTREAM_UNAVAILABLE)
            return
        super().smtp_DATA(arg)

    def _message_kwargs(self):
        kwargs = super()._message_kwargs()
        kwargs['upstream'] = self._upstream
        return kwargs


class RelayServer(CapabilityServerMixin, _smtpd.SMTPServer):
    """Relays to ``remoteaddr``; ``relay_timeout`` (keyword-only, seconds)
    bounds each upstream connect and reply."""

    channel_class = RelayChannel

    def __init__(self, *args, relay_timeout: float = 30.0, **kwargs):
        if not relay_timeout or relay_timeout <= 0:
            raise ValueError('relay_timeout must be a positive number')
        self.relay_timeout = relay_timeout
        super().__init__(*args, **kwargs)
        if not isinstance(self._remoteaddr, tuple) or len(self._remoteaddr) != 2:
            self.close()
            raise ValueError('RelayServer needs remoteaddr=(host, port)')

    #: Put a Received: line of ours in front of each forwarded message.
    add_trace_headers = True

    def process_message(self, peer, mailfrom, rcpttos, data,
                        upstream: Optional[smtplib.SMTP] = None,
                        session: Optional[Session] = None, **kwargs):
        """Send the message on ``upstream`` (the session holding this
        transaction's MAIL and RCPTs), with a Received: line in front and
        CRLF line ends only, and return the upstream's reply.  Subclasses
        may change ``data`` and call super()."""
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


CLI_OPTIONS = (
    ('relay-timeout=', 'SECONDS',
     'With -c RelayServer: how long to wait for the upstream server (default 30).'),
)


def cli_configure(cli):
    value = cli.given.get('relay-timeout')
    if value is None:
        return
    cli.require_class(RelayServer, 'relay-timeout')
    try:
        timeout = float(value)
    except ValueError:
        timeout = 0
    if not timeout > 0:
        cli.error('--relay-timeout: not a positive number: %s' % value)
    cli.server_kwargs['relay_timeout'] = timeout

# Types of the relaying server (one upstream smtplib session per client).
import logging
import smtplib
from collections.abc import Callable
from typing import Any

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat.delivery import Session, TraceChannelMixin
from smtpd_compat.message import MessageChannelMixin
from smtpd_compat.threads import OffloadServerMixin

__all__ = ["RelayChannel", "RelayServer", "UPSTREAM_UNAVAILABLE", "CANNOT_FORWARD_ADDRESS", "crlf_only"]

log: logging.Logger
UPSTREAM_UNAVAILABLE: str
CANNOT_FORWARD_ADDRESS: str

def _reply(code: int, msg: object) -> str: ...
# ``data`` (str sent as UTF-8) with every line end (CRLF, bare CR, bare
# LF) written as CRLF.
def crlf_only(data: bytes | str) -> bytes: ...
def _upstream_error(exc: BaseException) -> str: ...

# The upstream calls, made on a worker thread.
def _quit(session: smtplib.SMTP) -> None: ...
def _forwarded(session: smtplib.SMTP, options: list[str]) -> list[str]: ...
# (session, None) when MAIL was accepted, else (None, reply).
def _open_session(
    remoteaddr: _smtpd._Address, timeout: float, address: str, mail_options: list[str]
) -> tuple[smtplib.SMTP, None] | tuple[None, str]: ...
# (reply or None, whether the session is still usable).
def _send_rcpt(session: smtplib.SMTP, address: str, rcpt_options: list[str]) -> tuple[str | None, bool]: ...

# Leaves MAIL/RCPT unanswered until the upstream answered fn(*args).
class _Deferred(Exception):
    fn: Callable[..., object]
    args: tuple[Any, ...]
    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None: ...

class RelayChannel(TraceChannelMixin, MessageChannelMixin, _smtpd.SMTPChannel):
    _upstream: smtplib.SMTP | None
    # (reply or None,) while the command runs again; None otherwise.
    _relay_verdict: tuple[str | None] | None
    def smtp_MAIL(self, arg: str) -> None: ...
    def smtp_RCPT(self, arg: str) -> None: ...
    def _relay_command(self, verb: str, command: Callable[[str], None], arg: str) -> None: ...
    def _relay_answered(self, verb: str, arg: str, ok: bool, value: Any) -> None: ...
    def _relay_dropped(self, verb: str, ok: bool, value: Any) -> None: ...
    def _message_dropped(self, ok: bool, value: Any) -> None: ...
    def _take_verdict(self) -> tuple[str | None] | None: ...
    def _close_upstream(self) -> None: ...
    def _set_post_data_state(self) -> None: ...
    def close(self) -> None: ...
    def check_mail_parameters(self, params: _smtpd._Params) -> str | None: ...
    def check_rcpt_parameters(self, params: _smtpd._Params) -> str | None: ...
    def smtp_DATA(self, arg: str) -> None: ...
    def _message_kwargs(self) -> dict[str, Any]: ...

class RelayServer(OffloadServerMixin, _smtpd.SMTPServer):
    relay_timeout: float
    # Put a Received: line in front of each relayed message.
    add_trace_headers: bool
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        relay_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None: ...
    # Sends the message on ``upstream`` (the session the channel opened)
    # and returns the upstream's reply.
    def process_message(
        self,
        peer: _smtpd._Address,
        mailfrom: str,
        rcpttos: list[str],
        data: bytes | str,
        upstream: smtplib.SMTP | None = None,
        session: Session | None = None,
        **kwargs: Any,
    ) -> str | None: ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

# Types of the relaying server (one upstream smtplib session per client).
import logging
import smtplib
from typing import Any

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import CapabilityServerMixin
from smtpd_compat.delivery import Session, TraceChannelMixin
from smtpd_compat.message import MessageChannelMixin

__all__ = ["RelayChannel", "RelayServer", "UPSTREAM_UNAVAILABLE", "CANNOT_FORWARD_ADDRESS", "crlf_only"]

log: logging.Logger
UPSTREAM_UNAVAILABLE: str
CANNOT_FORWARD_ADDRESS: str

def _reply(code: int, msg: object) -> str: ...
# ``data`` (str sent as UTF-8) with every line end (CRLF, bare CR, bare
# LF) written as CRLF.
def crlf_only(data: bytes | str) -> bytes: ...
def _upstream_error(exc: BaseException) -> str: ...

class RelayChannel(TraceChannelMixin, MessageChannelMixin, _smtpd.SMTPChannel):
    _upstream: smtplib.SMTP | None
    def _forwarded(self, options: list[str]) -> list[str]: ...
    def _close_upstream(self) -> None: ...
    def _set_post_data_state(self) -> None: ...
    def close(self) -> None: ...
    def check_mail_parameters(self, params: _smtpd._Params) -> str | None: ...
    def check_rcpt_parameters(self, params: _smtpd._Params) -> str | None: ...
    def smtp_DATA(self, arg: str) -> None: ...
    def _message_kwargs(self) -> dict[str, Any]: ...

class RelayServer(CapabilityServerMixin, _smtpd.SMTPServer):
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

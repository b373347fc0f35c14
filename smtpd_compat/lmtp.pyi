# Types of LMTP (RFC 2033): LHLO, and one reply per recipient.
import logging
import os
from collections.abc import Sequence
from typing import Any
from typing_extensions import TypeAlias

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import CapabilityServerMixin
from smtpd_compat.message import MessageChannelMixin

__all__ = ["LMTPChannel", "LMTPServer"]

# What an LMTP process_message may return: None (250 for everyone), one
# reply for everyone, one entry per rcpttos entry, or address -> reply.
_LMTPStatus: TypeAlias = str | Sequence[str | None] | dict[str, str | None] | None

log: logging.Logger

class LMTPChannel(MessageChannelMixin, _smtpd.SMTPChannel):
    # The RFC 3848 transmission type for trace headers.
    transmission_type: str
    def smtp_HELO(self, arg: str) -> None: ...
    def smtp_EHLO(self, arg: str) -> None: ...
    def smtp_LHLO(self, arg: str) -> None: ...
    def smtp_HELP(self, arg: str) -> None: ...
    def _reply_to_message(self, status: _LMTPStatus, rcpttos: list[str]) -> None: ...

def _per_recipient(status: _LMTPStatus, rcpttos: list[str]) -> list[str]: ...

class LMTPServer(CapabilityServerMixin, _smtpd.SMTPServer):
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        unix_socket: str | os.PathLike[str] | None = None,
        unix_socket_mode: int | None = None,
        **kwargs: Any,
    ) -> None: ...
    # LMTP answers per recipient, so process_message may return more than
    # the one reply SMTPServer's may (a subclass returning a list or dict
    # needs the same ignore: mypy checks it against SMTPServer too).
    def process_message(  # type: ignore[override]
        self, peer: _smtpd._Address, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> _LMTPStatus: ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

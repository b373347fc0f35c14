# Types of PIPELINING, CHUNKING/BDAT (RFC 3030), BINARYMIME, DSN (RFC 3461)
# and ENHANCEDSTATUSCODES (RFC 2034).
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import CapabilityServerMixin, _Unset
from smtpd_compat.message import MessageChannelMixin

__all__ = [
    "EXTENSIONS",
    "ExtensionsMixin",
    "ExtensionsChannelMixin",
    "ESMTPServer",
    "parse_bdat",
    "parse_notify",
    "parse_orcpt",
    "parse_ret",
    "parse_envid",
    "xtext_decode",
    "enhance_reply",
]

EXTENSIONS: tuple[str, ...]

# The sans-IO parsers: a value, or ValueError.
def parse_bdat(arg: str | None) -> tuple[int, bool]: ...
def xtext_decode(text: str) -> str: ...
def parse_notify(value: str) -> tuple[str, ...]: ...
def parse_orcpt(value: str) -> tuple[str, str]: ...
def parse_ret(value: str) -> str: ...
def parse_envid(value: str) -> str: ...
def enhance_reply(line: str, verb: str | None = None) -> str: ...

class ExtensionsChannelMixin(MessageChannelMixin):
    layer: int
    capability_name: str
    # smtp_state while a BDAT chunk is read.
    BDAT: ClassVar[int]
    # The command being answered (upper case; '.' for the end of DATA).
    _verb: str | None
    _chunks: list[bytes]
    _bdat_size: int
    _bdat_refusal: str | None
    _bdat_last: bool
    _bdat_started: bool
    def _enabled(self, name: str) -> bool: ...
    def extra_ehlo_keywords(self) -> list[str]: ...
    def receiving_message(self) -> bool: ...
    def push(self, msg: str) -> None: ...  # type: ignore[override]
    def _set_post_data_state(self) -> None: ...
    def found_terminator(self) -> None: ...
    def collect_incoming_data(self, data: bytes) -> None: ...
    def _take_dsn_params(
        self,
        params: _smtpd._Params,
        options: list[str],
        keyword: str,
        parsers: Iterable[tuple[str, Callable[[str], object]]],
    ) -> str | None: ...
    def check_mail_parameters(self, params: _smtpd._Params) -> str | None: ...
    def check_rcpt_parameters(self, params: _smtpd._Params) -> str | None: ...
    def _binarymime(self) -> bool: ...
    def smtp_DATA(self, arg: str) -> None: ...
    def smtp_BDAT(self, arg: str) -> None: ...
    def _end_chunk(self) -> None: ...
    # 421 and close: BDAT without a usable chunk size (the rest of the input
    # cannot be told apart from the chunk).
    def _close_out_of_step(self) -> None: ...

class ExtensionsMixin(CapabilityServerMixin):
    # The enabled extensions (upper-case names from EXTENSIONS).
    esmtp_extensions: frozenset[str]
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        esmtp_extensions: str | Iterable[str] | _Unset = ...,
        **kwargs: Any,
    ) -> None: ...

class ESMTPServer(ExtensionsMixin, _smtpd.SMTPServer): ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

# Types of the production limits (timeouts, connection/recipient/error limits).
import logging
from collections import Counter
from typing import Any

import smtpd_compat as _smtpd
from smtpd_compat.session import SessionStateMixin
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import CapabilityServerMixin, _Unset
from smtpd_compat.logging_ import SessionLogServerMixin
from smtpd_compat.production import hardening_requested as hardening_requested

__all__ = [
    "LimitsChannelMixin",
    "LimitsServerMixin",
    "LimitedServer",
    "PRODUCTION_DEFAULTS",
    "CLI_OPTIONS",
    "cli_configure",
    "hardening_requested",
]

logger: logging.Logger

# Keyword -> default (None switches a limit off).
PRODUCTION_DEFAULTS: dict[str, float | int | None]

class LimitsChannelMixin(SessionStateMixin):
    # Typed as a subclass of SessionStateMixin (and so of SMTPChannel), which
    # every composed channel is; at run time a plain mixin.
    layer: int
    capability_name: str
    _limits_ip: str | None
    _limits_errors: int
    _limits_junk: int
    _limits_in_process: bool
    def __init__(
        self, server: _smtpd.SMTPServer, conn: Any, addr: Any, *args: Any, **kwargs: Any
    ) -> None: ...
    def _greet(self) -> None: ...
    def _data_deadline(self) -> None: ...
    def collect_incoming_data(self, data: bytes) -> None: ...
    def found_terminator(self) -> None: ...
    def check_rcpt_parameters(self, params: _smtpd._Params) -> str | None: ...
    # True when the command line in received_lines is a junk verb.
    def _is_junk(self) -> bool: ...
    def _process_data(self, data: bytes | str) -> None: ...
    def push(self, msg: str) -> None: ...  # type: ignore[override]
    def close(self) -> None: ...

class LimitsServerMixin(CapabilityServerMixin):
    # Set by __init__ (keyword, else the class attribute, else the default).
    idle_timeout: float | None
    data_timeout: float | None
    min_data_rate: float | None
    max_connections: int | None
    max_connections_per_ip: int | None
    max_recipients: int | None
    max_errors: int | None
    max_line_length: int | None
    max_junk_commands: int | None
    _limits_channels: set[_smtpd.SMTPChannel]
    _limits_per_ip: Counter[str]
    _limits_refused: int
    _limits_refused_logged: float
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        idle_timeout: float | None | _Unset = ...,
        data_timeout: float | None | _Unset = ...,
        min_data_rate: float | None | _Unset = ...,
        max_connections: int | None | _Unset = ...,
        max_connections_per_ip: int | None | _Unset = ...,
        max_recipients: int | None | _Unset = ...,
        max_errors: int | None | _Unset = ...,
        max_line_length: int | None | _Unset = ...,
        max_junk_commands: int | None | _Unset = ...,
        **kwargs: Any,
    ) -> None: ...
    @property
    def connection_count(self) -> int: ...
    def handle_accepted(self, conn: Any, addr: Any) -> None: ...

def _check_limit(name: str, value: object) -> None: ...

class LimitedServer(SessionLogServerMixin, LimitsServerMixin, _smtpd.SMTPServer): ...

# (getopt long option name, metavar, help line) for python -m smtpd_compat.
CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def _configure_logging(cli: CLI, level: str) -> None: ...
def _fit_connections_to_descriptors(kwargs: dict[str, Any], soft: int) -> None: ...
def cli_configure(cli: CLI) -> None: ...

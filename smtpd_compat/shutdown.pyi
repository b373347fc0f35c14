# Types of graceful shutdown (stop accepting, let messages finish, 421).
import logging
from collections.abc import Iterable
from typing import Any
from typing_extensions import TypeAlias

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI

__all__ = ["serve_gracefully", "GracefulShutdown", "DEFAULT_GRACE_PERIOD", "CLI_OPTIONS", "cli_configure"]

_Map: TypeAlias = dict[int, Any]

logger: logging.Logger
DEFAULT_GRACE_PERIOD: float

def _never() -> bool: ...

class GracefulShutdown:
    map: _Map
    grace_period: float
    requested: bool
    def __init__(self, map: _Map | None = None, grace_period: float = ...) -> None: ...
    # Usable as a signal handler: request(signum, frame).
    def request(self, *args: object) -> None: ...
    def run(self) -> None: ...
    def _goodbye(self, channel: _smtpd.SMTPChannel) -> None: ...

def serve_gracefully(map: _Map | None = None, grace_period: float = ..., signals: Iterable[int] = ...) -> None: ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

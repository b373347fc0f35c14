# Types of the pre-fork workers.
import logging
from collections.abc import Callable, Iterable
from typing import NoReturn

from smtpd_compat.__main__ import CLI

__all__ = ["run_workers", "CLI_OPTIONS", "cli_configure"]

logger: logging.Logger

def run_workers(count: int, serve: Callable[[], object], *, signals: Iterable[int] = ...) -> None: ...
def _child(serve: Callable[[], object], handlers: dict[int, object], stopping: Iterable[int] = ()) -> NoReturn: ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

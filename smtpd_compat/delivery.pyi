# Types of the Maildir and mbox delivery servers.
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any
from typing_extensions import TypeAlias

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import CapabilityServerMixin

__all__ = ["MaildirServer", "MboxServer", "mboxrd_quote", "STORE_FAILED"]

log: logging.Logger
STORE_FAILED: str
Message: TypeAlias = bytes | str

def _as_bytes(data: Message) -> bytes: ...
def _write_all(fd: int, data: bytes) -> None: ...
def _fsync_dir(path: str) -> None: ...

class _StoringServer(CapabilityServerMixin, _smtpd.SMTPServer):
    # Stores the message: None (250 OK), or STORE_FAILED on an OSError.
    def process_message(
        self, peer: _smtpd._Address, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> str | None: ...
    def store(self, mailfrom: str, data: bytes) -> None: ...

class MaildirServer(_StoringServer):
    maildir: str
    _host: str
    _deliveries: itertools.count[int]
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        maildir: str | os.PathLike[str],
        **kwargs: Any,
    ) -> None: ...
    def unique_name(self) -> str: ...

def mboxrd_quote(data: bytes) -> bytes: ...

class MboxServer(_StoringServer):
    stale_dotlock_age: float
    mbox: str
    dotlock: bool
    lock_timeout: float
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        mbox: str | os.PathLike[str],
        dotlock: bool = False,
        lock_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None: ...
    def format_entry(self, mailfrom: str | None, data: bytes) -> bytes: ...
    def _wait(self, attempt: Callable[[], bool], what: str) -> None: ...
    # The dot-lock file taken.
    def _take_dotlock(self) -> str: ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

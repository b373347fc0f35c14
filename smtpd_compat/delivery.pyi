# Types of the Maildir and mbox delivery servers.
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from typing_extensions import TypeAlias

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat.threads import OffloadServerMixin
from smtpd_compat.session import SessionStateMixin

__all__ = [
    "MaildirServer",
    "MboxServer",
    "mboxrd_quote",
    "STORE_FAILED",
    "Session",
    "TraceChannelMixin",
    "trace_headers",
    "line_end",
]

log: logging.Logger
STORE_FAILED: str
Message: TypeAlias = bytes | str

def _as_bytes(data: Message) -> bytes: ...
def _write_all(fd: int, data: bytes) -> None: ...
def _fsync_dir(path: str) -> None: ...
def _make_dirs(path: str, mode: int) -> list[str]: ...
def _record_created(server: object, paths: Sequence[str]) -> None: ...

# What the channel knew about the client (the ``session`` keyword of
# process_message on the delivering servers).
class Session(NamedTuple):
    helo: str
    # channel.peer: (address, port) for TCP, anything else for a UNIX socket.
    peer: Any
    # The RFC 3848 transmission type (SMTP, ESMTP, ESMTPSA, LMTP, ...).
    protocol: str
    fqdn: str

class TraceChannelMixin(SessionStateMixin):
    # Typed as a subclass of SessionStateMixin (and so of SMTPChannel), which
    # every composed channel is; at run time a plain mixin.
    layer: int
    capability_name: str
    def trace_session(self) -> Session: ...
    def _message_kwargs(self) -> dict[str, Any]: ...

def _clean(text: object, limit: int) -> str: ...
def _tcp_info(peer: object) -> str | None: ...

# The line end ``data`` uses: b"\r\n" or b"\n".
def line_end(data: bytes) -> bytes: ...

# Return-Path: (unless return_path is false) and Received: (RFC 5321
# section 4.4), as UTF-8 bytes with ``linesep`` line ends.
def trace_headers(
    mailfrom: str | None,
    rcpttos: Sequence[str],
    session: Session | None,
    *,
    return_path: bool = True,
    linesep: bytes = b"\n",
    message_id: str | None = None,
    date: str | None = None,
) -> bytes: ...

class _StoringServer(OffloadServerMixin, _smtpd.SMTPServer):
    # Put Return-Path: and Received: in front of each stored message.
    add_trace_headers: bool
    # Stores the message: None (250 OK), or STORE_FAILED on an OSError.
    def process_message(
        self,
        peer: _smtpd._Address,
        mailfrom: str,
        rcpttos: list[str],
        data: bytes | str,
        session: Session | None = None,
        **kwargs: Any,
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

# Types of the web inbox (Mailpit-compatible API) and its store.
import email.message
import http.server
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any
from typing_extensions import Self, TypeAlias

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import _Unset

__all__ = [
    "Inbox",
    "StoredMessage",
    "WebInboxServerMixin",
    "WebInboxServer",
    "WebServer",
    "parse_address",
    "html_to_text",
    "DEFAULT_ADDRESS",
    "CLI_OPTIONS",
    "cli_configure",
]

Address: TypeAlias = tuple[str, int]

log: logging.Logger
DEFAULT_ADDRESS: Address

class StoredMessage:
    id: str
    raw: bytes
    mailfrom: str
    rcpttos: list[str]
    peer: Any
    received: float
    read: bool
    _summary: dict[str, Any] | None
    def __init__(
        self, raw: bytes, mailfrom: str, rcpttos: list[str], peer: Any = None, received: float | None = None
    ) -> None: ...
    @property
    def size(self) -> int: ...

class _Parsed:
    stored: StoredMessage
    msg: email.message.EmailMessage
    _details: dict[str, Any] | None
    def __init__(self, stored: StoredMessage, max_parse_bytes: int) -> None: ...
    @property
    def details(self) -> dict[str, Any]: ...

class Inbox:
    max_messages: int
    max_bytes: int
    max_parse_bytes: int
    _messages: OrderedDict[str, StoredMessage]
    _bytes: int
    _lock: threading.Lock
    _parsed: OrderedDict[str, Any]
    # Changes on every add, delete and read change.
    version: int
    started: float
    accepted: int
    accepted_bytes: int
    deleted: int
    ignored: int
    def __init__(self, max_messages: int = ..., max_bytes: int = ..., max_parse_bytes: int = ...) -> None: ...
    # The stored message, or None when it alone is over max_bytes.
    def add(
        self, data: bytes | str, mailfrom: str = "", rcpttos: Iterable[str] = (), peer: Any = None
    ) -> StoredMessage | None: ...
    def delete(self, ids: Iterable[str] | None = None) -> int: ...
    def clear(self) -> None: ...
    def set_read(self, ids: Iterable[str] | None, read: bool = True) -> None: ...
    def _resolve(self, id: str) -> str: ...
    def get(self, id: str) -> StoredMessage | None: ...
    def newest_first(self) -> list[StoredMessage]: ...
    def stats(self) -> dict[str, int]: ...
    def search(self, query: str) -> list[StoredMessage]: ...
    def summary(self, message: StoredMessage) -> dict[str, Any]: ...
    def parsed(self, message: StoredMessage) -> _Parsed: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[StoredMessage]: ...

def html_to_text(markup: str) -> str: ...

class WebServer(http.server.ThreadingHTTPServer):
    inbox: Inbox
    loopback_only: bool
    # Where a browser reaches the page.
    url: str
    _thread: threading.Thread | None
    def __init__(self, address: Address, inbox: Inbox) -> None: ...
    def start(self) -> Self: ...
    def stop(self) -> None: ...

def parse_address(text: str | int | tuple[str, int] | None) -> Address: ...

class WebInboxServerMixin(_smtpd.SMTPServer):
    # Typed as a subclass of SMTPServer, which every server it is mixed
    # into is (at run time a plain mixin).
    capability_name: str
    inbox: Inbox
    web_server: WebServer
    web_url: str
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        web: str | int | tuple[str, int] | None | _Unset = ...,
        inbox: Inbox | None = None,
        web_max_messages: int | _Unset = ...,
        web_max_bytes: int | _Unset = ...,
        **kwargs: Any,
    ) -> None: ...
    def close(self) -> None: ...

class WebInboxServer(WebInboxServerMixin, _smtpd.SMTPServer): ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

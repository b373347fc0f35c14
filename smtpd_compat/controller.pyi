# Types of the threaded Controller and message capture (for tests).
import email.message
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar, overload
from typing_extensions import Self, TypeAlias

import asyncore
import smtpd_compat as _smtpd

__all__ = ["Controller", "CapturingServer", "CapturedMessage", "Mailbox", "with_capture"]

_S = TypeVar("_S", bound=type[_smtpd.SMTPServer])
_Map: TypeAlias = dict[int, Any]

log: logging.Logger
_POLL_TIMEOUT: float

# A plain callable that handles messages: called like process_message.
Handler: TypeAlias = Callable[..., str | None]

class CapturedMessage:
    peer: Any
    mailfrom: str
    rcpttos: list[str]
    data: bytes | str
    kwargs: dict[str, Any]
    mail_options: list[str]
    rcpt_options: list[str]
    auth_user: str | None
    _message: email.message.EmailMessage | None
    def __init__(self, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any) -> None: ...
    # Parsed with email.policy.default, on first use.
    @property
    def message(self) -> email.message.EmailMessage: ...
    def __getitem__(self, name: str) -> Any: ...
    def __contains__(self, name: str) -> bool: ...
    # Other attributes come from ``message``.
    def __getattr__(self, name: str) -> Any: ...

class Mailbox:
    _messages: list[CapturedMessage]
    _changed: threading.Condition
    def __init__(self) -> None: ...
    def append(self, message: CapturedMessage) -> None: ...
    def clear(self) -> None: ...
    def wait_for(self, n: int = 1, timeout: float = 5.0) -> list[CapturedMessage]: ...
    @overload
    def __getitem__(self, index: int) -> CapturedMessage: ...
    @overload
    def __getitem__(self, index: slice) -> list[CapturedMessage]: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[CapturedMessage]: ...
    # Equal to a list (or Mailbox) of the same messages; not hashable.
    def __eq__(self, other: object) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

class CapturingServer(_smtpd.SMTPServer):
    # The reply for every message (None: 250 OK).
    reply: str | None
    messages: Mailbox
    auth_user_kwarg: bool
    def __init__(
        self, localaddr: _smtpd._Address, remoteaddr: _smtpd._Address, *args: Any, reply: str | None = None, **kwargs: Any
    ) -> None: ...

def with_capture(server_class: _S) -> _S: ...

class _HandlerServer(_smtpd.SMTPServer):
    handler: Handler
    def __init__(
        self, localaddr: _smtpd._Address, remoteaddr: _smtpd._Address, *args: Any, handler: Handler, **kwargs: Any
    ) -> None: ...

class _Waker(asyncore.dispatcher):
    _woken: threading.Event
    _stopping: threading.Event
    def __init__(self, sock: socket.socket, map: _Map, woken: threading.Event, stopping: threading.Event) -> None: ...

def _default_loop() -> Callable[..., None]: ...
def _connectable(host: str) -> str: ...

class Controller:
    server_class: type[_smtpd.SMTPServer]
    server_kwargs: dict[str, Any]
    remoteaddr: Any
    ready_timeout: float
    _bind: tuple[str, int]
    # The running (or last) server; None before start().
    server: Any
    hostname: str
    port: int
    _thread: threading.Thread | None
    _wake_end: socket.socket | None
    _stopping: threading.Event
    _error: BaseException | None
    _lock: threading.Lock
    def __init__(
        self,
        handler: type[_smtpd.SMTPServer] | Handler | None = None,
        hostname: str = "127.0.0.1",
        port: int = 0,
        *,
        remoteaddr: Any = None,
        ready_timeout: float = 5.0,
        **server_kwargs: Any,
    ) -> None: ...
    def start(self) -> Self: ...
    def _make_server(self, map: _Map) -> _smtpd.SMTPServer: ...
    def _serve(self, loop: Callable[..., object], map: _Map, woken: threading.Event) -> None: ...
    def _wake(self) -> None: ...
    def stop(self) -> None: ...
    def _stop_locked(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...
    @property
    def host(self) -> str: ...
    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def messages(self) -> Mailbox: ...
    # The web inbox's URL (servers with WebInboxServerMixin only; else
    # AttributeError).
    @property
    def web_url(self) -> str: ...
    def clear(self) -> None: ...
    def wait_for(self, n: int = 1, timeout: float = 5.0) -> list[CapturedMessage]: ...

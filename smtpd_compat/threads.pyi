# Types of the worker-thread pool and offloading (never block the loop).
import logging
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from typing_extensions import TypeAlias

import asyncore
import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import CapabilityServerMixin, _Unset
from smtpd_compat.session import SessionStateMixin

__all__ = [
    "OffloadChannelMixin",
    "OffloadServerMixin",
    "ThreadedServerMixin",
    "WorkerPool",
    "server_pool",
    "release_server_pool",
    "DEFAULT_THREADS",
    "PROCESSING_FAILED",
    "CLI_OPTIONS",
    "cli_configure",
]

_Map: TypeAlias = dict[int, Any]
# Called on the loop thread with (True, result) or (False, the exception).
_Done: TypeAlias = Callable[[bool, Any], object]

logger: logging.Logger
DEFAULT_THREADS: int
WORKER_NICENESS: int
SATURATION_LOG_INTERVAL: float
PROCESSING_FAILED: str
_RERAISED: tuple[type[BaseException], ...]
_pid: int

def _forked() -> None: ...
def _pid_now() -> int: ...

class _Job:
    fn: Callable[..., object] | None
    args: tuple[Any, ...] | None
    done: _Done
    waker: _Waker
    ok: bool
    value: Any
    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...], done: _Done, waker: _Waker) -> None: ...
    def run(self) -> None: ...

class _Waker(asyncore.dispatcher):
    _wsock: socket.socket
    _finished: deque[_Job]
    _lock: threading.Lock
    _closed: bool
    _signalled: bool
    _pid: int
    # Jobs submitted and not yet delivered.
    pending: int
    def __init__(self, map: _Map) -> None: ...
    def post(self, job: _Job) -> None: ...

_wakers: dict[int, _Waker]

def _waker_for(map: _Map) -> _Waker: ...
def _work(jobs: queue.SimpleQueue[Callable[[], object] | None]) -> None: ...
def _stop_workers(jobs: queue.SimpleQueue[Callable[[], object] | None], count: int) -> None: ...

class WorkerPool:
    threads: int
    name: str
    # Jobs submitted and not yet finished.
    in_flight: int
    _jobs: queue.SimpleQueue[Callable[[], object] | None]
    _started: int
    _pid: int
    _saturated_logged: float
    def __init__(self, threads: int = 8, name: str = "smtpd_compat") -> None: ...
    def _put(self, job: Callable[[], object], busy: int) -> None: ...
    # fn(*args) on a worker, then done(ok, value) on the thread serving map.
    def submit(
        self, fn: Callable[..., object], args: Sequence[Any], done: _Done, map: _Map | None = None
    ) -> None: ...
    def submit_detached(self, fn: Callable[..., object], args: Sequence[Any] = ()) -> None: ...
    def shutdown(self) -> None: ...

def server_pool(server: _smtpd.SMTPServer) -> WorkerPool: ...
def release_server_pool(server: _smtpd.SMTPServer) -> None: ...

class OffloadChannelMixin(SessionStateMixin):
    # Typed as a subclass of SessionStateMixin (and so of SMTPChannel), which
    # every composed channel is; at run time a plain mixin.
    layer: int
    capability_name: str
    # fn(*args) in the pool, then then(ok, value) on the loop thread (or
    # dropped(ok, value) if the channel closed meanwhile).
    def offload(
        self,
        fn: Callable[..., object],
        args: Sequence[Any],
        then: Callable[[bool, Any], None],
        dropped: Callable[[bool, Any], None] | None = None,
    ) -> None: ...
    def _offload_suspend_deadline(self) -> None: ...
    def _offload_gone(self) -> bool: ...
    def _offload_done(
        self, then: Callable[[bool, Any], None], dropped: Callable[[bool, Any], None] | None, ok: bool, value: Any
    ) -> None: ...
    def readable(self) -> bool: ...
    def _handle_input(self, data: bytes) -> None: ...
    def _process_data(self, data: bytes | str) -> None: ...
    def _message_done(self, data: bytes | str, ok: bool, value: Any) -> None: ...
    def _message_dropped(self, ok: bool, value: Any) -> None: ...

def _call_process_message(
    process_message: Callable[..., str | None], args: Sequence[Any], kwargs: dict[str, Any]
) -> str | None: ...

class OffloadServerMixin(CapabilityServerMixin):
    # True: process_message runs in the pool.
    offload_process_message: bool

class ThreadedServerMixin(OffloadServerMixin):
    # Threads of this server's pool.
    offload_threads: int
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        process_message_threads: int | _Unset = ...,
        **kwargs: Any,
    ) -> None: ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

"""Never block the loop: blocking work runs in worker threads.

One event loop serves every connection, so anything that waits on it -- a
password hash, an upstream server, fsync or a lock, a user's handler --
freezes every other client.  This module moves such work to a bounded pool
of threads and hands the result back to the loop thread.

How it fits together:

* Each server has one pool (:func:`server_pool`, created on first use) of
  ``server.offload_threads`` threads (default ``DEFAULT_THREADS``).
  Work beyond that queues in submission order; each connection has at most
  one piece of work in flight, so the queue is bounded by the number of
  connections.  A saturated pool is logged (at most every
  :data:`SATURATION_LOG_INTERVAL` seconds).
* Results come back through the socket map's one wake-up
  (:meth:`smtpd_compat.loop.LoopServices.call_soon_threadsafe`): a worker
  hands its result to the loop thread, which runs the continuation.  So it
  works under :func:`smtpd_compat.loop.loop` and under plain
  ``asyncore.loop()``.  Work in flight holds the wake-up in the map; once
  none is, it leaves, so a loop still returns once its map is otherwise
  empty.
* :class:`OffloadChannelMixin` (channel layer 55) gives a channel
  :meth:`~OffloadChannelMixin.offload`.  While the work runs the channel
  is ``waiting``: it reads nothing (``readable()`` is False), input it had
  already read stays unprocessed in ``ac_in_buffer`` (the core's
  ``_input_paused`` hook), and its deadline is suspended, so pipelined
  commands are answered in order and the server's own waiting never counts
  as the client's idleness.  When the result arrives the continuation
  runs, the idle deadline is re-armed and the buffered input is processed.
  If the connection closed meanwhile, the result is dropped and logged.
* A server whose ``offload_process_message`` is true has
  ``process_message`` run in the pool.  The delivery and relay servers set
  it; :class:`ThreadedServerMixin` (``--threads N`` on the command line)
  sets it for a legacy handler.  An exception from a threaded
  process_message is logged with its traceback and answered
  ``451 4.3.0``; the session goes on.

What work running in a thread may touch: its own arguments.  Not the
channel, not the socket map, not the loop (none of them is thread-safe);
shared state of the server only under a lock.  See docs/threads.rst.
"""
from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import sys
import threading
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence,
                    Tuple, Type, Union)

import smtpd_compat as _smtpd
from smtpd_compat import loop as _loop
from smtpd_compat.compose import UNSET, CapabilityServerMixin, Unset, setting
from smtpd_compat.logfmt import LogEvery
from smtpd_compat.session import LAYERS, SessionStateMixin

if TYPE_CHECKING:
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

__all__ = [
    'OffloadChannelMixin', 'OffloadServerMixin', 'ThreadedServerMixin', 'WorkerPool',
    'server_pool', 'release_server_pool', 'DEFAULT_THREADS', 'PROCESSING_FAILED',
]

logger = logging.getLogger('smtpd_compat.threads')

#: Threads per server pool unless ``server.offload_threads`` says otherwise.
DEFAULT_THREADS = 8
#: How much nicer (lower CPU priority) worker threads are than the loop
#: thread, on Linux: when handlers compete for the CPU (password hashes of
#: a brute-force attack), the loop thread still answers everyone at once.
WORKER_NICENESS = 10
#: Seconds between two "pool saturated" log lines.
SATURATION_LOG_INTERVAL = 10.0
#: The reply when a threaded process_message raised (RFC 5321 §4.2.3:
#: "451 Requested action aborted: local error in processing").
PROCESSING_FAILED = '451 4.3.0 Error: local error in processing'

# Errors that must leave the loop, as asyncore lets them.
_RERAISED = _loop._RERAISED

# Called on the loop thread with (True, result) or (False, the exception).
_Done = Callable[[bool, Any], object]
if TYPE_CHECKING:
    _Jobs = queue.SimpleQueue[Optional[Callable[[], object]]]


def _nothing() -> None:
    pass


class _Job:
    """One piece of work: made and finished on the loop thread, run on a
    worker.  ``ok``/``value`` are the outcome: (True, result) or (False,
    the exception)."""

    __slots__ = ('fn', 'args', 'done', 'ok', 'value', 'services')

    def __init__(self, fn: Callable[..., object], args: Tuple[Any, ...],
                 done: _Done, services: _loop.LoopServices) -> None:
        self.fn = fn
        self.args = args
        self.done = done          # called on the loop thread with (ok, value)
        self.services = services
        self.ok = False
        self.value: Any = None

    def run(self) -> None:
        # On a worker thread.
        try:
            self.value = self.fn(*self.args)
            self.ok = True
        except BaseException as e:   # handed to the loop thread, not lost
            self.value = e
        self.fn, self.args = _nothing, ()
        # False when no loop serves the map any more: nobody waits.
        self.services.call_soon_threadsafe(self.finish)

    def finish(self) -> None:
        # On the loop thread.
        self.services.release()
        self.done(self.ok, self.value)


# -- the pool -----------------------------------------------------------------

def _work(jobs: '_Jobs') -> None:
    # A worker thread: run jobs until the None that stops it.
    if sys.platform.startswith('linux') and hasattr(threading, 'get_native_id'):
        # Linux schedules threads as tasks: this thread's own priority
        # (elsewhere the id would name a process).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           min(19, os.getpriority(os.PRIO_PROCESS, 0)
                               + WORKER_NICENESS))
        except OSError:
            pass
    while True:
        job = jobs.get()
        if job is None:
            return
        job()
        job = None


def _stop_workers(jobs: '_Jobs', count: int) -> None:
    for _ in range(count):
        jobs.put(None)


class WorkerPool:
    """A bounded pool of worker threads for one server, started as work
    comes.  Use :func:`server_pool` to get a server's; call from the loop
    thread.  The threads are daemon threads: at interpreter exit, work
    still running is abandoned (its client never got a reply, so it
    retries); graceful shutdown waits for it first."""

    def __init__(self, threads: int = DEFAULT_THREADS, name: str = 'smtpd_compat'):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError('threads must be a positive integer, not %r'
                             % (threads,))
        self.threads = threads
        self.name = name
        self._jobs: '_Jobs' = queue.SimpleQueue()
        self._started = 0
        self._pid = _loop._pid_now()
        #: Jobs submitted and not yet finished.
        self.in_flight = 0
        self._saturated = LogEvery(SATURATION_LOG_INTERVAL)
        # Collected with its server: the threads stop too.
        self._finalizer = weakref.finalize(self, _stop_workers, self._jobs, 0)

    def _put(self, job: Callable[[], object], busy: int) -> None:
        if self._started < min(busy, self.threads):
            self._started += 1
            thread = threading.Thread(target=_work, args=(self._jobs,), daemon=True,
                                      name='%s-worker-%d' % (self.name, self._started))
            thread.start()
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _stop_workers, self._jobs,
                                               self._started)
        self._jobs.put(job)

    def submit(self, fn: Callable[..., object], args: Sequence[Any], done: _Done,
               map: Optional[_loop.SocketMap] = None) -> None:
        """Run ``fn(*args)`` on a worker; then ``done(ok, value)`` runs on
        the thread serving ``map`` (default ``asyncore.socket_map``), with
        (True, the result) or (False, the exception)."""
        services = _loop.services(map)

        def finished(ok: bool, value: Any) -> None:
            self.in_flight -= 1
            done(ok, value)

        job = _Job(fn, tuple(args), finished, services)
        services.hold()
        self.in_flight += 1
        if self.in_flight > self.threads and self._saturated.count():
            logger.warning('worker pool saturated: %d jobs for %d threads '
                           '(the rest wait in order)', self.in_flight,
                           self.threads)
        self._put(job.run, self.in_flight)

    def submit_detached(self, fn: Callable[..., object], args: Sequence[Any] = ()) -> None:
        """Run ``fn(*args)`` on a worker when nobody waits for the result
        (closing an upstream session); an exception is logged."""
        def run() -> None:
            try:
                fn(*args)
            except Exception:
                logger.exception('error in background work %r', fn)
        self._put(run, self.in_flight + 1)

    def shutdown(self) -> None:
        """Stop the threads once the work queued so far is done."""
        self._finalizer()


def server_pool(server: _smtpd.SMTPServer) -> WorkerPool:
    """The worker pool of ``server``, made on first use with
    ``server.offload_threads`` threads (default ``DEFAULT_THREADS``)."""
    pool: Optional[WorkerPool] = server.__dict__.get('_smtpd_compat_pool')
    if pool is None or pool._pid != _loop._pid_now():   # new, or a forked worker
        threads = getattr(server, 'offload_threads', None) or DEFAULT_THREADS
        pool = WorkerPool(threads)
        server.__dict__['_smtpd_compat_pool'] = pool
        if isinstance(server, CapabilityServerMixin):
            # Its threads end once its listening socket is closed.
            server.add_close_callback(functools.partial(release_server_pool,
                                                        server))
    return pool


def release_server_pool(server: _smtpd.SMTPServer) -> None:
    """Let the threads of ``server``'s pool, if it has one, end once the
    work queued so far is done: its listening socket closed.  Sessions
    that outlive the listener (graceful shutdown) and still need a thread
    get a new pool.  Without this, each closed server kept its idle
    threads until the server object itself was collected."""
    pool: Optional[WorkerPool] = server.__dict__.pop('_smtpd_compat_pool', None)
    if pool is not None and pool._pid == _loop._pid_now():
        pool.shutdown()


# -- the channel side ---------------------------------------------------------

# _offload_outcome when no outcome is being answered.
_NO_OUTCOME: Tuple[bool, Any] = (False, None)
_Then = Callable[[bool, Any], None]


class OffloadChannelMixin(_ChannelBase):
    """Channel mixin: run blocking work in the server's pool and wait for it
    without blocking the loop or reading further input.

    Capabilities call :meth:`offload`.  With ``offload_process_message``
    true on the server, the end of a message (DATA or BDAT LAST) runs
    process_message in the pool too.
    """

    layer = LAYERS['threads']
    # Not a capability users name: composed classes keep their names.
    capability_name = ''

    # process_message's outcome while _process_data runs again to answer it.
    _offload_outcome = _NO_OUTCOME

    def offload(self, fn: Callable[..., object], args: Sequence[Any],
                then: _Then, dropped: Optional[_Then] = None) -> None:
        """Run ``fn(*args)`` in the pool, then ``then(ok, value)`` on the
        loop thread: (True, the return value) or (False, the exception).
        Until then the channel is ``waiting``.  If it has closed when the
        result arrives, ``dropped(ok, value)`` runs instead (to release what
        the work opened), and the drop is logged.  One offload at a time."""
        if self.waiting:
            raise RuntimeError('offload() while work is in flight for %r' % (self,))
        pool = server_pool(self.smtp_server)
        self.waiting = True
        self._input_paused = True
        # The server's work never counts as the client's idleness.
        self.set_deadline(None)

        def done(ok: bool, value: Any) -> None:
            self._offload_done(then, dropped, ok, value)
        pool.submit(fn, args, done, self._map)
        _loop.update(self)

    def _offload_gone(self) -> bool:
        fd = self._fileno
        if (not self.connected or fd is None or self._map.get(fd) is not self
                or self.closing):
            return True
        # The channel read nothing while it waited, so a client that reset
        # the connection meanwhile is only known by the socket's pending
        # error.  (A client that merely closed its side may still read the
        # replies to what it pipelined: it is answered as usual.)
        sock = self.socket
        if sock is None:
            return False
        try:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except (OSError, AttributeError, TypeError):
            return False
        if error:
            self.close()
            return True
        return False

    def _offload_done(self, then: _Then, dropped: Optional[_Then], ok: bool,
                      value: Any) -> None:
        # On the loop thread, from the wake-up.
        self.waiting = False
        self._input_paused = False
        if self._offload_gone():
            logger.info('connection from %r closed while its work ran: '
                        'result dropped%s', self.peer,
                        '' if ok else ' (it failed: %r)' % (value,))
            if dropped is not None:
                dropped(ok, value)
            return
        try:
            then(ok, value)
        except _RERAISED:
            raise
        except BaseException:
            # A bug in a continuation: this session cannot go on.
            logger.exception('error handling the result for %r', self.peer)
            self.close()
            return
        if self.waiting or not self.connected:
            return
        self.reset_idle_deadline()
        # Go on with what the client pipelined meanwhile.
        self._handle_input(b'')
        _loop.update(self)

    # -- asyncore / core hooks ------------------------------------------------

    def readable(self) -> bool:
        if self.waiting:
            return False
        return super().readable()

    def _handle_input(self, data: bytes) -> None:
        super()._handle_input(data)
        if self.waiting:
            # Mixins outside this one (limits) re-arm the deadline after
            # each command; while the server works the client is not idle.
            self.set_deadline(None)

    # -- the message path -----------------------------------------------------

    def _process_data(self, data: Union[bytes, str]) -> None:
        # The core's _process_data runs process_message and answers at
        # once; mixins outside this one (session log, limits) wrap it and
        # expect the answer inside.  So the first call starts the work, and
        # when its outcome is there _process_data runs again, from the
        # outside in, and answers with it.
        outcome = self._offload_outcome
        if outcome is _NO_OUTCOME:
            if not getattr(self.smtp_server, 'offload_process_message', False):
                super()._process_data(data)
                return
            self.received_data = data
            args = (self.peer, self.mailfrom, list(self.rcpttos), data)
            self.offload(_call_process_message,
                         (self.smtp_server.process_message, args,
                          self._message_kwargs()),
                         lambda ok, value: self._message_done(data, ok, value),
                         lambda ok, value: self._message_gone(data, ok, value))
            return
        self._offload_outcome = _NO_OUTCOME
        ok, status = outcome
        if not ok:
            logger.error('process_message failed for %r', self.peer,
                         exc_info=status)
            status = PROCESSING_FAILED
        rcpttos = self.rcpttos      # _set_post_data_state() empties it
        self.message_processed(self.peer, self.mailfrom, rcpttos, data, status)
        self._set_post_data_state()
        self._reply_to_message(status, rcpttos)

    def _message_done(self, data: Union[bytes, str], ok: bool, value: Any) -> None:
        self._offload_outcome = (ok, value)
        try:
            self._process_data(data)
        finally:
            self._offload_outcome = _NO_OUTCOME

    def _message_gone(self, data: Union[bytes, str], ok: bool, value: Any) -> None:
        # process_message finished after the client had gone: nobody reads
        # the reply, but the outcome stands (a message it accepted was
        # delivered), with the envelope still as it was.
        self.message_processed(self.peer, self.mailfrom, list(self.rcpttos),
                               data, value if ok else PROCESSING_FAILED)
        self._message_dropped(ok, value)

    def _message_dropped(self, ok: bool, value: Any) -> None:
        """process_message finished for a connection that has closed
        (relay overrides it to close its upstream session)."""


def _call_process_message(process_message: Callable[..., Optional[str]],
                          args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[str]:
    return process_message(*args, **kwargs)


# -- the server side ----------------------------------------------------------

class OffloadServerMixin(CapabilityServerMixin):
    """Server mixin for servers whose own ``process_message`` blocks (the
    delivery and relay servers): it runs in the worker pool.  A subclass
    may set ``offload_process_message = False`` to run it on the loop
    thread again."""

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = OffloadChannelMixin
    offload_process_message = True


class ThreadedServerMixin(OffloadServerMixin):
    """Server mixin: run ``process_message`` in a pool of
    ``process_message_threads`` worker threads (keyword-only; default the
    class attribute ``offload_threads`` if your class sets one, else
    ``DEFAULT_THREADS``), so a slow handler (a database, an HTTP call)
    does not stop the other sessions.

    The handler must then be thread-safe: it may use its arguments freely,
    but shared state (the server's attributes, a database connection) only
    under a lock, and never the channel or the loop.  An exception it
    raises is logged and answered ``451 4.3.0``.
    """

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any, process_message_threads: Union[int, Unset] = UNSET,
                 **kwargs: Any) -> None:
        # As given, else the class attribute of that name, else the class
        # attribute offload_threads (the pool's own setting), else the
        # default.
        process_message_threads = setting(
            self, 'process_message_threads', process_message_threads,
            getattr(type(self), 'offload_threads', DEFAULT_THREADS))
        if (not isinstance(process_message_threads, int)
                or isinstance(process_message_threads, bool)
                or process_message_threads < 1):
            raise ValueError('process_message_threads must be a positive '
                             'integer, not %r' % (process_message_threads,))
        self.offload_threads = process_message_threads
        self.offload_process_message = True
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

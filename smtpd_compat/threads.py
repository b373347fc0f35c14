"""Never block the loop: blocking work runs in worker threads, shared
fairly between client addresses.

One event loop serves every connection, so anything that waits on it -- a
password hash, an upstream server, fsync or a lock, a user's handler --
freezes every other client.  This module moves such work to a bounded pool
of threads and hands the result back to the loop thread.

How it fits together:

* Each server has one pool (:func:`server_pool`, created on first use) of
  ``server.offload_threads`` threads (default ``DEFAULT_THREADS``).
* Fair queueing (the states of a job: parked, queued, running, finished;
  or cancelled): work is queued per client address (:func:`address_key`:
  an IPv6 client counts with its /64, a PROXY-protocol client with the
  address its balancer announced), and a free thread takes the next
  address in turn, round-robin, so one address can delay another's work by
  at most one job per thread however many connections it opens.  An
  address has at most ``server.offload_per_address`` jobs queued or
  running (default: the pool's size); its further work is *parked* -- the
  client waits, its input paused -- until one of them ends.  Work offered
  at a lower priority, 1 or 2 (AUTH checks from an address that has
  failed once, or more often), runs only when no ordinary work waits --
  priority 1 before 2 -- on at most a quarter of the threads.
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
  ``_input_paused`` hook), and its deadline is suspended -- or, with
  ``server.handler_timeout``, armed in the ``'handler'`` phase: work that
  runs past it is answered as failed (``451 4.3.0`` for a message) and
  the session goes on; the thread is left to finish, and its result is
  dropped and logged.  When the result arrives the continuation runs, the
  idle deadline is re-armed and the buffered input is processed.  If the
  connection closed meanwhile, the result is dropped and logged.
* A server whose ``offload_process_message`` is true has
  ``process_message`` run in the pool.  The delivery and relay servers set
  it; :class:`ThreadedServerMixin` (``--threads N`` on the command line)
  sets it for a legacy handler.  An exception from a threaded
  process_message is logged with its traceback and answered
  ``451 4.3.0`` (the session's :data:`~smtpd_compat.session.INTERNAL_ERROR`,
  as on the loop thread); the session goes on.

What work running in a thread may touch: its own arguments.  Not the
channel, not the socket map, not the loop (none of them is thread-safe);
shared state of the server only under a lock.  See docs/threads.rst.
"""
from __future__ import annotations

import collections
import functools
import ipaddress
import logging
import os
import socket
import sys
import threading
import weakref
from typing import (TYPE_CHECKING, Any, Callable, ClassVar, Deque, Dict, Hashable,
                    Optional, Sequence, Tuple, Type, Union)

import smtpd_compat as _smtpd
from smtpd_compat import loop as _loop
from smtpd_compat.compose import UNSET, CapabilityServerMixin, Unset, setting
from smtpd_compat.logfmt import LogEvery, format_peer
from smtpd_compat.session import INTERNAL_ERROR, LAYERS

if TYPE_CHECKING:
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

__all__ = [
    'OffloadChannelMixin', 'OffloadServerMixin', 'PoolServerMixin',
    'ThreadedServerMixin', 'WorkerPool', 'HandlerTimeout', 'address_key',
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
#: The reply when a threaded process_message raised or ran past the
#: handler timeout: the session's :data:`~smtpd_compat.session.INTERNAL_ERROR`
#: (RFC 3463 4.3.0, "other or undefined mail system status"), the same
#: reply as for a process_message that raised on the loop thread.  (Kept
#: under this name for code that imported it.)
PROCESSING_FAILED = INTERNAL_ERROR

# Errors that must leave the loop, as asyncore lets them.
_RERAISED = _loop._RERAISED

# Called on the loop thread with (True, result) or (False, the exception).
_Done = Callable[[bool, Any], object]


class HandlerTimeout(Exception):
    """The outcome of work that ran past the server's ``handler_timeout``:
    what its continuation gets instead of a result (the thread is left to
    finish; what it returns later is dropped)."""


def _nothing() -> None:
    pass


def address_key(peer: object) -> str:
    """The client address that fair queueing and the AUTH throttle count
    by, for a peer (``(host, port, ...)``) or a bare address: an IPv4
    address as it is (an IPv4-mapped IPv6 address as IPv4), an IPv6
    address as its /64 network (one host commonly holds a whole /64),
    anything else (a UNIX socket's peer) as its text."""
    address = peer[0] if isinstance(peer, tuple) and peer else peer
    text = str(address).split('%', 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# -- the pool ------------------------------------------------------------------
#
# The states of a job: PARKED (its address has offload_per_address jobs
# queued or running: it waits on the loop thread's side), QUEUED (in the
# fair queue), RUNNING (a thread runs it), FINISHED (its outcome is on its
# way to the loop thread), CANCELLED (given up before it ran: the handler
# timeout passed while it waited).  The loop thread moves jobs from parked
# to queued and cancels; the threads move them from queued to finished,
# under the queue's lock.

_PARKED, _QUEUED, _RUNNING, _FINISHED, _CANCELLED = range(5)


class _Job:
    """One piece of work: made and finished on the loop thread, run on a
    worker.  ``ok``/``value`` are the outcome: (True, result) or (False,
    the exception)."""

    __slots__ = ('fn', 'args', 'done', 'ok', 'value', 'services', 'key',
                 'priority', 'state', 'abandoned', 'spared', 'counted', 'pool')

    def __init__(self, fn: Callable[..., object], args: Tuple[Any, ...],
                 done: Optional[_Done], services: Optional[_loop.LoopServices],
                 key: Hashable = None, priority: int = 0) -> None:
        self.fn = fn
        self.args = args
        self.done = done          # called on the loop thread with (ok, value)
        self.services = services
        self.key = key
        self.priority = priority    # 0 ordinary; 1, 2 lower and lower
        self.state = _PARKED
        self.abandoned = False    # its continuation ran without it
        self.spared = False       # a spare thread stands in for it
        self.counted = False      # in its address's count
        self.pool: Optional[WorkerPool] = None
        self.ok = False
        self.value: Any = None

    def run(self) -> None:
        # On a worker thread.
        try:
            self.value = self.fn(*self.args)
            self.ok = True
        except BaseException as e:   # handed to the loop thread, not lost
            if self.services is None:   # nobody waits: log it here
                logger.exception('error in background work %r', self.fn)
            self.value = e
        self.fn, self.args = _nothing, ()

    def deliver(self) -> None:
        # On a worker thread, once the job's state says FINISHED.  False
        # when no loop serves the map any more: nobody waits.
        if self.services is not None:
            self.services.call_soon_threadsafe(self.finish)

    def finish(self) -> None:
        # On the loop thread.
        if self.services is not None:
            self.services.release()
        pool = self.pool
        if pool is not None:
            pool._finished(self)
        if self.done is not None:
            self.done(self.ok, self.value)


class _Ring:
    """Jobs waiting per key, and the keys in turn order (round-robin):
    taking a job moves its key to the end of the turn.  Used under the
    queue's lock."""

    __slots__ = ('queues', 'turns')

    def __init__(self) -> None:
        self.queues: Dict[Hashable, Deque[_Job]] = {}
        self.turns: Deque[Hashable] = collections.deque()

    def __bool__(self) -> bool:
        return bool(self.turns)

    def put(self, job: _Job) -> None:
        queue = self.queues.get(job.key)
        if queue is None:
            queue = self.queues[job.key] = collections.deque()
            self.turns.append(job.key)
        queue.append(job)

    def take(self) -> _Job:
        key = self.turns.popleft()
        queue = self.queues[key]
        job = queue.popleft()
        if queue:
            self.turns.append(key)
        else:
            del self.queues[key]
        return job

    def remove(self, job: _Job) -> None:
        queue = self.queues[job.key]
        queue.remove(job)
        if not queue:
            del self.queues[job.key]
            self.turns.remove(job.key)


class _Queue:
    """What a pool's threads share (thread-safe): the jobs waiting, in
    three rings (ordinary work, then priorities 1 and 2), and the count of
    threads.  Kept apart from the pool so that a pool that is collected
    can stop its threads (they hold this, not the pool)."""

    def __init__(self, threads: int, name: str) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.threads = threads
        self.name = name
        # Low-priority work runs on at most this many threads at once, so
        # that a flood of it (password hashes) leaves CPU for the rest.
        self.low_limit = max(1, threads // 4)
        self.rings = (_Ring(), _Ring(), _Ring())
        self.alive = 0          # threads started and not ended
        self.idle = 0           # of them, waiting for work
        self.running_low = 0
        # Threads standing in for ones still running abandoned work (at
        # most ``threads``): work that ran past the handler timeout does
        # not take the pool's capacity from everyone else.
        self.spare = 0
        self.closed = False
        self.serial = 0

    # (All under self.cond.)

    def _next(self) -> Optional[_Job]:
        ordinary = self.rings[0]
        if ordinary:
            job = ordinary.take()
        elif self.running_low < self.low_limit and (self.rings[1] or self.rings[2]):
            job = (self.rings[1] or self.rings[2]).take()
            self.running_low += 1
        else:
            return None
        job.state = _RUNNING
        return job

    def _start_if_needed(self) -> None:
        if self.idle or self.alive >= self.threads + self.spare:
            self.cond.notify()
            return
        self.alive += 1
        self.serial += 1
        thread = threading.Thread(target=_work, args=(self,), daemon=True,
                                  name='%s-worker-%d' % (self.name, self.serial))
        thread.start()

    def put(self, job: _Job) -> None:
        with self.cond:
            job.state = _QUEUED
            self.rings[job.priority].put(job)
            self._start_if_needed()

    def cancel(self, job: _Job) -> bool:
        """Take ``job`` out if it has not started (True); else mark it
        abandoned, and let a spare thread stand in for it."""
        with self.cond:
            if job.state == _QUEUED:
                self.rings[job.priority].remove(job)
                job.state = _CANCELLED
                return True
            if job.state == _RUNNING and self.spare < self.threads:
                job.spared = True
                self.spare += 1
                if self.rings[0] or self.rings[1]:
                    self._start_if_needed()
            return False

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _work(queue: _Queue) -> None:
    # A worker thread: run jobs until the queue is closed and empty, or
    # this thread is one more than the pool needs now.
    if sys.platform.startswith('linux') and hasattr(threading, 'get_native_id'):
        # Linux schedules threads as tasks: this thread's own priority
        # (elsewhere the id would name a process).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           min(19, os.getpriority(os.PRIO_PROCESS, 0)
                               + WORKER_NICENESS))
        except OSError:
            pass
    cond = queue.cond
    while True:
        with cond:
            job: Optional[_Job] = None
            while job is None:
                if queue.alive > queue.threads + queue.spare:
                    break       # a spare thread no longer needed
                job = queue._next()
                if job is None:
                    if queue.closed:
                        break
                    queue.idle += 1
                    cond.wait()
                    queue.idle -= 1
            if job is None:
                queue.alive -= 1
                return
        job.run()
        with cond:
            # FINISHED before the outcome leaves: cancel() no longer
            # counts it as running.
            job.state = _FINISHED
            if job.priority:
                queue.running_low -= 1
            if job.spared:
                queue.spare -= 1
            if queue.rings[1] or queue.rings[2]:
                cond.notify()     # a low-priority job may run now
        job.deliver()


class WorkerPool:
    """A bounded pool of worker threads for one server, started as work
    comes, shared fairly between the keys work is submitted under (client
    addresses, see the module docstring).  Use :func:`server_pool` to get
    a server's; call from the loop thread.  The threads are daemon
    threads: at interpreter exit, work still running is abandoned (its
    client never got a reply, so it retries); graceful shutdown waits for
    it first."""

    def __init__(self, threads: int = DEFAULT_THREADS, name: str = 'smtpd_compat',
                 per_key: Optional[int] = None) -> None:
        for what, value in (('threads', threads), ('per_key', per_key)):
            if value is None and what == 'per_key':
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError('%s must be a positive integer, not %r'
                                 % (what, value))
        self.threads = threads
        self.name = name
        #: Jobs a key may have queued or running; the rest are parked.
        self.per_key = per_key or threads
        self._queue = _Queue(threads, name)
        self._pid = _loop._pid_now()
        #: Jobs submitted and not yet finished.
        self.in_flight = 0
        # key -> its jobs queued or running; key -> its parked jobs.
        self._counts: Dict[Hashable, int] = {}
        self._parked: Dict[Hashable, Deque[_Job]] = {}
        self._saturated = LogEvery(SATURATION_LOG_INTERVAL)
        # Collected with its server: the threads stop too.
        self._finalizer = weakref.finalize(self, self._queue.close)

    def submit(self, fn: Callable[..., object], args: Sequence[Any], done: _Done,
               map: Optional[_loop.SocketMap] = None, *, key: Hashable = None,
               priority: int = 0) -> _Job:
        """Run ``fn(*args)`` on a worker; then ``done(ok, value)`` runs on
        the thread serving ``map`` (default ``asyncore.socket_map``), with
        (True, the result) or (False, the exception).  ``key`` (a client
        address, :func:`address_key`) is what the pool is fair between;
        ``priority`` 1 or 2 offers it at a lower priority (run only when
        no ordinary work waits; 1 before 2).  Returns a handle for
        :meth:`abandon`."""
        services = _loop.services(map)
        if priority not in (0, 1, 2):
            raise ValueError('priority must be 0, 1 or 2, not %r' % (priority,))
        job = _Job(fn, tuple(args), done, services, key, priority)
        job.pool = self
        services.hold()
        self.in_flight += 1
        if self.in_flight > self.threads and self._saturated.count():
            logger.warning('worker pool saturated: %d jobs for %d threads '
                           '(the rest wait, in turn by client address)',
                           self.in_flight, self.threads)
        if self._counts.get(key, 0) >= self.per_key:
            self._parked.setdefault(key, collections.deque()).append(job)
        else:
            self._enqueue(job)
        return job

    def _enqueue(self, job: _Job) -> None:
        job.counted = True
        self._counts[job.key] = self._counts.get(job.key, 0) + 1
        self._queue.put(job)

    def _finished(self, job: _Job) -> None:
        # On the loop thread, before the job's continuation.
        job.pool = None
        self.in_flight -= 1
        self._uncount(job)

    def _uncount(self, job: _Job) -> None:
        # The job no longer counts against its address's cap: the next of
        # its parked jobs, if any, is queued.
        if not job.counted:
            return
        job.counted = False
        key = job.key
        count = self._counts[key] - 1
        if count:
            self._counts[key] = count
        else:
            del self._counts[key]
        parked = self._parked.get(key)
        if parked:
            self._enqueue(parked.popleft())
            if not parked:
                del self._parked[key]

    def abandon(self, job: _Job) -> None:
        """Nobody waits for ``job`` any more (its continuation ran without
        it: the handler timeout).  Work that has not started never runs:
        its ``done`` runs now, with (False, :class:`HandlerTimeout`).  Work
        that runs is left to finish (a spare thread takes its place
        meanwhile); its ``done`` runs then.  Loop thread only."""
        job.abandoned = True
        if job.state == _PARKED:
            parked = self._parked[job.key]
            parked.remove(job)
            if not parked:
                del self._parked[job.key]
        elif not self._queue.cancel(job):
            # Still running: it no longer holds its address's turn either
            # (the address's next work goes on, on the spare thread).
            self._uncount(job)
            return
        job.state = _CANCELLED
        job.ok, job.value = False, HandlerTimeout('cancelled before it ran')
        job.fn, job.args = _nothing, ()
        job.finish()

    def submit_detached(self, fn: Callable[..., object], args: Sequence[Any] = ()) -> None:
        """Run ``fn(*args)`` on a worker when nobody waits for the result
        (closing an upstream session); an exception is logged."""
        self._queue.put(_Job(fn, tuple(args), None, None))

    def shutdown(self) -> None:
        """Stop the threads once the work queued so far is done."""
        self._finalizer()


def server_pool(server: _smtpd.SMTPServer) -> WorkerPool:
    """The worker pool of ``server``, made on first use with
    ``server.offload_threads`` threads (default ``DEFAULT_THREADS``) and
    at most ``server.offload_per_address`` jobs per client address queued
    or running (default: as many as threads)."""
    pool: Optional[WorkerPool] = server.__dict__.get('_smtpd_compat_pool')
    if pool is None or pool._pid != _loop._pid_now():   # new, or a forked worker
        threads = getattr(server, 'offload_threads', None) or DEFAULT_THREADS
        pool = WorkerPool(threads, per_key=getattr(server, 'offload_per_address', None))
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


class _Work:
    """One offload of a channel: its continuations and its job."""

    __slots__ = ('then', 'dropped', 'finished', 'job', 'until', 'abandoned',
                 'what')

    def __init__(self, then: _Then, dropped: Optional[_Then],
                 finished: Optional[Callable[[], None]], what: str) -> None:
        self.then = then
        self.dropped = dropped
        self.finished = finished
        self.what = what
        self.job: Optional[_Job] = None
        self.until: Optional[float] = None   # the handler deadline
        self.abandoned = False


class OffloadChannelMixin(_ChannelBase):
    """Channel mixin: run blocking work in the server's pool and wait for it
    without blocking the loop or reading further input.

    Capabilities call :meth:`offload`.  With ``offload_process_message``
    true on the server, the end of a message (DATA or BDAT LAST) runs
    process_message in the pool too.  The hooks :meth:`_message_dropped`
    and :meth:`_hand_over_message` are for the layers outside (and the
    channel class inside): each override calls ``super()``.
    """

    layer = LAYERS['threads']
    # Not a capability users name: composed classes keep their names.
    capability_name = ''

    # process_message's outcome while _process_data runs again to answer it.
    _offload_outcome = _NO_OUTCOME
    # The offload the channel waits for, if any.
    _offload_work: Optional[_Work] = None
    # The client's key for fair queueing, and the peer it was made from.
    _offload_key: Optional[str] = None
    _offload_key_peer: Any = None
    instance_state: ClassVar[Tuple[str, ...]] = (
        '_offload_outcome', '_offload_work', '_offload_key',
        '_offload_key_peer')

    def offload(self, fn: Callable[..., object], args: Sequence[Any],
                then: _Then, dropped: Optional[_Then] = None, *,
                finished: Optional[Callable[[], None]] = None,
                priority: int = 0, what: Optional[str] = None,
                delay: float = 0.0) -> _Work:
        """Run ``fn(*args)`` in the pool, then ``then(ok, value)`` on the
        loop thread: (True, the return value) or (False, the exception).
        Until then the channel is ``waiting``.  If it has closed when the
        result arrives, or the work ran past the server's
        ``handler_timeout`` (``then`` got ``(False, HandlerTimeout(...))``
        at that time), ``dropped(ok, value)`` runs instead once the work is
        done (to release what it opened), and the drop is logged.
        ``finished()``, if given, runs once the work no longer runs,
        whatever became of it.  ``priority`` 1 or 2: run it only when no
        ordinary work waits, 1 before 2 (an AUTH check from an address
        that has failed once, or more often).  ``what`` names the work in log lines (default: the
        name of ``fn``).  ``delay``: seconds to wait, with the channel
        waiting, before the work is queued (a timer: only under
        :func:`smtpd_compat.loop.loop`, which runs timers; elsewhere it is
        queued at once).  One offload at a time."""
        if self.waiting:
            raise RuntimeError('offload() while work is in flight for %r' % (self,))
        work = _Work(then, dropped, finished,
                     what or getattr(fn, '__qualname__', None) or repr(fn))
        self.waiting = True
        self._input_paused = True
        self._offload_work = work
        services = self.loop_services
        # (_running: the map is served by smtpd_compat.loop.loop, whose
        # timers fire; under asyncore.loop a timer would never come.)
        if delay > 0 and services._running:
            self.set_deadline(None)
            services.call_later(delay, self._offload_submit, work, fn, args,
                                priority)
        else:
            self._offload_submit(work, fn, args, priority)
        _loop.update(self)
        return work

    def _offload_submit(self, work: _Work, fn: Callable[..., object],
                        args: Sequence[Any], priority: int) -> None:
        if self._offload_work is not work or not self.connected:
            # Closed during the delay: nothing to run.
            if work.finished is not None:
                work.finished()
            return
        timeout = getattr(self.smtp_server, 'handler_timeout', None)
        if timeout is not None:
            work.until = self.now() + timeout
        # The server's work never counts as the client's idleness.
        self._arm_handler_deadline()
        work.job = server_pool(self.smtp_server).submit(
            fn, args, functools.partial(self._offload_done, work), self._map,
            key=self._client_key(), priority=priority)

    def _client_key(self) -> str:
        # The client's address (the PROXY header's behind a balancer),
        # worked out once per peer.
        peer = self.peer
        if self._offload_key is None or self._offload_key_peer is not peer:
            self._offload_key = address_key(peer)
            self._offload_key_peer = peer
        return self._offload_key

    def _arm_handler_deadline(self) -> None:
        # While work runs the deadline is the handler timeout, if any.
        work = self._offload_work
        if work is None or work.until is None:
            self.set_deadline(None)
        elif self.deadline_phase != 'handler':
            self.set_deadline(max(0.0, work.until - self.now()), 'handler')

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

    def _offload_done(self, work: _Work, ok: bool, value: Any) -> None:
        # On the loop thread, from the wake-up (or from abandon(), for work
        # that never started).
        if work.finished is not None:
            work.finished()
        if work.abandoned:
            logger.info('%s for %s finished after the handler timeout: '
                        'result dropped%s', work.what, format_peer(self.peer),
                        '' if ok else ' (it failed: %r)' % (value,))
            if work.dropped is not None:
                work.dropped(ok, value)
            return
        self._offload_work = None
        self.waiting = False
        self._input_paused = False
        if self._offload_gone():
            logger.info('connection from %r closed while its work ran: '
                        'result dropped%s', self.peer,
                        '' if ok else ' (it failed: %r)' % (value,))
            if work.dropped is not None:
                work.dropped(ok, value)
            return
        self._offload_continue(work.then, ok, value)

    def _offload_continue(self, then: _Then, ok: bool, value: Any) -> None:
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

    def handle_timeout(self, phase: Optional[str]) -> None:
        work = self._offload_work
        if phase != 'handler' or work is None or not self.waiting:
            super().handle_timeout(phase)
            return
        # The work runs past the handler timeout: answer as if it failed,
        # and go on; the thread is left to finish (its result is dropped).
        self._offload_work = None
        work.abandoned = True
        self.waiting = False
        self._input_paused = False
        timeout = getattr(self.smtp_server, 'handler_timeout', None)
        logger.warning('%s for %s still running after the handler timeout '
                       '(%s s): answered as failed, its result will be '
                       'dropped', work.what, format_peer(self.peer), timeout)
        if work.job is not None and work.job.pool is not None:
            work.job.pool.abandon(work.job)
        self._offload_continue(work.then, False, HandlerTimeout(
            '%s ran past the handler timeout of %s s' % (work.what, timeout)))

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
            self._arm_handler_deadline()

    # -- the message path -----------------------------------------------------

    def _hand_over_message(self) -> Callable[[], None]:
        """The message about to go to a worker (process_message in the
        pool): returns what to call once the worker no longer holds it,
        whatever became of the work.  Here: nothing to release.  The limits
        layer extends it: the message's memory stays counted until then."""
        inner: Optional[Callable[[], Callable[[], None]]] = getattr(
            super(), '_hand_over_message', None)
        return inner() if inner is not None else _nothing

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
            work: Optional[_Work] = None

            def gone(ok: bool, value: Any) -> None:
                self._message_gone(work, args, ok, value)
            work = self.offload(_call_process_message,
                                (self.smtp_server.process_message, args,
                                 self._message_kwargs()),
                                lambda ok, value: self._message_done(data, ok, value),
                                gone, finished=self._hand_over_message(),
                                what='process_message')
            return
        self._offload_outcome = _NO_OUTCOME
        ok, status = outcome
        if not ok:
            _log_failure(self.peer, len(self.rcpttos), status)
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

    def _message_gone(self, work: Optional[_Work], envelope: Tuple[Any, ...],
                      ok: bool, value: Any) -> None:
        # process_message finished after the client had gone (nobody reads
        # the reply, but the outcome stands: a message it accepted was
        # delivered), or after the handler timeout had it answered as
        # failed (reported then).
        if work is None or not work.abandoned:
            peer, mailfrom, rcpttos, data = envelope
            self.message_processed(peer, mailfrom, rcpttos, data,
                                   value if ok else PROCESSING_FAILED)
        self._message_dropped(ok, value)

    def _message_dropped(self, ok: bool, value: Any) -> None:
        """process_message finished for a connection that has closed, or
        after the handler timeout answered for it.  Layers and the channel
        class extend it, calling ``super()`` (the relay closes its upstream
        session)."""
        inner: Optional[_Then] = getattr(super(), '_message_dropped', None)
        if inner is not None:
            inner(ok, value)


def _log_failure(peer: Any, recipients: int, error: BaseException) -> None:
    if isinstance(error, HandlerTimeout):
        logger.error('process_message for a message from %s (%d '
                     'recipient(s)) %s; answered 451', format_peer(peer),
                     recipients, error)
        return
    logger.error('process_message failed for a message from %s (%d '
                 'recipient(s)); answered 451', format_peer(peer), recipients,
                 exc_info=error)


def _call_process_message(process_message: Callable[..., Optional[str]],
                          args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[str]:
    return process_message(*args, **kwargs)


# -- the server side ----------------------------------------------------------

class PoolServerMixin(CapabilityServerMixin):
    """Server mixin of every server whose channels run work in the worker
    pool (AUTH checks, delivery, relay, ``--threads``): the pool's
    settings.

    ``handler_timeout`` (keyword-only, seconds; default None: no limit)
        work that runs longer is answered as failed -- ``451 4.3.0`` for a
        message, ``454 4.7.0`` for an AUTH check, ``451 4.4.1`` for a
        relay's upstream step -- and the session goes on; the thread is
        left to finish, and what it returns is dropped and logged.  Timed
        by the connection's deadline (so under :func:`smtpd_compat.loop.loop`).

    A class attribute ``offload_per_address`` caps the jobs one client
    address may have queued or running (default: the pool's size).
    """

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = OffloadChannelMixin
    handler_timeout: Optional[float]

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any,
                 handler_timeout: Union[float, None, Unset] = UNSET,
                 **kwargs: Any) -> None:
        handler_timeout = setting(self, 'handler_timeout', handler_timeout, None)
        if handler_timeout is not None and (
                isinstance(handler_timeout, bool)
                or not isinstance(handler_timeout, (int, float))
                or not handler_timeout > 0):
            raise ValueError('handler_timeout must be a positive number of '
                             'seconds or None, not %r' % (handler_timeout,))
        self.handler_timeout = handler_timeout
        super().__init__(localaddr, remoteaddr, *args, **kwargs)


class OffloadServerMixin(PoolServerMixin):
    """Server mixin for servers whose own ``process_message`` blocks (the
    delivery and relay servers): it runs in the worker pool.  A subclass
    may set ``offload_process_message = False`` to run it on the loop
    thread again."""

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

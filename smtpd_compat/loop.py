"""An event loop for asyncore socket maps that scales, and the services of
one socket map: timers, a thread-safe wake-up, signal wake-up and a clock.

``loop(timeout=30.0, use_poll=False, map=None, count=None)`` takes the
arguments of ``asyncore.loop()`` and serves the same socket maps (so the
stdlib-compatible servers need no change), but waits with epoll on Linux
(and with :mod:`selectors`, so kqueue on BSD and macOS, elsewhere) instead
of ``select()``:

* there is no limit of 1024 file descriptors;
* interest is registered with the kernel only when it changes.  After a
  dispatcher's handler (or a timer callback bound to it) runs, its
  ``readable()`` and ``writable()`` are asked again and the registration is
  updated if the answer changed; other dispatchers are not asked.  So the
  Python work per wake-up grows with the number of *active* connections.
  New dispatchers are found at the end of the socket map (dicts keep
  insertion order); dispatchers that close themselves in a handler are
  dropped at once; after timer callbacks, or when the sizes disagree, the
  whole map is compared with the loop's record (in C, ~16 ns a connection).
* an asynchat channel that a handler left with nothing queued but
  ``close_when_done()``'s marker (SMTP's QUIT) gets the write event that
  closes it right after that handler, in the same wake-up, rather than
  after the next wait: its socket has just taken the last reply.

Unlike ``asyncore.loop()``, ``readable()`` and ``writable()`` are not called
on every pass for every dispatcher.  Code that changes what *another*
dispatcher wants (for example pushes to another channel from a handler,
when the push cannot be sent at once) should call :func:`update` on it;
each wake-up that ends by timeout asks every dispatcher again, and so does
each ``loop()`` call (unless the last such round was less than 0.1 s ago:
a program calling ``loop(count=1)`` over and over does not pay for every
connection each time), so a missed change only delays, it never stalls
forever.
``use_poll`` is accepted for signature compatibility and ignored.

The services of a socket map
----------------------------

Everything that runs "later" or "from elsewhere" on a socket map goes
through the one :class:`LoopServices` object of that map,
``services(map)`` (``map=None``: ``asyncore.socket_map``):

timers
    ``call_later(delay, callback, *args)`` and ``call_at(when, ...)`` run
    ``callback(*args)`` from inside :func:`loop` serving the map, in the
    order of their deadlines (ties: in the order they were scheduled), and
    return a :class:`TimerHandle` whose ``cancel()`` withdraws the call
    (cancelling twice, or after it ran, is harmless).  The loop sleeps
    until the next deadline, not longer than ``timeout``.  Callbacks may
    add and close dispatchers and schedule further timers.  An exception
    from a callback is logged on the ``smtpd_compat`` logger and the loop
    goes on (``KeyboardInterrupt``, ``SystemExit`` and ``asyncore.ExitNow``
    still end it).  When a callback is a bound method of a dispatcher, or a
    dispatcher is among its arguments, that dispatcher's interest is asked
    again afterwards.  Timers only run inside :func:`loop` (or when
    :meth:`~LoopServices.run_timers` is called): under plain
    ``asyncore.loop()`` they never fire.  As with ``asyncore.loop()``,
    :func:`loop` returns when the socket map is empty, even if timers are
    pending; they stay scheduled for the next call.
the clock
    ``services.clock`` (default :func:`time.monotonic`) is the time every
    timer, connection deadline, data-rate check and shutdown grace period
    of the map reads.  A test may replace it with a function of its own
    and move time forward without sleeping, then run the timers that are
    due with :meth:`~LoopServices.run_timers` (the loop itself still
    waits in real time).
the wake-up
    one socketpair per map, its read end a dispatcher in the map.  Any
    thread hands work to the loop thread with
    :meth:`~LoopServices.call_soon_threadsafe`; the callback runs on the
    loop thread at its next wake-up, under :func:`loop` and under plain
    ``asyncore.loop()`` alike.  The wake-up is put in the map on demand
    (:meth:`~LoopServices.enable_wakeup`, from the loop thread); while
    something :meth:`~LoopServices.hold`\\ s it (work in flight whose
    result is still to come) it stays, otherwise it leaves the map as soon
    as it is the only dispatcher left, so it never keeps a loop running on
    its own.
signal wake-up
    :meth:`~LoopServices.add_signal_handler` runs a callback on the loop
    thread when a signal arrives, from the loop (never inside the signal
    handler, so it may read files or close connections), at once: the
    signal itself wakes the loop through the wake-up
    (:func:`signal.set_wakeup_fd`), so no polling tick is needed and a
    signal that lands just before the loop goes to sleep is not held up
    until the wait ends.  :meth:`~LoopServices.wake_on_signals` does only
    the waking, for Python-level handlers that act by themselves (one that
    raises ``KeyboardInterrupt``).
stopping
    :meth:`~LoopServices.stop` (from the loop thread, or a signal
    callback) makes :func:`loop` return after the current wake-up.

Neither the loop nor the timers are thread-safe: call everything but
``call_soon_threadsafe`` from the thread that runs the loop.  The module
functions :func:`call_later`, :func:`run_timers` and :func:`update` are
the map's services under their old names.

``raise_fd_limit()`` raises the soft ``RLIMIT_NOFILE`` limit to the hard
one, for servers that hold many thousands of connections.
"""
import collections
import contextlib
import heapq
import logging
import math
import os
import select
import selectors
import signal
import socket
import threading
import time
from types import FrameType
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List,
                    Optional, Set, Tuple, Union)

import smtpd_compat as _smtpd
from smtpd_compat import logfmt as _logfmt

# The core's asyncore (pyasyncore on 3.12+), imported there without the
# DeprecationWarning of 3.10 and 3.11.
_asyncore = _smtpd.asyncore
_Dispatcher = _asyncore.dispatcher

__all__ = ['loop', 'services', 'LoopServices', 'call_later', 'TimerHandle',
           'update', 'run_timers', 'raise_fd_limit']

logger = logging.getLogger(__name__)

#: What asyncore keeps its dispatchers in (``asyncore.socket_map`` is one).
SocketMap = Dict[int, Any]
_Callback = Callable[..., object]
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]

# loop() asks every dispatcher again when called, unless it did so this
# recently (see loop()); every wake-up by timeout asks everyone too.
_ASK_EVERYONE_INTERVAL = 0.1

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
if hasattr(select, 'epoll'):
    # (The pairs epoll gives for reads are the loop's own where EPOLLIN
    # is EVENT_READ, as on Linux; see _EpollSelector.select.)
    _EPOLLIN = select.EPOLLIN if select.EPOLLIN == _READ else None
    # Events other than these (errors, hang-ups) count as both.
    _NOT_EPOLLIN = ~select.EPOLLIN
    _NOT_EPOLLOUT = ~select.EPOLLOUT
# Errors a handler must not swallow; the same set asyncore re-raises
# (legacy code raises asyncore.ExitNow from a handler to leave the loop).
_RERAISED = (KeyboardInterrupt, SystemExit, _asyncore.ExitNow)
# asyncore's own, for the fast path in _poll (taken while it is not
# overridden or patched).
_HANDLE_READ_EVENT = _Dispatcher.handle_read_event

# Which process made a wake-up: a forked worker process
# (smtpd_compat.workers) makes its own instead of sharing its parent's
# socketpair.
_pid_now = _logfmt._process_id
# The session log's lines of a wake-up, written when it ends (see _poll).
_hold_lines, _release_lines = _logfmt.hold_lines, _logfmt.release_lines


class _EpollSelector:
    """The part of a selector the loop uses, on Linux's epoll directly:
    ``select()`` returns ``(fd, mask)`` pairs.  Speed fix: the loop keeps
    its own fd -> mask record, so ``selectors.EpollSelector``'s
    SelectorKey bookkeeping (a key lookup and a tuple per ready socket)
    is work done twice.  Same system calls, same rules: hang-ups and
    errors count as readable and writable, timeouts round up to whole
    milliseconds, an interrupted wait returns nothing, and unregistering
    a descriptor closed meanwhile is not an error."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._registered = 0

    @staticmethod
    def _epoll_mask(mask: int) -> int:
        return ((select.EPOLLIN if mask & _READ else 0)
                | (select.EPOLLOUT if mask & _WRITE else 0))

    def register(self, fd: int, mask: int) -> None:
        self._epoll.register(fd, self._epoll_mask(mask))
        self._registered += 1

    def modify(self, fd: int, mask: int) -> None:
        self._epoll.modify(fd, self._epoll_mask(mask))

    def unregister(self, fd: int) -> None:
        self._registered -= 1
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass    # closed since it was registered: the kernel dropped it

    def closed(self, fd: int) -> None:
        """``fd`` was closed: the kernel dropped its registration (where
        it did not, because a duplicate keeps the socket open, unregister
        could not remove it by a closed number either)."""
        self._registered -= 1

    def select(self, timeout: Optional[float] = None) -> List[Tuple[int, int]]:
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            # Round up, so a wait for a timer that is due in less than a
            # millisecond does not spin.
            timeout = math.ceil(timeout * 1e3) * 1e-3
        registered = self._registered
        try:
            ready = self._epoll.poll(timeout, registered if registered > 1 else 1)
        except InterruptedError:
            return []
        for fd, event in ready:
            if event != _EPOLLIN:
                break
        else:
            # Speed fix: only reads, and EPOLLIN is EVENT_READ: the pairs
            # as epoll gave them, without making new ones.
            return ready
        return [(fd, (_WRITE if event & _NOT_EPOLLIN else 0)
                 | (_READ if event & _NOT_EPOLLOUT else 0))
                for fd, event in ready]

    def close(self) -> None:
        self._epoll.close()


class _KeySelector:
    """The same interface over any :mod:`selectors` selector (kqueue,
    poll, select: where there is no epoll)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def register(self, fd: int, mask: int) -> None:
        self._selector.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._selector.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    # The selector's own record must go either way.
    closed = unregister

    def close(self) -> None:
        self._selector.close()

    def select(self, timeout: Optional[float] = None) -> List[Tuple[int, int]]:
        return [(key.fd, mask) for key, mask in self._selector.select(timeout)]


_Selector: Callable[[], Union[_EpollSelector, _KeySelector]] = (
    _EpollSelector if hasattr(select, 'epoll') else _KeySelector)


class TimerHandle:
    """A scheduled call returned by :meth:`LoopServices.call_later`."""

    __slots__ = ('when', 'callback', 'args', 'cancelled', '_services')

    def __init__(self, when: float, callback: _Callback, args: Tuple[Any, ...],
                 services: 'Optional[LoopServices]') -> None:
        #: When it is due, on its map's clock.
        self.when = when
        self.callback: Optional[_Callback] = callback
        self.args: Optional[Tuple[Any, ...]] = args
        self.cancelled = False
        self._services = services

    def cancel(self) -> None:
        """Withdraw the call; harmless if it already ran or was cancelled."""
        if not self.cancelled:
            self.cancelled = True
            self.callback = self.args = None
            services = self._services
            if services is not None:
                self._services = None
                services._cancelled += 1

    def __repr__(self) -> str:
        status = 'cancelled' if self.cancelled else 'at %.3f' % self.when
        return '<TimerHandle %s>' % status


class _Waker(_Dispatcher):
    """The read end of a map's socketpair, a dispatcher in the map.  Other
    threads queue callbacks and write one byte to the other end (one per
    wake-up, however many callbacks are queued meanwhile); signals write
    theirs through :func:`signal.set_wakeup_fd`.  Leaves the map (and
    closes the pair) once it is the only dispatcher left and nothing holds
    it, so that it never keeps a loop running."""

    def __init__(self, services: 'LoopServices') -> None:
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        self._rsock = rsock
        self._wsock = wsock
        self._services = services
        self._lock = threading.Lock()
        self._closed = False
        self._signalled = False
        self._pid = _pid_now()
        super().__init__(rsock, map=services.map)

    def wake(self) -> None:
        """From any thread: make the loop wake up."""
        with self._lock:
            if self._closed or self._signalled:
                return
            self._signalled = True
            try:
                self._wsock.send(b'\0')
            except OSError:
                pass    # full (a byte is there already) or closed

    def wake_unlocked(self) -> None:
        """The same, safe in a Python-level signal handler (which may
        interrupt this thread while it holds _lock): no lock, and so
        perhaps a byte more, which costs nothing."""
        if not self._closed:
            try:
                self._wsock.send(b'\0')
            except OSError:
                pass

    @property
    def write_fd(self) -> int:
        return self._wsock.fileno()

    def _alone(self) -> bool:
        return self._services._holds <= 0 and len(self._services.map) <= 1

    def readable(self) -> bool:
        # Asked again whenever the loop looks at everyone (and by
        # asyncore.loop on every pass): once nothing but the wake-up is
        # left in the map, leave it, so the loop ends.
        if self._alone():
            self.close()
            return False
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        try:
            self._rsock.recv(4096)
        except OSError:
            pass
        # Reset before running: a callback queued from now on sends a new
        # byte.
        with self._lock:
            self._signalled = False
        self._services._run_ready()
        if self._alone() and self.connected:
            self.close()

    def handle_close(self) -> None:
        self.close()

    def handle_error(self) -> None:
        # asyncore's default prints to stdout.
        logger.exception('error in the wake-up channel of a socket map')
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True     # (wake() sends nothing from now on)
        # Signals stop writing to the socket before it closes: a signal in
        # between had the C handler write to a closed descriptor
        # ("Exception ignored when trying to write to the signal wakeup
        # fd ... Bad file descriptor" on stderr, in a shutdown under a
        # storm of signals).
        self._services._waker_closed(self)
        self._wsock.close()
        super().close()

    def forget(self) -> None:
        """In a forked child: drop this (the parent's) wake-up from the map
        and close the child's copies of its descriptors."""
        with self._lock:
            self._closed = True
            self._wsock.close()
        self.del_channel()
        self._rsock.close()


class LoopServices:
    """The services of one socket map (see the module docstring): timers,
    the clock, the thread-safe wake-up, signal wake-up, and the event
    loop's own record of the map.  Get it with :func:`services`; there is
    exactly one per map while the map is in use."""

    def __init__(self, map: SocketMap) -> None:
        self.map = map
        #: The clock of everything timed on this map (see the module
        #: docstring); any function returning seconds as a float.
        self.clock: Callable[[], float] = time.monotonic
        # -- the loop's record of the map
        self._selector: Optional[Union[_EpollSelector, _KeySelector]] = None
        # fd -> dispatcher, as last seen in the map.
        self._known: Dict[int, _Dispatcher] = {}
        # fd -> registered event mask (absent: not registered).
        self._events: Dict[int, int] = {}
        # Dispatchers whose interest must be asked again.
        self._dirty: Set[Any] = set()
        # When _sync() last asked every dispatcher (time.monotonic(): this
        # is the loop's own bookkeeping, not the map's clock).
        self._asked_everyone = -1e9
        self._stopping = False
        # True while loop() serves the map (it releases this object itself).
        self._running = False
        # -- timers: a heap of (deadline, sequence, handle)
        self._timers: List[Tuple[float, int, TimerHandle]] = []
        self._seq = 0
        self._cancelled = 0
        # -- the wake-up
        self._waker: Optional[_Waker] = None
        self._holds = 0
        self._ready: Deque[Tuple[_Callback, Tuple[Any, ...]]] = collections.deque()
        # -- signals
        self._signal_callbacks: Dict[int, Tuple[_Callback, Tuple[Any, ...]]] = {}
        self._signal_previous: Dict[int, _Handler] = {}
        self._signals: Deque[int] = collections.deque()
        self._signal_wakeups = 0
        # The wake-up fd that was installed before ours, while ours is.
        self._wakeup_previous: Optional[int] = None

    # -- timers ----------------------------------------------------------------

    def call_later(self, delay: float, callback: _Callback, *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` about ``delay`` seconds from now (on
        :attr:`clock`), from :func:`loop` serving this map."""
        return self.call_at(self.clock() + max(delay, 0.0), callback, *args)

    def call_at(self, when: float, callback: _Callback, *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` once :attr:`clock` reads ``when`` or
        later."""
        handle = TimerHandle(when, callback, args, self)
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, handle))
        return handle

    def run_timers(self) -> Optional[float]:
        """Run the timers that are due now; returns the seconds until the
        next one, or None.  For programs that drive the map with their own
        loop, and for tests that move :attr:`clock` forward."""
        self._run_due()
        return self._next_delay()

    def _next_delay(self) -> Optional[float]:
        """Seconds until the next live timer, or None."""
        timers = self._timers
        if self._cancelled > 64 and self._cancelled * 2 > len(timers):
            # Cancelled entries are dropped lazily; when they are most of
            # the heap (idle timers re-armed on every command), rebuild it.
            self._timers = timers = [t for t in timers if not t[2].cancelled]
            heapq.heapify(timers)
            self._cancelled = 0
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
            self._cancelled -= 1
        if not timers:
            return None
        return max(0.0, timers[0][0] - self.clock())

    def _run_due(self) -> bool:
        """Run the callbacks whose deadline has passed; True if any ran."""
        timers = self._timers
        if not timers:
            return False
        now = self.clock()
        # Only timers due now: a callback that schedules call_later(0, ...)
        # runs at the next wake-up, so it cannot starve the sockets.
        due = []
        while timers and timers[0][0] <= now:
            handle = heapq.heappop(timers)[2]
            if handle.cancelled:
                self._cancelled -= 1
            else:
                due.append(handle)
        ran = False
        for handle in due:
            callback, args = handle.callback, handle.args
            if callback is None or args is None:   # cancelled meanwhile
                continue
            handle._services = None
            handle.cancelled = True
            handle.callback = handle.args = None
            ran = True
            self._run(callback, args, 'timer callback')
        return ran

    def _run(self, callback: _Callback, args: Tuple[Any, ...], what: str) -> None:
        """Run one callback on the loop thread, as timers and wake-up
        callbacks run: exceptions logged, the dispatchers it concerns asked
        again afterwards."""
        try:
            callback(*args)
        except _RERAISED:
            raise
        except BaseException:
            logger.exception('Exception in %s %r', what, callback)
        target = getattr(callback, '__self__', None)
        if isinstance(target, _Dispatcher):
            self._dirty.add(target)
        for arg in args:
            if isinstance(arg, _Dispatcher):
                self._dirty.add(arg)

    # -- the wake-up -----------------------------------------------------------

    def enable_wakeup(self) -> None:
        """Put the wake-up in the map if it is not there (call from the
        loop thread, or before the loop runs): from now on
        :meth:`call_soon_threadsafe` wakes the loop.  It leaves the map
        again when it is alone there and not held."""
        waker = self._waker
        if waker is None or waker._pid != _pid_now():
            self._waker = _Waker(self)
            if self._signal_wakeups:
                self._install_wakeup_fd()

    def hold(self) -> None:
        """Keep the wake-up in the map, and so a loop serving the map
        running, until the matching :meth:`release`: for work in flight
        whose result comes back through :meth:`call_soon_threadsafe`.
        Loop thread only."""
        self.enable_wakeup()
        self._holds += 1

    def release(self) -> None:
        """Undo one :meth:`hold`.  Loop thread only."""
        self._holds -= 1
        if self._holds <= 0:
            if self._waker is not None:
                self._dirty.add(self._waker)     # may leave the map now
            else:
                _release(self)

    def call_soon_threadsafe(self, callback: _Callback, *args: Any) -> bool:
        """From any thread: run ``callback(*args)`` on the loop thread at
        its next wake-up, which this causes.  Returns False, and drops the
        call, when the wake-up is not in the map (nothing held it and the
        map emptied: no loop serves it any more)."""
        return self._call_soon(callback, args, _Waker.wake)

    def call_soon_from_signal(self, callback: _Callback, *args: Any) -> bool:
        """From a Python-level signal handler: what
        :meth:`call_soon_threadsafe` does, without its lock (the handler
        runs in the main thread between two bytecodes of whatever runs
        there, which may hold it)."""
        return self._call_soon(callback, args, _Waker.wake_unlocked)

    def _call_soon(self, callback: _Callback, args: Tuple[Any, ...],
                   wake: Callable[['_Waker'], None]) -> bool:
        waker = self._waker
        if waker is None or waker._closed:
            return False
        self._ready.append((callback, args))
        wake(waker)
        return True

    def _run_ready(self) -> None:
        ready = self._ready
        while ready:
            callback, args = ready.popleft()
            self._run(callback, args, 'callback')
        signals = self._signals
        while signals:
            entry = self._signal_callbacks.get(signals.popleft())
            if entry is not None:
                self._run(entry[0], entry[1], 'signal callback')

    def _waker_closed(self, waker: _Waker) -> None:
        if self._waker is waker:
            self._waker = None
            if self._wakeup_previous is not None:
                self._restore_wakeup_fd()
            _release(self)      # under asyncore.loop, nobody else will

    # -- signals ---------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: _Callback, *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread, from the loop, each
        time ``signum`` arrives (a repeated signal may be folded into one
        call); the signal wakes the loop at once.  Replaces the handler
        of ``signum`` until :meth:`remove_signal_handler`.  Main thread
        only (as :func:`signal.signal`), which must be the loop thread."""
        if signum not in self._signal_previous:
            self._signal_previous[signum] = signal.getsignal(signum)
            self._signal_wakeups += 1
        self._signal_callbacks[signum] = (callback, args)
        signal.signal(signum, self._on_signal)
        self.enable_wakeup()
        self._install_wakeup_fd()

    def remove_signal_handler(self, signum: int) -> bool:
        """Put back the handler ``signum`` had before
        :meth:`add_signal_handler`; False if there was none of ours."""
        if signum not in self._signal_callbacks:
            return False
        del self._signal_callbacks[signum]
        signal.signal(signum, self._signal_previous.pop(signum))
        self._signal_wakeups -= 1
        if not self._signal_wakeups:
            self._restore_wakeup_fd()
            _release(self)
        return True

    @contextlib.contextmanager
    def wake_on_signals(self) -> Iterator[None]:
        """While the block runs, every signal that has a Python handler
        wakes the loop at once (:func:`signal.set_wakeup_fd`), so that the
        handler runs then, not when the loop's wait ends.  Main thread
        only."""
        self._signal_wakeups += 1
        try:
            self.enable_wakeup()
            self._install_wakeup_fd()
            yield
        finally:
            self._signal_wakeups -= 1
            if not self._signal_wakeups:
                self._restore_wakeup_fd()
                _release(self)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        # The Python-level handler: it runs in the main thread between two
        # bytecodes of whatever runs there, so it only notes the signal.
        # The C-level handler has already written to the wake-up
        # (set_wakeup_fd); this byte covers the case where that one was
        # read before the note was made.
        self._signals.append(signum)
        waker = self._waker
        if waker is not None:
            waker.wake_unlocked()

    def _install_wakeup_fd(self) -> None:
        waker = self._waker
        if waker is None:
            return
        try:
            previous = signal.set_wakeup_fd(waker.write_fd,
                                            warn_on_full_buffer=False)
        except ValueError:      # not the main thread: signals never come here
            return
        if self._wakeup_previous is None:
            self._wakeup_previous = previous

    def _restore_wakeup_fd(self) -> None:
        previous, self._wakeup_previous = self._wakeup_previous, None
        if previous is None:
            return
        try:
            signal.set_wakeup_fd(previous)
        except ValueError:
            pass

    def _after_fork(self) -> None:
        """In a forked child: the wake-up's socketpair is shared with the
        parent (and siblings), and results of the parent's work in flight
        never come here.  Make a wake-up of the child's own if one is
        needed (signal wake-up)."""
        waker, self._waker = self._waker, None
        self._holds = 0
        self._ready.clear()
        wanted = self._signal_wakeups > 0
        if waker is not None:
            waker.forget()
        if wanted:
            self._waker = _Waker(self)
            self._install_wakeup_fd()

    # -- stopping --------------------------------------------------------------

    def stop(self) -> None:
        """Make :func:`loop` serving this map return after the current
        wake-up (before it waits again; at once if it is waiting and the
        wake-up is in the map).  From any thread, and from a signal
        handler."""
        self._stopping = True
        waker = self._waker
        if waker is not None:
            waker.wake_unlocked()

    def serving(self) -> bool:
        """True while the map holds a dispatcher other than the wake-up."""
        return len(self.map) > (1 if self._waker is not None else 0)

    # -- the loop's record of the map ------------------------------------------

    def update(self, dispatcher: Any) -> None:
        """``dispatcher``'s ``readable()`` or ``writable()`` may have
        changed although none of its own handlers ran: it is asked again
        after the current wake-up."""
        self._dirty.add(dispatcher)

    def _get_selector(self) -> Union[_EpollSelector, _KeySelector]:
        if self._selector is None:
            self._selector = _Selector()
        return self._selector

    def _close(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        self._known.clear()
        self._events.clear()

    def _refresh(self, fd: int, obj: Any, handled: bool = False) -> None:
        """Ask obj what it wants and update its registration.  ``handled``:
        one of its handlers has just run (see _closes_when_written)."""
        mask = 0
        if obj.readable():
            mask = _READ
        # As in asyncore: a listening socket is never polled for writing.
        if obj.writable() and not obj.accepting:
            mask |= _WRITE
        old = self._events.get(fd, 0)
        if mask == old:
            return
        if handled and mask & ~old & _WRITE and _closes_when_written(obj):
            # Speed fix (a connection per message): the write event such a
            # channel waits for only closes it (asynchat sends nothing
            # more), and its socket has just taken the last reply, so the
            # loop gives it that event now instead of registering for it
            # and waiting one more wake-up (two system calls, and a read
            # that fails once the client has hung up).  The same handler,
            # called by the loop as after the next wait.
            _write_event(obj)
            if obj is not self.map.get(fd):
                if obj is self._known.get(fd):
                    self._forget(fd, obj)    # it closed itself
                return
            self._refresh(fd, obj)
            return
        selector = self._get_selector()
        if not mask:
            del self._events[fd]
            selector.unregister(fd)
        elif not old:
            self._events[fd] = mask
            selector.register(fd, mask)
        else:
            self._events[fd] = mask
            selector.modify(fd, mask)

    def _forget(self, fd: int, obj: Any = None) -> None:
        """Drop ``fd`` from the record and the selector; ``obj``: the
        dispatcher that had it, if it may have closed its socket."""
        self._known.pop(fd, None)
        if self._events.pop(fd, None) is not None and self._selector is not None:
            sock = getattr(obj, 'socket', None)
            try:
                if type(sock) is socket.socket and sock.fileno() < 0:
                    # Speed fix: a closed socket (one system call less
                    # per connection, and one that fails).
                    self._selector.closed(fd)
                else:
                    self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def _sync(self, full: bool = True, everyone: bool = False) -> None:
        """Bring the record in line with the map: register new
        dispatchers, drop removed ones, ask the dirty ones (or everyone).

        ``full=False`` is the cheap check after handlers ran: a dispatcher
        added to a dict lands at its end (a reused fd number too, since its
        old entry was deleted first), so new entries are found by walking
        back from the end to the first known one; removals by the handled
        dispatcher itself were seen in _poll().  If the sizes still differ,
        someone else removed a dispatcher: fall back to the full check."""
        map, known = self.map, self._known
        if not full:
            for fd in reversed(map):
                obj = map[fd]
                if known.get(fd) is obj:
                    break
                self._forget(fd)
                known[fd] = obj
                self._refresh(fd, obj)
            full = len(map) != len(known)
        if full and map != known:
            for fd in known.keys() - map.keys():
                self._forget(fd)
            for fd, obj in map.items() - known.items():
                # New, or another dispatcher now owns a reused fd number: the
                # old registration (if any) belongs to a closed socket.
                self._forget(fd)
                known[fd] = obj
                self._refresh(fd, obj)
        if everyone:
            self._asked_everyone = time.monotonic()
            self._dirty.clear()
            for fd, obj in list(map.items()):
                if known.get(fd) is obj:
                    self._refresh(fd, obj)
        elif self._dirty:
            dirty, self._dirty = self._dirty, set()
            for obj in dirty:
                fileno = getattr(obj, '_fileno', None)
                if fileno is not None and known.get(fileno) is obj \
                        and map.get(fileno) is obj:
                    self._refresh(fileno, obj)

    # -- one wake-up -----------------------------------------------------------

    def _poll(self, timeout: Optional[float]) -> None:
        # (Speed: the timer and selector calls only where there is
        # something for them to do.)
        delay = self._next_delay() if self._timers else None
        if delay is not None and (timeout is None or delay < timeout):
            timeout = delay
        selector = self._selector or self._get_selector()
        if self._events:
            ready = selector.select(timeout)
        else:
            # Nothing to wait for but time (epoll would do the same, but
            # kqueue and select insist on at least one descriptor).
            if timeout:
                time.sleep(timeout)
            ready = []
        # The session log's lines of this wake-up are written when it ends
        # (see smtpd_compat.logfmt.hold_lines).
        holder = _hold_lines()
        try:
            map: Dict[int, _Dispatcher] = self.map
            known, events = self._known, self._events
            for fd, mask in ready:
                obj = map.get(fd)
                if obj is None or known.get(fd) is not obj:
                    continue    # closed, or replaced, by an earlier handler
                mask &= events.get(fd, 0)
                if mask & _READ:
                    try:
                        if type(obj).handle_read_event is _HANDLE_READ_EVENT \
                                and obj.connected and not obj.accepting:
                            # Speed fix: what asyncore's own handle_read_event
                            # does for a connected socket, without the call.
                            obj.handle_read()
                        else:
                            obj.handle_read_event()
                    except _RERAISED:
                        raise
                    except BaseException:
                        obj.handle_error()
                if mask & _WRITE and obj is map.get(fd):
                    _write_event(obj)
                if obj is map.get(fd):
                    self._refresh(fd, obj, True)    # (handled: positional is cheaper)
                elif obj is known.get(fd):
                    self._forget(fd, obj)    # it closed itself
            ran = self._run_due() if self._timers else False
            if ready or ran or self._dirty:
                # Timer callbacks may close any dispatcher: full check after
                # them; after handlers only, the cheap one.
                self._sync(ran)     # (full=ran: positional is cheaper)
            else:
                # A wake-up by timeout with nothing to do asks everyone, so that
                # a change made behind the loop's back cannot stall a connection
                # forever.
                self._sync(everyone=True)
        finally:
            _release_lines(holder)

    def _idle(self) -> bool:
        """Nothing left that needs this object: no dispatcher, timer,
        hold or signal handler."""
        return (not self.map and self._next_delay() is None
                and self._holds <= 0 and not self._signal_wakeups)


def _write_event(obj: Any) -> None:
    """A write event for ``obj``, its errors handled as asyncore's loop
    handles them."""
    try:
        obj.handle_write_event()
    except _RERAISED:
        raise
    except BaseException:
        obj.handle_error()


def _closes_when_written(obj: Any) -> bool:
    """True for a connected asynchat channel whose only queued output is
    close_when_done()'s None: its next write event closes it."""
    fifo = getattr(obj, 'producer_fifo', None)
    return (type(fifo) is collections.deque and len(fifo) == 1
            and fifo[0] is None and obj.connected)


# id(map) -> its LoopServices.  The services hold the map itself, so the id
# stays unique while the entry exists; entries of maps that are empty with
# nothing scheduled are dropped when loop() returns.
_services: Dict[int, LoopServices] = {}


def services(map: Optional[SocketMap] = None) -> LoopServices:
    """The :class:`LoopServices` of ``map`` (default
    ``asyncore.socket_map``), made on first use."""
    if map is None:
        map = _asyncore.socket_map
    found = _services.get(id(map))
    if found is None or found.map is not map:
        found = _services[id(map)] = LoopServices(map)
    return found


def _release(found: LoopServices) -> None:
    """Forget the services of a map that is empty with nothing scheduled
    (unless loop() serves it: it does this itself on its way out)."""
    if not found._running and found._idle():
        found._close()
        if _services.get(id(found.map)) is found:
            del _services[id(found.map)]


def _forked() -> None:
    for found in list(_services.values()):
        found._after_fork()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forked)


def loop(timeout: float = 30.0, use_poll: bool = False,
         map: Optional[SocketMap] = None, count: Optional[int] = None) -> None:
    """Serve the socket map ``map`` (default ``asyncore.socket_map``) until
    it is empty, for ``count`` wake-ups, or until
    :meth:`LoopServices.stop`; same arguments as ``asyncore.loop()``.
    ``use_poll`` is ignored."""
    state = services(map)
    map = state.map
    running, state._running = state._running, True
    try:
        # Anything may have changed since the last call: ask everyone
        # again, but at most every _ASK_EVERYONE_INTERVAL seconds.  A
        # program (or test harness) that calls loop(count=1) in its own
        # loop would otherwise pay for every connection on every call:
        # with 2,000 connections that is milliseconds of Python per
        # wake-up, holding the GIL against its other threads.
        if time.monotonic() - state._asked_everyone >= _ASK_EVERYONE_INTERVAL:
            state._sync(everyone=True)
        else:
            state._sync()
        if count is None:
            while map and not state._stopping:
                state._poll(timeout)
        else:
            while map and count > 0 and not state._stopping:
                state._poll(timeout)
                count -= 1
    finally:
        state._stopping = False
        state._running = running
        _release(state)


def call_later(delay: float, callback: _Callback, *args: Any,
               map: Optional[SocketMap] = None) -> TimerHandle:
    """Run ``callback(*args)`` after ``delay`` seconds, from :func:`loop`
    serving ``map`` (default ``asyncore.socket_map``): the map's
    :meth:`LoopServices.call_later`."""
    return services(map).call_later(delay, callback, *args)


def run_timers(map: Optional[SocketMap] = None) -> Optional[float]:
    """Run the due timers of ``map`` now; returns the seconds until the next
    one, or None: the map's :meth:`LoopServices.run_timers`."""
    return services(map).run_timers()


def update(dispatcher: Any, map: Optional[SocketMap] = None) -> None:
    """Tell the loop that ``dispatcher``'s ``readable()`` or ``writable()``
    may have changed although none of its own handlers ran (it is asked
    again after the current wake-up)."""
    if map is None:
        map = getattr(dispatcher, '_map', None)
        if map is None:
            map = _asyncore.socket_map
    found = _services.get(id(map))
    if found is not None and found.map is map:
        found._dirty.add(dispatcher)


def raise_fd_limit(wanted: Optional[int] = None) -> int:
    """Raise the soft limit on open files towards ``wanted`` (default: the
    hard limit); returns the soft limit now in force.  Does nothing where
    the ``resource`` module is missing."""
    try:
        import resource
    except ImportError:
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else wanted
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft == resource.RLIM_INFINITY or (target != resource.RLIM_INFINITY
                                          and soft >= target):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target

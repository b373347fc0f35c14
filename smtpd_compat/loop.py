"""An event loop for asyncore socket maps that scales, plus timers.

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

Timers
------
``call_later(delay, callback, *args, map=None)`` runs ``callback(*args)``
about ``delay`` seconds later, from inside :func:`loop` serving the same
map (``map=None`` means ``asyncore.socket_map``), and returns a
:class:`TimerHandle` whose ``cancel()`` withdraws it (cancelling twice, or
after it ran, is harmless).  The loop sleeps until the next deadline, not
longer than ``timeout``.  Callbacks run in the order of their deadlines
(ties: in the order they were scheduled), may add and close dispatchers and
schedule further timers.  An exception from a callback is logged on the
``smtpd_compat`` logger and the loop goes on (``KeyboardInterrupt`` and
``SystemExit`` still end it).  When a callback is a bound method of a
dispatcher, or a dispatcher is among its arguments, that dispatcher's
interest is asked again afterwards.

Timers only run inside this module's :func:`loop` (or when
:func:`run_timers` is called): under plain ``asyncore.loop()`` they never
fire.  As with ``asyncore.loop()``, :func:`loop` returns when the socket map
is empty, even if timers are pending; they stay scheduled for the next
call.  Neither the loop nor the timers are thread-safe: call them from the
thread that runs the loop.

``raise_fd_limit()`` raises the soft ``RLIMIT_NOFILE`` limit to the hard
one, for servers that hold many thousands of connections.
"""
import heapq
import logging
import math
import select
import selectors
import time

import smtpd_compat as _smtpd

__all__ = ['loop', 'call_later', 'TimerHandle', 'update', 'run_timers',
           'raise_fd_limit']

logger = logging.getLogger(__name__)

# loop() asks every dispatcher again when called, unless it did so this
# recently (see loop()); every wake-up by timeout asks everyone too.
_ASK_EVERYONE_INTERVAL = 0.1

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# Errors a handler must not swallow; the same set asyncore re-raises
# (legacy code raises asyncore.ExitNow from a handler to leave the loop).
_RERAISED = (KeyboardInterrupt, SystemExit, _smtpd.asyncore.ExitNow)


class _EpollSelector:
    """The part of a selector the loop uses, on Linux's epoll directly:
    ``select()`` returns ``(fd, mask)`` pairs.  Speed fix: the loop keeps
    its own fd -> mask record, so ``selectors.EpollSelector``'s
    SelectorKey bookkeeping (a key lookup and a tuple per ready socket)
    is work done twice.  Same system calls, same rules: hang-ups and
    errors count as readable and writable, timeouts round up to whole
    milliseconds, an interrupted wait returns nothing, and unregistering
    a descriptor closed meanwhile is not an error."""

    def __init__(self):
        self._epoll = select.epoll()
        self._registered = 0

    @staticmethod
    def _epoll_mask(mask):
        return ((select.EPOLLIN if mask & _READ else 0)
                | (select.EPOLLOUT if mask & _WRITE else 0))

    def register(self, fd, mask):
        self._epoll.register(fd, self._epoll_mask(mask))
        self._registered += 1

    def modify(self, fd, mask):
        self._epoll.modify(fd, self._epoll_mask(mask))

    def unregister(self, fd):
        self._registered -= 1
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass    # closed since it was registered: the kernel dropped it

    def select(self, timeout=None):
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            # Round up, so a wait for a timer that is due in less than a
            # millisecond does not spin.
            timeout = math.ceil(timeout * 1e3) * 1e-3
        try:
            ready = self._epoll.poll(timeout, max(self._registered, 1))
        except InterruptedError:
            return []
        not_in, not_out = ~select.EPOLLIN, ~select.EPOLLOUT
        return [(fd, (_WRITE if event & not_in else 0)
                 | (_READ if event & not_out else 0))
                for fd, event in ready]

    def close(self):
        self._epoll.close()


class _KeySelector:
    """The same interface over any :mod:`selectors` selector (kqueue,
    poll, select: where there is no epoll)."""

    def __init__(self):
        self._selector = selectors.DefaultSelector()
        self.register = self._selector.register
        self.modify = self._selector.modify
        self.unregister = self._selector.unregister
        self.close = self._selector.close

    def select(self, timeout=None):
        return [(key.fd, mask) for key, mask in self._selector.select(timeout)]


_Selector = _EpollSelector if hasattr(select, 'epoll') else _KeySelector


class TimerHandle:
    """A scheduled call returned by :func:`call_later`."""

    __slots__ = ('when', 'callback', 'args', 'cancelled', '_state')

    def __init__(self, when, callback, args, state):
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._state = state

    def cancel(self) -> None:
        """Withdraw the call; harmless if it already ran or was cancelled."""
        if not self.cancelled:
            self.cancelled = True
            self.callback = self.args = None
            state = self._state
            if state is not None:
                self._state = None
                state.cancelled += 1

    def __repr__(self):
        status = 'cancelled' if self.cancelled else 'at %.3f' % self.when
        return '<TimerHandle %s>' % status


class _MapState:
    """What the loop remembers about one socket map between wake-ups."""

    def __init__(self, map):
        self.map = map
        self.selector = None
        # fd -> dispatcher, as last seen in the map.
        self.known = {}
        # fd -> registered event mask (absent: not registered).
        self.events = {}
        # Heap of (deadline, sequence, handle).
        self.timers = []
        self.seq = 0
        self.cancelled = 0
        # Dispatchers whose interest must be asked again.
        self.dirty = set()
        # When sync() last asked every dispatcher (time.monotonic()).
        self.asked_everyone = -1e9

    def get_selector(self):
        if self.selector is None:
            self.selector = _Selector()
        return self.selector

    def close(self):
        if self.selector is not None:
            self.selector.close()
            self.selector = None
        self.known.clear()
        self.events.clear()

    # -- interest ---------------------------------------------------------

    def refresh(self, fd, obj):
        """Ask obj what it wants and update its registration."""
        mask = 0
        if obj.readable():
            mask = _READ
        # As in asyncore: a listening socket is never polled for writing.
        if obj.writable() and not obj.accepting:
            mask |= _WRITE
        old = self.events.get(fd, 0)
        if mask == old:
            return
        selector = self.get_selector()
        if not mask:
            del self.events[fd]
            selector.unregister(fd)
        elif not old:
            self.events[fd] = mask
            selector.register(fd, mask)
        else:
            self.events[fd] = mask
            selector.modify(fd, mask)

    def forget(self, fd):
        self.known.pop(fd, None)
        if self.events.pop(fd, None) is not None:
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def sync(self, full=True, everyone=False):
        """Bring the record in line with the map: register new
        dispatchers, drop removed ones, ask the dirty ones (or everyone).

        ``full=False`` is the cheap check after handlers ran: a dispatcher
        added to a dict lands at its end (a reused fd number too, since its
        old entry was deleted first), so new entries are found by walking
        back from the end to the first known one; removals by the handled
        dispatcher itself were seen in poll().  If the sizes still differ,
        someone else removed a dispatcher: fall back to the full check."""
        map, known = self.map, self.known
        if not full:
            for fd in reversed(map):
                obj = map[fd]
                if known.get(fd) is obj:
                    break
                self.forget(fd)
                known[fd] = obj
                self.refresh(fd, obj)
            full = len(map) != len(known)
        if full and map != known:
            for fd in known.keys() - map.keys():
                self.forget(fd)
            for fd, obj in map.items() - known.items():
                # New, or another dispatcher now owns a reused fd number: the
                # old registration (if any) belongs to a closed socket.
                self.forget(fd)
                known[fd] = obj
                self.refresh(fd, obj)
        if everyone:
            self.asked_everyone = time.monotonic()
            self.dirty.clear()
            for fd, obj in list(map.items()):
                if known.get(fd) is obj:
                    self.refresh(fd, obj)
        elif self.dirty:
            dirty, self.dirty = self.dirty, set()
            for obj in dirty:
                fd = getattr(obj, '_fileno', None)
                if fd is not None and known.get(fd) is obj and map.get(fd) is obj:
                    self.refresh(fd, obj)

    # -- timers -----------------------------------------------------------

    def add_timer(self, delay, callback, args):
        handle = TimerHandle(time.monotonic() + delay, callback, args, self)
        self.seq += 1
        heapq.heappush(self.timers, (handle.when, self.seq, handle))
        return handle

    def next_delay(self):
        """Seconds until the next live timer, or None."""
        timers = self.timers
        if self.cancelled > 64 and self.cancelled * 2 > len(timers):
            # Cancelled entries are dropped lazily; when they are most of
            # the heap (idle timers re-armed on every command), rebuild it.
            self.timers = timers = [t for t in timers if not t[2].cancelled]
            heapq.heapify(timers)
            self.cancelled = 0
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
            self.cancelled -= 1
        if not timers:
            return None
        return max(0.0, timers[0][0] - time.monotonic())

    def run_due(self):
        """Run the callbacks whose deadline has passed; True if any ran."""
        timers = self.timers
        if not timers:
            return False
        now = time.monotonic()
        ran = False
        # Only timers due now: a callback that schedules call_later(0, ...)
        # runs at the next wake-up, so it cannot starve the sockets.
        due = []
        while timers and timers[0][0] <= now:
            handle = heapq.heappop(timers)[2]
            if handle.cancelled:
                self.cancelled -= 1
            else:
                due.append(handle)
        for handle in due:
            if handle.cancelled:     # cancelled by an earlier callback
                continue
            callback, args = handle.callback, handle.args
            handle._state = None
            handle.cancelled = True
            handle.callback = handle.args = None
            ran = True
            try:
                callback(*args)
            except _RERAISED:
                raise
            except BaseException:
                logger.exception('Exception in timer callback %r', callback)
            target = getattr(callback, '__self__', None)
            if isinstance(target, _smtpd.asyncore.dispatcher):
                self.dirty.add(target)
            for arg in args:
                if isinstance(arg, _smtpd.asyncore.dispatcher):
                    self.dirty.add(arg)
        return ran

    # -- one wake-up ------------------------------------------------------

    def poll(self, timeout):
        delay = self.next_delay()
        if delay is not None and (timeout is None or delay < timeout):
            timeout = delay
        selector = self.get_selector()
        if self.events:
            ready = selector.select(timeout)
        else:
            # Nothing to wait for but time (epoll would do the same, but
            # kqueue and select insist on at least one descriptor).
            if timeout:
                time.sleep(timeout)
            ready = []
        map, known, events = self.map, self.known, self.events
        for fd, mask in ready:
            obj = map.get(fd)
            if obj is None or known.get(fd) is not obj:
                continue    # closed, or replaced, by an earlier handler
            mask &= events.get(fd, 0)
            if mask & _READ:
                try:
                    obj.handle_read_event()
                except _RERAISED:
                    raise
                except BaseException:
                    obj.handle_error()
            if mask & _WRITE and map.get(fd) is obj:
                try:
                    obj.handle_write_event()
                except _RERAISED:
                    raise
                except BaseException:
                    obj.handle_error()
            if map.get(fd) is obj:
                self.refresh(fd, obj)
            elif known.get(fd) is obj:
                self.forget(fd)         # it closed itself
        ran = self.run_due()
        if ready or ran or self.dirty:
            # Timer callbacks may close any dispatcher: full check after
            # them; after handlers only, the cheap one.
            self.sync(full=ran)
        else:
            # A wake-up by timeout with nothing to do asks everyone, so that
            # a change made behind the loop's back cannot stall a connection
            # forever.
            self.sync(everyone=True)


# id(map) -> _MapState.  The state holds the map itself, so the id stays
# unique while the entry exists; entries of maps that are empty with no
# timers are dropped when loop() returns.
_states = {}


def _resolve(map):
    return _smtpd.asyncore.socket_map if map is None else map


def _state(map):
    state = _states.get(id(map))
    if state is None or state.map is not map:
        state = _states[id(map)] = _MapState(map)
    return state


def _release(state):
    if not state.map and state.next_delay() is None:
        state.close()
        if _states.get(id(state.map)) is state:
            del _states[id(state.map)]


def loop(timeout: float = 30.0, use_poll: bool = False, map: dict = None,
         count: int = None) -> None:
    """Serve the socket map ``map`` (default ``asyncore.socket_map``) until
    it is empty, or for ``count`` wake-ups; same arguments as
    ``asyncore.loop()``.  ``use_poll`` is ignored."""
    map = _resolve(map)
    state = _state(map)
    try:
        # Anything may have changed since the last call: ask everyone
        # again, but at most every _ASK_EVERYONE_INTERVAL seconds.  A
        # program (or test harness) that calls loop(count=1) in its own
        # loop would otherwise pay for every connection on every call:
        # with 2,000 connections that is milliseconds of Python per
        # wake-up, holding the GIL against its other threads.
        if time.monotonic() - state.asked_everyone >= _ASK_EVERYONE_INTERVAL:
            state.sync(everyone=True)
        else:
            state.sync()
        if count is None:
            while map:
                state.poll(timeout)
        else:
            while map and count > 0:
                state.poll(timeout)
                count -= 1
    finally:
        _release(state)


def call_later(delay: float, callback, *args, map: dict = None) -> TimerHandle:
    """Run ``callback(*args)`` after ``delay`` seconds, from :func:`loop`
    serving ``map`` (default ``asyncore.socket_map``).  Returns a
    :class:`TimerHandle`; ``handle.cancel()`` withdraws the call."""
    if delay < 0:
        delay = 0.0
    return _state(_resolve(map)).add_timer(delay, callback, args)


def run_timers(map: dict = None):
    """Run the due timers of ``map`` now; returns the seconds until the next
    one, or None.  For programs that drive the map with their own loop."""
    state = _state(_resolve(map))
    state.run_due()
    return state.next_delay()


def update(dispatcher, map: dict = None) -> None:
    """Tell the loop that ``dispatcher``'s ``readable()`` or ``writable()``
    may have changed although none of its own handlers ran (it is asked
    again after the current wake-up)."""
    if map is None:
        map = getattr(dispatcher, '_map', None)
    state = _states.get(id(_resolve(map)))
    if state is not None:
        state.dirty.add(dispatcher)


def raise_fd_limit(wanted: int = None) -> int:
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

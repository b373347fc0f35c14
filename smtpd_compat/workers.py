"""Several worker processes sharing one listening socket (POSIX only).

The server is a single-threaded event loop: one process uses one core.
:func:`run_workers` forks N children after the listening socket exists; they
all accept from it (the kernel hands each new connection to one of them)
and run their own loop.  The parent only supervises:

* a worker that dies is replaced (at most one restart per second per slot
  when a worker keeps dying at once, so a crash loop does not spin);
* SIGTERM or SIGINT to the parent is passed on to every worker, which shuts
  down gracefully (:mod:`smtpd_compat.shutdown`); the parent waits for
  them and returns, so the process exits with status 0;
* SIGHUP to the parent is passed on to every worker, which reloads its TLS
  certificate and auth file (see the command line's SIGHUP handling).

A shared socket (rather than SO_REUSEPORT listeners) works with port 0 and
everywhere fork exists; idle workers all wake on a new connection but only
one accept() succeeds, the others see EAGAIN, which asyncore ignores.
Given the server (``run_workers(..., server=server)``, as the command line
does), the workers share the connections out evenly: one that serves more
than a few connections above the fewest of the others leaves a new
connection to them (see _Balance).

Limits such as ``max_connections`` are per worker.
"""
from __future__ import annotations

import functools
import logging
import mmap
import os
import signal
import sys
import time
from types import FrameType
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List,
                    NoReturn, Optional, Set, Tuple, Union)

if TYPE_CHECKING:
    import smtpd_compat as _smtpd

__all__ = ['run_workers']

logger = logging.getLogger(__name__)

# A worker that exits sooner than this after its start is restarted only
# after the same delay.
_MIN_LIFETIME = 1.0

# What signal.signal() takes and returns: a function, SIG_DFL or SIG_IGN,
# or None (a handler not installed from Python).
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int,
                 signal.Handlers, None]


def run_workers(count: int, serve: Callable[[], object], *,
                signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
                server: Optional['_smtpd.SMTPServer'] = None,
                requested: Optional[Callable[[], bool]] = None) -> None:
    """Fork ``count`` workers that each call ``serve()`` and exit when it
    returns; restart any that die until one of ``signals`` arrives, then
    pass it on to the workers and wait for them.  Call from the main thread
    once the listening socket is open.  ``server``: the listening server
    the workers serve, whose connections they then share out evenly.
    ``requested``: asked once the signals are taken over; True means one
    came before (to the handler they had): no worker is started."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError('count must be a positive integer, not %r'
                         % (count,))
    if not hasattr(os, 'fork'):
        raise RuntimeError('workers need os.fork()')
    children: Dict[int, Tuple[int, float]] = {}     # pid -> (slot, start time)
    shares = _Shares(count) if server is not None and count > 1 else None
    stopping: List[int] = []   # the signal that asked us to stop, once it came

    def stop(signum: int, frame: Optional[FrameType]) -> None:
        # A signal handler runs between two bytecodes of whatever the main
        # thread does, which may be writing a log line to the very stream
        # this one's line goes to: Python refuses the nested write
        # (RuntimeError: reentrant call), and logging's report of it fails
        # the same way.  Raised before the workers were signalled, that
        # left them serving and this process waiting for them forever (a
        # rare hang in CI).  So they are signalled first, and the line is
        # written last, at most lost.
        first = not stopping
        if first:
            stopping.append(signum)
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if first:
            try:
                logger.info('stopping %d workers', len(children))
            except Exception:
                pass

    def forward(signum: int, frame: Optional[FrameType]) -> None:
        # SIGHUP (reload) is for the workers, who serve: pass it on.
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signals = list(signals)
    previous: Dict[int, _Handler] = {
        signum: signal.signal(signum, stop) for signum in signals}
    if requested is not None and signals and requested():
        stopping.append(signals[0])
    hup = getattr(signal, 'SIGHUP', None)
    if hup is not None and hup not in previous:
        # Restored in the workers too (_child), so that they reload rather
        # than forward to their siblings.
        previous[hup] = signal.signal(hup, forward)

    def spawn(slot: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # The signals stay blocked across fork(): CPython forgets, in the
        # child, every signal that arrived before its own after-fork
        # bookkeeping ran, so a stop signal sent to a worker just forked
        # (as below, when one came while forking) was lost, and the parent
        # waited for that worker forever.  Blocked, it waits in the kernel
        # until the child has its handlers back (_child unblocks it).
        work = serve
        if shares is not None:
            work = functools.partial(_serve_sharing, serve, shares, slot, server)
        mask = _block(previous)
        try:
            pid = os.fork()
            if pid == 0:
                _child(work, previous, stopping, mask)
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        children[pid] = (slot, time.monotonic())
        if stopping:     # the signal came while we were forking
            os.kill(pid, stopping[0])
        logger.info('worker %d started, pid %d', slot, pid)

    try:
        for slot in range(count):
            if stopping:
                break
            spawn(slot)
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid not in children:
                continue
            slot, started = children.pop(pid)
            if shares is not None:
                shares.counts[slot] = _GONE     # until its successor says
            if stopping:
                continue
            if sys.version_info >= (3, 9):
                status = os.waitstatus_to_exitcode(status)
            logger.warning('worker %d (pid %d) exited with status %d; '
                           'restarting', slot, pid, status)
            lived = time.monotonic() - started
            if lived < _MIN_LIFETIME:
                time.sleep(_MIN_LIFETIME - lived)
            if not stopping:
                spawn(slot)
    finally:
        for signum, handler in previous.items():
            _restore(signum, handler)


def _restore(signum: int, handler: _Handler) -> None:
    # signal.signal() returns None for a handler that was not installed
    # from Python (by C code embedding the interpreter), and refuses None
    # back (TypeError): such a handler cannot be put back from Python, so
    # the signal gets its default action.
    signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _block(signals: Iterable[int]) -> Optional[Set[int]]:
    """Block ``signals``; the mask before, or None where signals cannot be
    blocked."""
    if not hasattr(signal, 'pthread_sigmask'):
        return None
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, list(signals)))


def _child(serve: Callable[[], object], handlers: Dict[int, _Handler],
           stopping: Iterable[int] = (),
           mask: Optional[Set[int]] = None) -> NoReturn:
    # In the worker: the parent's handlers (fan-out) are not ours.  Restore
    # what was there before run_workers; serve() installs its own.  Signals
    # blocked across fork() (see spawn) arrive once they are back.
    code = 0
    try:
        for signum, handler in handlers.items():
            _restore(signum, handler)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # A stop signal that came between fork() and the restore above ran
        # the parent's handler copied by fork (it marks our copy of
        # ``stopping``) and is gone: serving now would ignore it and the
        # parent would wait for us forever.  (The parent sends exactly such a
        # signal to a worker it is forking while a stop arrives.)
        if not stopping:
            serve()
    except KeyboardInterrupt:
        pass
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        logger.exception('worker failed')
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            # Never return into the parent's code (its supervisor loop).
            os._exit(code)


# -- sharing the connections out ----------------------------------------------

# Issue 20, W5 (50,000 idle connections on three workers): the kernel wakes
# every worker for a new connection and the first accept() wins, so the
# spread was uneven (15,550 to 19,943 of 50,000; with a descriptor limit of
# 400, two workers took 336 and 85), and a worker at its max_connections
# (which the command line lowers to fit the descriptor limit) answered 421
# while another had room.  Each worker publishes how many dispatchers it
# serves in memory the workers share; one serving more than _SLACK above
# the fewest of the others leaves a new connection to them: it accepts
# nothing for _DEFER seconds, the connection waiting in the listen backlog
# for a worker with fewer.  It defers once in a row: on its next turn it
# accepts, so a connection waits at most _DEFER longer when the worker
# with fewest is busy.  A dead worker's slot counts as full until its
# successor publishes its own count.
_SLACK = 16
_DEFER = 0.002
_GONE = 2 ** 62


class _Shares:
    """How many dispatchers each worker serves, one slot per worker, in an
    anonymous shared mapping made before the workers fork."""

    def __init__(self, count: int) -> None:
        self._memory = mmap.mmap(-1, 8 * count)
        self.counts = memoryview(self._memory).cast('q')
        for slot in range(count):
            self.counts[slot] = _GONE


def _serve_sharing(serve: Callable[[], object], shares: '_Shares', slot: int,
                   server: Any) -> object:
    """serve(), in worker ``slot``, sharing ``server``'s connections out."""
    server._accept_balance = _Balance(shares, slot, server)
    return serve()


class _Balance:
    """A worker's SMTPServer._accept_balance: True (having stopped
    accepting for a moment) to leave a new connection to the others."""

    def __init__(self, shares: _Shares, slot: int, server: Any) -> None:
        self._counts = shares.counts
        self._slot = slot
        self._others = [other for other in range(len(shares.counts)) if other != slot]
        self._deferred = False
        self._counts[slot] = len(server._map)

    def __call__(self, server: Any) -> bool:
        counts = self._counts
        mine = counts[self._slot] = len(server._map)
        if self._deferred:
            self._deferred = False
            return False
        if mine <= min([counts[other] for other in self._others]) + _SLACK:
            return False
        self._deferred = True
        server._stop_accepting(_DEFER)
        return True

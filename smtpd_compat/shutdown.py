"""Graceful shutdown: stop on SIGTERM or SIGINT without losing mail.

:func:`serve_gracefully` runs a socket map with :func:`smtpd_compat.loop.loop`
until a stop signal arrives, then:

1. closes every listening socket in the map (no new connections; the
   kernel refuses them, and a load balancer moves on to another server);
2. answers ``421 4.3.2 ... shutting down`` and closes every connection that
   is not inside DATA (RFC 5321 §3.8 lets a server do this at any time;
   the client keeps its message and retries later);
3. lets connections inside DATA finish their message for up to
   ``grace_period`` seconds: process_message runs, the client gets its 250,
   and then the 421;
4. when the grace period is over, sends the 421 to whoever is left (their
   message was never acknowledged, so the client still owns it) and
   returns, so the process exits with status 0.

The stop signals are handled on the loop thread, from the loop
(:meth:`smtpd_compat.loop.LoopServices.add_signal_handler`): a signal wakes
the loop at once, and the shutdown begins between two events, so
process_message is never interrupted, no message is half delivered, and
every 250 was sent after process_message returned.  A second or third stop
signal while the shutdown runs (an impatient operator, a supervisor
repeating SIGTERM) asks for the same shutdown again: it changes nothing,
prints nothing, and the exit status stays 0.  (``python -m smtpd_compat``
ignores stop signals once serve_gracefully has returned; see
``_terminate`` in ``__main__``.)

No step polls: the loop sleeps until the next event, timer or signal.
Between the steps the shutdown looks at the connections after each
wake-up, and the grace period and the flush time are read from the map's
clock (:attr:`smtpd_compat.loop.LoopServices.clock`).
"""
import logging
import signal
from typing import Any, Callable, Optional, Sequence, cast

import smtpd_compat as _smtpd
from smtpd_compat import loop as _loop
from smtpd_compat.session import busy, hang_up

__all__ = ['serve_gracefully', 'GracefulShutdown', 'DEFAULT_GRACE_PERIOD']

logger = logging.getLogger(__name__)

DEFAULT_GRACE_PERIOD = 30.0
# After the last goodbye, how long the 421 replies may take to go out.
_FLUSH_TIME = 2.0
# Input a channel may send after its 421 before it is closed unread.
_MAX_UNPROCESSED = 65536


class GracefulShutdown:
    """Runs a socket map and stops it gracefully; :meth:`request` (safe from
    a signal handler and from any thread) asks it to stop."""

    def __init__(self, map: Optional[_loop.SocketMap] = None,
                 grace_period: float = DEFAULT_GRACE_PERIOD):
        if grace_period is None or grace_period < 0:
            raise ValueError('grace_period must be >= 0, not %r'
                             % (grace_period,))
        self.map = _smtpd.asyncore.socket_map if map is None else map
        self.grace_period = grace_period
        self.requested = False
        # The map's services while run() runs.
        self._services: Optional[_loop.LoopServices] = None

    def request(self, *args: Any) -> None:
        """Ask the loop to begin the shutdown (usable as a signal handler,
        or from another thread)."""
        self.requested = True
        services = self._services
        if services is not None:
            services.stop()

    def run(self) -> None:
        """Serve until the map is empty or a shutdown has completed."""
        map = self.map
        services = self._services = _loop.services(map)
        # So that request() from another thread wakes the loop.
        services.enable_wakeup()
        try:
            self._run(services)
        finally:
            self._services = None

    def _run(self, services: _loop.LoopServices) -> None:
        map = self.map
        if not self.requested:
            _loop.loop(map=map)     # until request() stops it
        if not self.requested or not services.serving():
            return
        logger.info('shutting down: grace period %.1fs', self.grace_period)
        for obj in list(map.values()):
            if obj.accepting:
                obj.close()
        clock = services.clock
        deadline = clock() + self.grace_period
        while True:
            waiting = False
            for obj in list(map.values()):
                if not isinstance(obj, _smtpd.SMTPChannel):
                    continue
                # Receiving a message (DATA or a BDAT transaction), or
                # waiting for its delivery to finish off the loop thread.
                if obj.connected and busy(obj):
                    waiting = True
                else:
                    self._goodbye(obj)
            left = deadline - clock()
            if not waiting or left <= 0 or not services.serving():
                break
            # One wake-up: whatever ends a message (its last bytes, the
            # result of its delivery) is one.
            _loop.loop(timeout=left, map=map, count=1)
        # Let the replies go out, then close whatever is left.
        flush_until = clock() + _FLUSH_TIME
        while True:
            for obj in list(map.values()):
                if isinstance(obj, _smtpd.SMTPChannel):
                    self._goodbye(obj)
            left = flush_until - clock()
            if left <= 0 or not services.serving():
                break
            _loop.loop(timeout=left, map=map, count=1)
        _smtpd.asyncore.close_all(map=map)
        logger.info('shut down')

    def _goodbye(self, channel: _smtpd.SMTPChannel) -> None:
        hang_up(channel, '421 4.3.2 %s Error: server shutting down'
                % channel.fqdn, 'shutdown')
        if channel.connected and \
                len(cast(Any, channel).ac_in_buffer) > _MAX_UNPROCESSED:
            # A compat channel reads on (only a capability channel stops
            # reading once it has hung up), keeping what it reads
            # unprocessed: a client that floods instead of reading its
            # 421 is cut off, so that memory stays bounded.
            channel.close()


def serve_gracefully(map: Optional[_loop.SocketMap] = None,
                     grace_period: float = DEFAULT_GRACE_PERIOD,
                     signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
                     requested: Optional[Callable[[], bool]] = None) -> None:
    """Serve ``map`` (default ``asyncore.socket_map``) until one of
    ``signals`` arrives, then shut down gracefully (see the module
    docstring) and return.  Signal handlers are restored on return.  Call
    from the main thread.  ``requested``: asked once the signals are
    taken over; True means one came before (to the handler they had), and
    the shutdown begins at once."""
    shutdown = GracefulShutdown(map, grace_period)
    services = _loop.services(shutdown.map)
    for signum in signals:
        services.add_signal_handler(signum, shutdown.request)
    try:
        if requested is not None and requested():
            shutdown.request()
        shutdown.run()
    finally:
        for signum in signals:
            services.remove_signal_handler(signum)

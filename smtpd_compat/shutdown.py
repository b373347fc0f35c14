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

The signal handler only sets a flag; process_message is never interrupted,
so no message is half delivered, and every 250 was sent after
process_message returned.  A second or third stop signal while the shutdown
runs (an impatient operator, a supervisor repeating SIGTERM) sets the same
flag again: it changes nothing, prints nothing, and the exit status stays 0.
(``python -m smtpd_compat`` ignores stop signals once serve_gracefully has
returned; see ``_terminate`` in ``__main__``.)
"""
import logging
import signal
import time

import smtpd_compat as _smtpd
from smtpd_compat import loop as _loop
from smtpd_compat.session import busy

__all__ = ['serve_gracefully', 'GracefulShutdown', 'DEFAULT_GRACE_PERIOD',
           'CLI_OPTIONS', 'cli_configure']

logger = logging.getLogger(__name__)

DEFAULT_GRACE_PERIOD = 30.0
# How often the loop looks at the stop flag: a signal interrupts the wait
# but Python resumes it (PEP 475), so the flag is seen within this time.
_TICK = 0.2
# After the last goodbye, how long the 421 replies may take to go out.
_FLUSH_TIME = 2.0


def _never():
    return False


class GracefulShutdown:
    """Runs a socket map and stops it gracefully; :meth:`request` (safe from
    a signal handler) asks it to stop."""

    def __init__(self, map: dict = None,
                 grace_period: float = DEFAULT_GRACE_PERIOD):
        if grace_period is None or grace_period < 0:
            raise ValueError('grace_period must be >= 0, not %r'
                             % (grace_period,))
        self.map = _smtpd.asyncore.socket_map if map is None else map
        self.grace_period = grace_period
        self.requested = False

    def request(self, *args) -> None:
        """Ask the loop to begin the shutdown (usable as a signal
        handler)."""
        self.requested = True

    def run(self) -> None:
        """Serve until the map is empty or a shutdown has completed."""
        map = self.map
        while map and not self.requested:
            _loop.loop(timeout=_TICK, map=map, count=1)
        if not map:
            return
        logger.info('shutting down: grace period %.1fs', self.grace_period)
        for obj in list(map.values()):
            if obj.accepting:
                obj.close()
        deadline = time.monotonic() + self.grace_period
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
            left = deadline - time.monotonic()
            if not waiting or left <= 0 or not map:
                break
            _loop.loop(timeout=min(_TICK, left), map=map, count=1)
        for obj in list(map.values()):
            if isinstance(obj, _smtpd.SMTPChannel):
                self._goodbye(obj)
        # Let the replies go out, then close whatever is left.
        flush_until = time.monotonic() + _FLUSH_TIME
        while map and time.monotonic() < flush_until:
            _loop.loop(timeout=_TICK, map=map, count=1)
        _smtpd.asyncore.close_all(map=map)
        logger.info('shut down')

    def _goodbye(self, channel):
        if getattr(channel, '_shutdown_said', False):
            return
        channel._shutdown_said = True
        reply = '421 4.3.2 %s Error: server shutting down' % channel.fqdn
        if hasattr(channel, 'hang_up'):
            # A capability channel: the shared "closing" state.
            if channel.connected and not channel.closing:
                channel.hang_up(reply, 'shutdown')
            return
        # A compat channel has no such state: the same by hand.
        channel.close_reason = 'shutdown'
        # Read nothing more: a command after the 421 must not be processed.
        channel.readable = _never
        channel.ac_in_buffer = b''
        if not channel.connected:
            return
        try:
            channel.push(reply)
        except Exception:      # a channel broken in some way: just close it
            logger.exception('while saying goodbye to %r', channel)
            channel.close()
            return
        channel.close_when_done()
        _loop.update(channel)


def serve_gracefully(map: dict = None,
                     grace_period: float = DEFAULT_GRACE_PERIOD,
                     signals=(signal.SIGTERM, signal.SIGINT)) -> None:
    """Serve ``map`` (default ``asyncore.socket_map``) until one of
    ``signals`` arrives, then shut down gracefully (see the module
    docstring) and return.  Signal handlers are restored on return.  Call
    from the main thread."""
    shutdown = GracefulShutdown(map, grace_period)
    previous = {}
    for signum in signals:
        previous[signum] = signal.signal(signum, shutdown.request)
    try:
        shutdown.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


CLI_OPTIONS = (
    ('grace-period=', 'SECONDS',
     'On SIGTERM/SIGINT stop accepting, let messages in DATA finish for up '
     'to this long, then 421 the rest and exit 0 (default 30 in '
     'production mode).'),
)

def cli_configure(cli):
    """Serve with graceful shutdown when a production option is given."""
    from smtpd_compat.production import hardening_requested
    if not hardening_requested(cli.given):
        return
    grace = DEFAULT_GRACE_PERIOD
    if 'grace-period' in cli.given:
        text = cli.given['grace-period']
        try:
            grace = float(text)
        except ValueError:
            cli.error('Invalid --grace-period: %s' % text)
        if not grace >= 0:
            cli.error('Invalid --grace-period: %s' % text)

    def serve(cli, server):
        serve_gracefully(server._map, grace)

    cli.serve = serve

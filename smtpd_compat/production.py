"""Production mode of ``python -m smtpd_compat``: the one rule for which
command-line options switch it on.

Without any of them the command line runs the stdlib's server exactly as
``python -m smtpd`` did.  In production mode the capability modules add,
each in its own ``cli_configure``: every timeout and limit with its default
(:mod:`smtpd_compat.limits`), the session log at INFO, and graceful
shutdown (:mod:`smtpd_compat.shutdown`).

The rule: production mode is on when ``--production`` is given, or an
option that configures something that only exists in production mode --
a limit or timeout, the listen backlog, the shutdown grace period, worker
processes.  Options that switch on a capability of their own (TLS, AUTH,
the PROXY protocol, delivery, relay, LMTP, ESMTP extensions) do not, and
neither does ``--log-level``, which only configures logging.
"""
from typing import Container

__all__ = ['PRODUCTION_OPTIONS', 'RULE', 'hardening_requested']

# The long options (without dashes) that switch production mode on.
PRODUCTION_OPTIONS = frozenset({
    'production',
    # smtpd_compat.limits
    'idle-timeout', 'data-timeout', 'min-data-rate', 'max-connections',
    'max-connections-per-ip', 'max-recipients', 'max-errors',
    'max-line-length', 'max-junk-commands', 'backlog',
    # smtpd_compat.shutdown
    'grace-period',
    # smtpd_compat.workers
    'workers',
})

# The rule as the help text and docs/cli.rst state it.
RULE = ('Production mode (every limit and timeout with its default, the '
        'session log at INFO, graceful shutdown) is on with --production or '
        'any option that configures it: a limit or timeout, --backlog, '
        '--grace-period, --workers.  Other options (TLS, AUTH, PROXY '
        'protocol, delivery, relay, LMTP, --esmtp, --log-level) do not '
        'switch it on.')


def hardening_requested(given: Container[str]) -> bool:
    """True when the command line's capability options (``cli.given``: long
    names without dashes) switch production mode on (see ``RULE``)."""
    return any(option in given for option in PRODUCTION_OPTIONS)

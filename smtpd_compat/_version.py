from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

if TYPE_CHECKING:
    from smtpd_compat.__main__ import CLI

# The distribution's version (not the stdlib's __version__ banner string).
VERSION = '1.0.0'

# ``python -m smtpd_compat --package-version``: -V/--version stay the
# stdlib's ("Python SMTP proxy version 0.3"), so the distribution's own
# version gets a flag of its own (see __main__ for the protocol).
CLI_OPTIONS: Tuple[Tuple[str, str, str], ...] = (
    ('package-version', '', 'Print "smtpd-compat X.Y.Z" (the installed '
     'distribution\'s version) and exit.'),
)


def cli_configure(cli: CLI) -> None:
    if 'package-version' in cli.given:
        print('smtpd-compat', VERSION)
        raise SystemExit(0)

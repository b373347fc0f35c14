# Types of the package version and its --package-version option.
from smtpd_compat.__main__ import CLI

VERSION: str
CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

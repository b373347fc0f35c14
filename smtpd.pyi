# Types of ``import smtpd`` on Python 3.12+, where this distribution's
# top-level smtpd.py makes the name refer to the smtpd_compat module itself
# (the same module object).
#
# Two identical copies (tests/test_typing.py checks): smtpd.pyi beside
# smtpd.py, found by mypy in a source checkout, and the stub-only package
# smtpd-stubs (PEP 561), which is what gets installed, since py.typed can
# only mark a package, not the single-module smtpd.py.  Where smtpd-compat
# is installed on 3.11 and older, mypy uses typeshed's stub of the standard
# library's smtpd instead (typeshed's standard library stubs take
# precedence), which is the module ``import smtpd`` gives there.
from smtpd_compat import (
    COMMASPACE as COMMASPACE,
    DATA_SIZE_DEFAULT as DATA_SIZE_DEFAULT,
    DEBUGSTREAM as DEBUGSTREAM,
    NEWLINE as NEWLINE,
    DebuggingServer as DebuggingServer,
    Devnull as Devnull,
    Options as Options,
    PureProxy as PureProxy,
    SMTPChannel as SMTPChannel,
    SMTPServer as SMTPServer,
    __all__ as __all__,
    __version__ as __version__,
    parseargs as parseargs,
    program as program,
    usage as usage,
)

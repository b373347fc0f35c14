# Types of SMTP AUTH (RFC 4954): PLAIN and LOGIN over TLS.
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any
from typing_extensions import TypeAlias

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import CapabilityServerMixin, _Unset
from smtpd_compat.threads import OffloadChannelMixin
from smtpd_compat.tls import TLSServerMixin

__all__ = [
    "AuthChannelMixin",
    "AuthServerMixin",
    "SubmissionServer",
    "FileAuthenticator",
    "AuthThrottle",
    "hash_password",
    "verify_password",
    "decode_response",
    "parse_plain",
    "MECHANISMS",
    "CLI_OPTIONS",
    "cli_configure",
    "main",
]

# authenticator(mechanism, login, password, channel) -> True to accept.
_Authenticator: TypeAlias = Callable[[str, str, str, AuthChannelMixin], bool]

logger: logging.Logger
MECHANISMS: tuple[str, ...]

def decode_response(text: str | bytes) -> bytes: ...
def parse_plain(payload: bytes) -> tuple[str, str, str]: ...
def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int) -> bytes: ...
def _derive(scheme: str, params: dict[str, int], password: str, salt: bytes) -> bytes: ...
def _parse_hash(encoded: str) -> tuple[str, dict[str, int], bytes, bytes]: ...
def hash_password(password: str, scheme: str = "scrypt") -> str: ...
def verify_password(password: str, encoded: str) -> bool: ...

class FileAuthenticator:
    path: str
    # login -> encoded hash
    _users: dict[str, str]
    _decoy: str
    def __init__(self, path: str) -> None: ...
    def __call__(self, mechanism: str, login: str, password: str, channel: object) -> bool: ...
    # Read the file again; on an error the entries in use are kept.
    def reload(self) -> None: ...

# Failed-AUTH throttling per client address and login.
class AuthThrottle:
    def __init__(
        self,
        max_failures: int = 10,
        window: float = 300.0,
        interval: float = 1.0,
        max_entries: int = 20000,
        clock: Callable[[], float] = ...,
    ) -> None: ...
    def allow(self, address: object, login: str | None) -> bool: ...
    # The outcome of a check allow() let through (None: no verdict).
    def record(self, address: object, login: str | None, ok: bool | None) -> None: ...

class AuthChannelMixin(OffloadChannelMixin):
    # The authenticator runs in the server's worker threads.
    layer: int
    capability_name: str
    # The login of a successful AUTH, else None.
    auth_user: str | None
    _auth_failures: int
    # None, 'PLAIN', 'LOGIN-USER' or 'LOGIN-PASSWORD' while an exchange runs.
    _auth_state: str | None
    _auth_login: str | None
    _auth_initial: str | None
    def _auth_offered(self) -> bool: ...
    def extra_ehlo_keywords(self) -> list[str]: ...
    def found_terminator(self) -> None: ...
    def smtp_AUTH(self, arg: str) -> None: ...
    def _auth_continue(self, line: bytes | str, size: int) -> None: ...
    def _auth_challenge(self, challenge: str) -> None: ...
    def _auth_end(self, reply: str) -> None: ...
    def _auth_check(self, mechanism: str, login: str | None, password: str | None) -> None: ...
    # The authenticator's answer ``ok`` (``done`` False: the exception it raised).
    def _auth_verdict(self, mechanism: str, login: str | None, done: bool, ok: object) -> None: ...
    def _tls_reset_session(self) -> None: ...
    def smtp_MAIL(self, arg: str) -> None: ...
    def check_mail_parameters(self, params: _smtpd._Params) -> str | None: ...
    def _message_kwargs(self) -> dict[str, Any]: ...

class AuthServerMixin(CapabilityServerMixin):
    authenticator: _Authenticator
    auth_required: bool
    auth_allow_plaintext: bool
    auth_mechanisms: tuple[str, ...]
    auth_max_failures: int
    auth_throttle: AuthThrottle | None
    # authenticator is required (None raises TypeError): see
    # stubtest-allowlist.txt.
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        authenticator: _Authenticator,
        auth_required: bool = False,
        auth_allow_plaintext: bool = False,
        auth_mechanisms: str | Iterable[str] = ("PLAIN", "LOGIN"),
        auth_max_failures: int = 3,
        auth_throttle: AuthThrottle | None | _Unset = ...,
        **kwargs: Any,
    ) -> None: ...

class SubmissionServer(AuthServerMixin, TLSServerMixin, _smtpd.SMTPServer):
    # process_message gets auth_user=<login or None> among its kwargs.
    auth_user_kwarg: bool
    # The keywords of AuthServerMixin and TLSServerMixin (authenticator
    # required), with auth_required=True by default.
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        authenticator: _Authenticator,
        auth_required: bool = True,
        **kwargs: Any,
    ) -> None: ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...
def _read_password() -> str: ...
def main(argv: list[str] | None = None) -> None: ...

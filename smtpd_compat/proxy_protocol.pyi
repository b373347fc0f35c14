# Types of the PROXY protocol (v1/v2) parser and capability.
import ipaddress
import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

import smtpd_compat as _smtpd
from smtpd_compat.__main__ import CLI
from smtpd_compat._compose import CapabilityServerMixin, _Unset
from smtpd_compat.session import SessionStateMixin

__all__ = [
    "ProxyHeader",
    "ProxyProtocolError",
    "parse_proxy_header",
    "ProxyProtocolChannelMixin",
    "ProxyProtocolServerMixin",
    "ProxyProtocolServer",
    "V2_SIGNATURE",
    "DEFAULT_TRUSTED",
    "parse_networks",
    "CLI_OPTIONS",
    "cli_configure",
]

logger: logging.Logger
V2_SIGNATURE: bytes
# Who may send a PROXY header unless proxy_trusted says otherwise.
DEFAULT_TRUSTED: tuple[str, ...]

# The networks in a comma-separated string of CIDRs or an iterable of them.
def parse_networks(spec: str | Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]: ...

class ProxyProtocolError(ValueError): ...

class ProxyHeader(NamedTuple):
    version: int
    command: str
    family: str
    # (host, port), or a path string for the UNIX families.
    source: tuple[str, int] | str | None
    destination: tuple[str, int] | str | None
    length: int
    # v2 TLVs as (type, value) pairs.
    tlvs: tuple[tuple[int, bytes], ...] = ()

# The header at the start of ``data``; None when more bytes are needed.
def parse_proxy_header(data: bytes) -> ProxyHeader | None: ...

class ProxyProtocolChannelMixin(SessionStateMixin):
    # Typed as a subclass of SessionStateMixin (and so of SMTPChannel), which
    # every composed channel is; at run time a plain mixin.
    layer: int
    capability_name: str
    # None until the header has arrived.
    proxy_header: ProxyHeader | None
    # The TCP peer (the balancer); ``peer`` becomes the header's source.
    proxy_peer: Any
    _proxy_buffer: bytes
    def _greet(self) -> None: ...
    def _handle_input(self, data: bytes) -> None: ...

class ProxyProtocolServerMixin(CapabilityServerMixin):
    proxy_header_timeout: float | None
    def __init__(
        self,
        localaddr: _smtpd._Address,
        remoteaddr: _smtpd._Address,
        *args: Any,
        proxy_header_timeout: float | None | _Unset = ...,
        proxy_trusted: str | Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] | None | _Unset = ...,
        **kwargs: Any,
    ) -> None: ...

class ProxyProtocolServer(ProxyProtocolServerMixin, _smtpd.SMTPServer): ...

CLI_OPTIONS: tuple[tuple[str, str, str], ...]

def cli_configure(cli: CLI) -> None: ...

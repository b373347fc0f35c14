# Types of the composition machinery (see _compose.py's docstring).
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import smtpd_compat as _smtpd

__all__ = ["CapabilityServerMixin", "compose_server", "channel_class_for", "add_channel_mixin", "UNSET", "settings"]

_S = TypeVar("_S", bound=type)

class _Unset:
    def __bool__(self) -> Literal[False]: ...

# Default of a capability keyword that was not given.
UNSET: _Unset
Unset = _Unset

_cache: dict[tuple[str, type, tuple[type, ...]], type]

def _layer(mixin: object) -> int: ...
def _channel_mixins(server_type: type, extra: Iterable[type] = ()) -> list[type]: ...
def _base_channel(channel_class: type) -> type: ...
def _build(base: type, mixins: Sequence[type], kind: str) -> type: ...
def channel_class_for(
    server_type: type[_smtpd.SMTPServer], channel_class: type[_smtpd.SMTPChannel], extra: Iterable[type] = ()
) -> type[_smtpd.SMTPChannel]: ...

# ``base`` itself, or a subclass of it with the mixins in front.
def compose_server(base: _S, mixins: Iterable[type], name: str | None = None) -> _S: ...
def settings(server: object, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]: ...

class CapabilityServerMixin(_smtpd.SMTPServer):
    # Typed as a subclass of SMTPServer, which every server it is mixed
    # into is (at run time it is a plain mixin).
    # The channel mixin this capability adds (None: none).
    channel_mixin: type[_smtpd.SMTPChannel] | None
    _extra_channel_mixins: tuple[type, ...]

def add_channel_mixin(server: _smtpd.SMTPServer, mixin: type) -> None: ...

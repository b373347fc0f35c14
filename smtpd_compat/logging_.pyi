# Types of the session log (one line per connection, message, disconnect).
import logging

from smtpd_compat.session import SessionStateMixin
from smtpd_compat._compose import CapabilityServerMixin

__all__ = ["logger", "SessionLogChannelMixin", "SessionLogServerMixin", "LogEvery", "format_peer", "safe"]

logger: logging.Logger

# ``value`` as text safe for one log line.
def safe(value: object) -> str: ...

# Counts events; lets one log line through per ``interval`` seconds.
class LogEvery:
    interval: float
    def __init__(self, interval: float = 1.0) -> None: ...
    # Count one event; how many to report now, or 0 inside the interval.
    def count(self) -> int: ...

def format_peer(peer: object) -> str: ...

class SessionLogChannelMixin(SessionStateMixin):
    # Typed as a subclass of SessionStateMixin (and so of SMTPChannel), which
    # every composed channel is; at run time a plain mixin.
    layer: int
    capability_name: str
    _log_opened: float | None
    # (size, recipients) of the message whose reply is awaited.
    _log_reply_pending: tuple[int, int] | None
    _log_messages: int
    def _greet(self) -> None: ...
    def _process_data(self, data: bytes | str) -> None: ...
    def push(self, msg: str) -> None: ...  # type: ignore[override]
    def close(self) -> None: ...

class SessionLogServerMixin(CapabilityServerMixin): ...

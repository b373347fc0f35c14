# Types of the message layer shared by LMTP, relay and the ESMTP extensions.
from typing import Any

from smtpd_compat.session import SessionStateMixin

__all__ = ["MessageChannelMixin"]

class MessageChannelMixin(SessionStateMixin):
    # Typed as a subclass of SessionStateMixin (and so of SMTPChannel), which
    # every composed channel is; at run time a plain mixin.
    layer: int
    capability_name: str
    # The parameters of each accepted RCPT, parallel to rcpttos.
    _recipient_options: list[list[str]]
    # The argument of the MAIL or RCPT command being handled.
    _command_arg: str | None
    def _set_post_data_state(self) -> None: ...
    def smtp_MAIL(self, arg: str) -> None: ...
    def smtp_RCPT(self, arg: str) -> None: ...
    def _command_address(self, keyword: str) -> tuple[str, dict[str, list[str]]]: ...
    def _message_kwargs(self) -> dict[str, Any]: ...

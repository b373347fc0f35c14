"""The message layer shared by the capability channels that handle more
than the stdlib's envelope (extensions, LMTP, relay).

It keeps each recipient's own RCPT parameters and the MAIL/RCPT argument as
the client wrote it, and passes the former to ``process_message`` as
``recipient_options``.  Its layer is the innermost of the capabilities
(:data:`smtpd_compat.session.LAYERS`): the layers outside it see a
complete envelope.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional, Tuple

from smtpd_compat.session import LAYERS

if TYPE_CHECKING:
    # Typed as what it is composed into (a SessionStateMixin, and so an
    # SMTPChannel); at run time a plain mixin.
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

__all__ = ['MessageChannelMixin']


class MessageChannelMixin(_ChannelBase):
    """The message layer that the extensions, LMTP and relay channels share:
    what they add to the core's message path: each recipient's own RCPT parameters (passed to
    process_message as ``recipient_options``) and the MAIL/RCPT argument as
    written.  The path itself is the core's ``_process_data``; channels
    extend its hooks :meth:`_message_kwargs` (what process_message gets
    besides the stdlib arguments) and ``_reply_to_message`` (how its result
    is answered: LMTP answers once per recipient)."""

    layer = LAYERS['message']
    capability_name = ''

    #: The parameters of each accepted RCPT, parallel to rcpttos.
    _recipient_options: List[List[str]]

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        # One entry per accepted recipient, parallel to rcpttos: the
        # stdlib's rcpt_options keeps only the last RCPT's parameters.
        self._recipient_options = []

    # The stdlib upper-cases all MAIL and RCPT parameters and keeps no
    # address for the hooks; the argument is kept so that they can recover
    # both (ORCPT and ENVID values are case-sensitive xtext).
    _command_arg: Optional[str] = None
    instance_state: ClassVar[Tuple[str, ...]] = ('_command_arg', '_recipient_options')

    def smtp_MAIL(self, arg: str) -> None:
        self._command_arg = arg
        super().smtp_MAIL(arg)

    def smtp_RCPT(self, arg: str) -> None:
        self._command_arg = arg
        count = len(self.rcpttos)
        super().smtp_RCPT(arg)
        if len(self.rcpttos) > count:
            self._recipient_options.append(list(self.rcpt_options))

    def _command_address(self, keyword: str
                         ) -> Tuple[str, Dict[str, List[str]]]:
        """(address, {NAME: [values as written]}) of the MAIL ('FROM:')
        or RCPT ('TO:') command being handled, parsed as the stdlib does."""
        arg = self._strip_command_keyword(keyword, self._command_arg or '')
        address, rest = self._getaddr(arg)
        found: Dict[str, List[str]] = {}
        for token in rest.split():
            name, _, value = token.partition('=')
            found.setdefault(name.upper(), []).append(value)
        return address, found

    def _message_kwargs(self) -> Dict[str, Any]:
        kwargs = super()._message_kwargs()
        if not self._decode_data:
            # (decode_data=True servers get no stdlib keywords either.)
            kwargs['recipient_options'] = self._recipient_options
        return kwargs

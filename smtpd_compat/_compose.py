"""The former name of :mod:`smtpd_compat.compose` (the documentation of
earlier releases told authors of capabilities to import
``CapabilityServerMixin`` from here): the same module object, so that
either name sees, and patches, the same functions and cache."""
import sys

from smtpd_compat import compose as _compose
from smtpd_compat.compose import (
    UNSET as UNSET, CapabilityServerMixin as CapabilityServerMixin,
    Unset as Unset, add_channel_mixin as add_channel_mixin,
    channel_class_for as channel_class_for, compose_server as compose_server,
    settings as settings)

# (Unset's name in earlier releases.)
_Unset = Unset

sys.modules[__name__] = _compose

"""How a capability's server mixin adds its channel mixin (one place for
the capability modules; not public API)."""


def add_channel_mixin(server, mixin):
    """Make ``server.channel_class`` a subclass of ``mixin`` (put in front
    of the current class), unless it already is one.  A server mixin calls
    this from ``__init__``: before ``super().__init__`` to end up inside the
    mixins composed by the server mixins after it in the MRO, after it to
    end up outside them.  The new class is named after both, e.g.
    ``TLSSMTPChannel`` for TLSChannelMixin on SMTPChannel."""
    base = server.channel_class
    if not issubclass(base, mixin):
        prefix = mixin.__name__
        if prefix.endswith('ChannelMixin'):
            prefix = prefix[:-len('ChannelMixin')]
        server.channel_class = type(prefix + base.__name__, (mixin, base), {})

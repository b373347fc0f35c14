"""How capabilities combine: one function builds every composed class.

A capability is a *server mixin* (keywords, server-side checks) that names
its *channel mixin* in the class attribute ``channel_mixin``; each channel
mixin says where it sits with an integer ``layer`` (see
:data:`smtpd_compat.session.LAYERS`: PROXY outermost, then the session log,
limits, TLS, AUTH, threads, extensions, the message layer).  The order in
which a user lists the server's bases does not matter:

* :func:`compose_server` (used by the CLI and the pytest plugin) puts the
  server mixins in layer order in front of the base class;
* :func:`channel_class_for` (called once per server, by
  :class:`CapabilityServerMixin`) builds the channel class: the channel
  mixins of every server mixin in the server's MRO, ordered by layer, with
  :class:`~smtpd_compat.session.SessionStateMixin` innermost, in front of
  the server's own ``channel_class`` (the user's, an ``LMTPChannel``, ...).
  Mixins the base channel class already has are not added twice.  Built
  classes are cached, so every server of one composition shares them.

The stdlib contract is unchanged: subclass ``SMTPServer``, set
``channel_class``, override ``smtp_VERB``; the user's channel class ends up
innermost, behind every capability.
"""
import threading

__all__ = ['CapabilityServerMixin', 'compose_server', 'channel_class_for',
           'add_channel_mixin', 'UNSET', 'settings']


class _Unset:
    def __repr__(self):
        return 'UNSET'

    def __bool__(self):
        return False


#: Default of a capability keyword that was not given: the user's class
#: attribute of the same name wins over the capability's default.
UNSET = _Unset()
Unset = _Unset

_cache = {}
_cache_lock = threading.Lock()


def _layer(mixin):
    return getattr(mixin, 'layer', 50)


def _channel_mixins(server_type, extra=()):
    """The channel mixins the server mixins in ``server_type``'s MRO ask for
    (plus ``extra``), in layer order, outermost first."""
    found = []
    for cls in server_type.__mro__:
        mixin = cls.__dict__.get('channel_mixin')
        if mixin is not None and mixin not in found:
            found.append(mixin)
    for mixin in extra:
        if mixin not in found:
            found.append(mixin)
    # sorted() is stable: equal layers keep MRO order.
    return sorted(found, key=_layer)


def _base_channel(channel_class):
    """The class a composed channel class was built on (itself otherwise)."""
    return getattr(channel_class, '_composed_base', channel_class)


def _build(base, mixins, kind):
    """A subclass of ``base`` with ``mixins`` in front, in the given order,
    named after the capabilities (``ProxyLimitsSMTPChannel``) and reported
    as belonging to ``base``'s module (tracebacks name the user's module,
    not this one)."""
    key = (kind, base, tuple(mixins))
    with _cache_lock:
        cls = _cache.get(key)
        if cls is None:
            prefix = ''.join(getattr(m, 'capability_name', '') for m in mixins)
            name = prefix + base.__name__
            cls = type(name, tuple(mixins) + (base,), {
                '__module__': base.__module__,
                '__qualname__': name,
                '_composed_base': base,
                '__doc__': base.__doc__,
            })
            _cache[key] = cls
    return cls


def channel_class_for(server_type, channel_class, extra=()):
    """The channel class a server of ``server_type`` whose own channel class
    is ``channel_class`` uses: see the module docstring."""
    from smtpd_compat.session import SessionStateMixin
    base = _base_channel(channel_class)
    mixins = [m for m in _channel_mixins(server_type, extra)
              if not issubclass(base, m)]
    if not issubclass(base, SessionStateMixin):
        mixins.append(SessionStateMixin)
    return _build(base, mixins, 'channel')


def compose_server(base, mixins, name=None):
    """``base`` with the server mixins ``mixins`` in front of it, in layer
    order (those ``base`` already has are left out).  The one way the CLI
    and the pytest plugin build a server class."""
    wanted = [m for m in mixins if not issubclass(base, m)]
    unique = []
    for mixin in wanted:
        if mixin not in unique:
            unique.append(mixin)
    unique.sort(key=lambda m: _layer(getattr(m, 'channel_mixin', None)))
    if not unique:
        return base
    cls = _build(base, unique, 'server')
    if name is not None and cls.__name__ != name:
        cls = type(name, (cls,), {'__module__': base.__module__,
                                  '__qualname__': name})
    return cls


def settings(server, given, defaults):
    """Set each capability setting on ``server``: the keyword value in
    ``given`` when it was passed (not :data:`UNSET`), else the user's class
    attribute of that name when their class defines one, else the
    capability's entry in ``defaults``.  Returns the values set."""
    values = {}
    for name, default in defaults.items():
        value = given.get(name, UNSET)
        if value is UNSET:
            value = getattr(type(server), name, default)
        setattr(server, name, value)
        values[name] = value
    return values


class CapabilityServerMixin:
    """Base of every capability's server mixin: builds the channel class
    once, before the listening socket exists (so no connection can see a
    half-built one).  A subclass sets ``channel_mixin``; it never calls
    :func:`add_channel_mixin` itself."""

    channel_mixin = None

    def __init__(self, *args, **kwargs):
        self.channel_class = channel_class_for(
            type(self), self.channel_class,
            getattr(self, '_extra_channel_mixins', ()))
        super().__init__(*args, **kwargs)

    def close(self):
        super().close()
        # The worker threads capabilities may have started for this server
        # stop once their queued work is done (imported here: threads
        # imports this module).
        from smtpd_compat.threads import release_server_pool
        release_server_pool(self)


def add_channel_mixin(server, mixin):
    """Add ``mixin`` to ``server``'s channel class at its layer (for code
    that decides at run time; a server mixin declares ``channel_mixin``
    instead)."""
    extra = tuple(getattr(server, '_extra_channel_mixins', ())) + (mixin,)
    server._extra_channel_mixins = extra
    server.channel_class = channel_class_for(type(server),
                                             server.channel_class, extra)

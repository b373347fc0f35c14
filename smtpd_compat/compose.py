"""The capability contract: how capabilities combine, checked when a class
is composed.

A capability is a *server mixin*, a subclass of
:class:`CapabilityServerMixin` (keywords, server-side checks), that names
its *channel mixin* in the class attribute :attr:`~CapabilityServerMixin.channel_mixin`.
The composition contract, under these public names:

``channel_mixin`` (server mixin)
    the channel mixin the capability adds to every connection, or None.
``layer`` (channel mixin)
    where it sits, one of :data:`smtpd_compat.session.LAYERS` (PROXY
    outermost, then the session log, limits, TLS, AUTH, the web inbox,
    threads, extensions, the message layer, trace headers, the shared
    session state innermost).  The order in which a user lists the
    server's bases does not matter: the channel class always has its
    mixins in layer order.  Two mixins claiming one layer are refused:
    their order would be undefined.
``requires`` (channel mixin)
    names of layers (keys of :data:`~smtpd_compat.session.LAYERS`) the
    mixin cannot work without; a composition that lacks one is refused,
    naming the mixin and the capability to add.
``capability_name`` (channel mixin)
    the prefix of composed class names (``ProxyLimitsSMTPChannel``); ''
    for a layer users do not name.
``instance_state`` (channel mixin)
    names of the per-connection attributes the mixin keeps (most with a
    class default).  On CPython 3.11 and 3.12 a composed class holds them
    in slots, each set to its class default before any ``__init__`` runs,
    so that a channel's ``__dict__`` keeps only the stdlib's attributes
    and CPython shares one table of names among all channels (~1.2 KiB
    less per connection); on 3.13, in one slotted object per channel,
    behind properties, with the same effect (see ``_COLD``).  Either way
    they read, write, delete and patch as instance attributes, except
    that a deleted one is missing (AttributeError), not its class default.
    A name some other class of the composition defines without listing it
    (a user's class attribute) is left alone.
``composed_base`` (composed class)
    the class a composed class was built on.

A refused composition raises :class:`CompositionError` (a TypeError) when
the server class is defined, naming both mixins concerned.

The state the layers share (TLS active, the authenticated user, the PROXY
balancer's address, "receiving a message", "closing", the one deadline,
the clock) and the hooks several layers extend are declared on the
session, :class:`smtpd_compat.session.SessionStateMixin`, which every
composed channel class has innermost.

* :func:`channel_class_for` (called once per server, by
  :class:`CapabilityServerMixin`) builds the channel class: the channel
  mixins of every server mixin in the server's MRO, ordered by layer, with
  the session innermost, in front of the server's own ``channel_class``
  (the user's, an ``LMTPChannel``, ...).  Mixins the base channel class
  already has are not added twice.
* :func:`compose_server` (used by the CLI and the pytest plugin) puts
  server mixins in layer order in front of a base class.
* :func:`derive` is the one place a class is built: composed classes are
  kept while something uses them and shared meanwhile (every server of one
  composition has the same channel class), and freed with the user's
  class.

Settings follow one rule, :func:`setting`: the keyword when it was given,
else the user's class attribute of that name, else the capability's
default (:data:`UNSET` as a keyword's default means "not given";
:data:`REQUIRED` means "not given, and there is no default").

The stdlib contract is unchanged: subclass ``SMTPServer``, set
``channel_class``, override ``smtp_VERB``; the user's channel class ends up
innermost, behind every capability.
"""
import enum
import sys
import threading
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List,
                    Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union)

import smtpd_compat as _smtpd
from smtpd_compat.session import LAYERS, SessionStateMixin

if TYPE_CHECKING:
    from typing_extensions import Final
    # Every class this mixin is composed into is an SMTPServer; at run
    # time it is a plain mixin.
    from smtpd_compat import SMTPServer as _ServerBase
else:
    _ServerBase = object

__all__ = ['CapabilityServerMixin', 'CompositionError', 'LAYERS', 'UNSET',
           'REQUIRED', 'Unset', 'add_channel_mixin', 'channel_class_for',
           'compose_server', 'derive', 'setting', 'settings']

_T = TypeVar('_T')
_C = TypeVar('_C', bound=type)

# The capability to add for each layer (named, not imported: this module
# sits below the capabilities), for the message of a missing layer.
_PROVIDERS = {
    'proxy': 'smtpd_compat.proxy_protocol.ProxyProtocolServerMixin',
    'session_log': 'smtpd_compat.logging_.SessionLogServerMixin',
    'limits': 'smtpd_compat.limits.LimitsServerMixin',
    'tls': 'smtpd_compat.tls.TLSServerMixin',
    'auth': 'smtpd_compat.auth.AuthServerMixin',
    'threads': 'smtpd_compat.threads.OffloadServerMixin',
    'extensions': 'smtpd_compat.extensions.ExtensionsMixin',
}


class CompositionError(TypeError):
    """Capabilities that cannot be composed: two mixins claim one layer, or
    a mixin needs a layer that nothing provides."""


# -- settings -------------------------------------------------------------------

class Unset(enum.Enum):
    """The type of :data:`UNSET` and :data:`REQUIRED`, the defaults of
    capability keywords.  A keyword is typed ``Union[X, Unset]``; after
    :func:`setting` it is an ``X``."""

    UNSET = 'UNSET'
    REQUIRED = 'REQUIRED'

    def __repr__(self) -> str:
        return self.value

    def __bool__(self) -> bool:
        return False


#: Default of a capability keyword: not given (then the user's class
#: attribute of that name, else the capability's default).
UNSET: 'Final' = Unset.UNSET
#: Default of a capability keyword that has no default: not given (then
#: the user's class attribute of that name, else a TypeError).
REQUIRED: 'Final' = Unset.REQUIRED


def setting(server: object, name: str, given: Union[_T, Unset],
            default: Union[_T, Unset]) -> _T:
    """The value of the capability setting ``name`` for ``server``: the
    keyword value ``given`` when it was passed, else the attribute ``name``
    of the server's class when a class in its MRO defines one (the user's
    class, or a capability class that sets its own default, such as
    ``SubmissionServer.auth_required``), else ``default``.  A default of
    :data:`REQUIRED` raises TypeError when neither was given."""
    if not isinstance(given, Unset):
        return given
    value = getattr(type(server), name, default)
    if isinstance(value, Unset):
        raise TypeError('%s needs %s= (a keyword, or an attribute of the '
                        'class)' % (type(server).__name__, name))
    # The class attribute is the user's: its type is theirs to get right.
    return value


def settings(server: object, given: Mapping[str, Any],
             defaults: Mapping[str, Any]) -> Dict[str, Any]:
    """:func:`setting` for each entry of ``defaults``, set on ``server`` as
    an attribute of that name; returns the values."""
    values: Dict[str, Any] = {}
    for name, default in defaults.items():
        value: Any = setting(server, name, given.get(name, UNSET), default)
        values[name] = value
        setattr(server, name, value)
    return values


# -- building classes -------------------------------------------------------------

# (id(base), ids of the mixins, name) -> the class derive() built.  Weak
# values: a class is kept while servers, channels or the user's own class
# use it, and freed with them.  The key holds ids, not the classes: the
# built class holds its bases, so the ids are unique while the entry lives,
# and a key holding the user's class would keep it alive until a second
# garbage collection.
_cache: 'weakref.WeakValueDictionary[Tuple[int, Tuple[int, ...], Optional[str]], type]' = \
    weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def derive(base: _C, mixins: Sequence[type] = (), name: Optional[str] = None) -> _C:
    """The subclass of ``base`` with ``mixins`` in front, in the given
    order: the one place a class is built.  Named ``name``, else after the
    capabilities (``ProxyLimitsSMTPChannel``); reported as belonging to
    ``base``'s module (tracebacks name the user's module, not this one).
    One class per (base, mixins, name) while it is in use."""
    mixins = tuple(mixins)
    key = (id(base), tuple(map(id, mixins)), name)
    with _cache_lock:
        cls = _cache.get(key)
        if cls is None:
            if name is None:
                name = ''.join(getattr(m, 'capability_name', '')
                               for m in mixins) + base.__name__
            namespace: Dict[str, Any] = {
                '__module__': base.__module__,
                '__qualname__': name,
                'composed_base': base,
                '__doc__': base.__doc__,
            }
            state = _layer_state(mixins, base) if _SLOTS or _COLD else ()
            if state and _COLD:
                _add_cold_state(namespace, mixins, base, state)
            elif state:
                namespace['__slots__'] = state
            cls = type(base)(name, mixins + (base,), namespace)
            if state and _SLOTS:
                _initialise_state(cls, state)
            _cache[key] = cls
    return cls  # type: ignore[return-value]


# Idle memory (issue 20), as for the core's own state (SMTPChannel.__slots__):
# on CPython 3.11 and 3.12 instances of a class share one table of attribute
# names only while their __dict__ holds at most 29 names, and the layers'
# per-connection state would take a channel past that.  A composed class
# therefore keeps the names its mixins list in ``instance_state`` in slots,
# each set to its class default before any __init__ runs.  That costs
# nothing per message there (~24,000 instructions more per connection, for
# ~1.5 KiB less memory).  Not on 3.13: a channel with slots keeps its
# attributes in a dict whose keys are shared, and 3.13 does not specialise
# attribute access through such a dict: +4.6% instructions per message even
# with the core's state slotted as well (docs/performance.rst).
_SLOTS = (3, 11) <= sys.version_info < (3, 13)
# On 3.13 a channel keeps its attributes inline (no dict of its own, 1.5
# KiB less per connection) only while it has at most 29 of them, and the
# core's own take 28 (see SMTPChannel.__slots__); the production channel's
# layers added 12 more at once, and more as the session went on.  So there
# a composed class keeps those names, as the core keeps its rarely used
# ones, in properties over one slotted object per channel (a subclass of
# the core's _ColdState, with a slot for each, which starts at its class
# default as a slot of 3.11 does): the channel's __dict__ then holds the
# core's names alone, for every composition, from __init__ on.  Reading
# the layers' state that way costs less than it did as instance
# attributes: 3.13 does not specialise access to an instance attribute
# that a class attribute of the same name shadows, which is what a layer's
# state with a class default was, while a property over a slot is
# specialised (the accessors are compiled for each name and composition);
# with the inline values this made W6 (the whole capability stack) ~6%
# cheaper per message on 3.13.
_COLD = sys.version_info >= (3, 13) and hasattr(_smtpd.SMTPChannel, '_cold_type')


def _layer_state(mixins: Sequence[type], base: type) -> Tuple[str, ...]:
    """The names the mixins list in ``instance_state``, less those some
    other class of the composition defines without listing (a user's class
    attribute, or a slot or property of an earlier composition): they stay
    where they are."""
    classes = [c for m in mixins for c in m.__mro__] + list(base.__mro__)
    listed = {name for c in classes
              for name in c.__dict__.get('instance_state', ())}
    kept = [name for name in sorted(listed)
            if all(name not in c.__dict__ or name in c.__dict__.get('instance_state', ())
                   for c in classes)]
    return tuple(kept)


def _defaults(classes: Iterable[type], state: Sequence[str]) -> Dict[str, Any]:
    """The class default of each name of ``state`` that has one: the first
    of ``classes`` (in MRO order) that defines it.  (A name without a class
    default is the mixin's own __init__'s to set.)"""
    classes = list(classes)
    defaults = {}
    for name in state:
        for c in classes:
            if name in c.__dict__:
                defaults[name] = c.__dict__[name]
                break
    return defaults


def _set_defaults_first(cls: type, defaults: Mapping[str, Any],
                        then: bool = True) -> None:
    """Give ``cls`` an ``__init__`` that sets each attribute of
    ``defaults`` on self, then (``then``) goes on to the next __init__.
    Plain assignments compiled once per class: CPython specialises them to
    direct slot stores, where a loop over descriptors costs ~10x more per
    connection."""
    lines = ['def __init__(self, *args, **kwargs):']
    lines += ['    self.%s = _defaults[%r]' % (name, name) for name in defaults]
    if then:
        lines += ['    super(_cls, self).__init__(*args, **kwargs)']
    lines += ['    pass']      # (for a state without defaults)
    namespace: Dict[str, Any] = {'_defaults': dict(defaults), '_cls': cls}
    exec(compile('\n'.join(lines), '<%s.__init__>' % cls.__qualname__, 'exec'), namespace)
    init = namespace['__init__']
    init.__qualname__ = cls.__qualname__ + '.__init__'
    # For inspect.signature(): the arguments are the next __init__'s.
    klass: Any = cls
    init.__wrapped__ = super(klass, klass).__init__
    setattr(cls, '__init__', init)


def _initialise_state(cls: type, state: Sequence[str]) -> None:
    """Give ``cls`` (built with ``state`` in slots) an __init__ that sets
    each slot to the class default its MRO had for that name, then goes on
    to the next __init__."""
    defaults = _defaults(cls.__mro__[1:], state)
    if defaults:
        _set_defaults_first(cls, defaults)


def _add_cold_state(namespace: Dict[str, Any], mixins: Sequence[type],
                    base: type, state: Sequence[str]) -> None:
    """Put the names of ``state`` in the ``namespace`` of the class being
    composed (on 3.13, see _COLD) as properties over its cold state, whose
    type (``_cold_type``, with a slot for each name, set to its class
    default when it is made) goes in the namespace too."""
    classes = [c for m in mixins for c in m.__mro__] + list(base.__mro__)
    parent: type = getattr(base, '_cold_type')
    kind = type(namespace['__qualname__'] + '_ColdState', (parent,),
                {'__slots__': tuple(state), '__module__': __name__})
    # (The core's _ColdState has no defaults to set: no call to it.)
    _set_defaults_first(kind, _defaults(classes, state),
                        then=parent is not _smtpd._ColdState)
    namespace['_cold_type'] = kind
    for name in state:
        namespace[name] = _smtpd._cold_attribute(name, class_default=False, kind=kind)


def _layer(mixin: Any) -> int:
    return getattr(mixin, 'layer', 50)


def _layer_name(number: int) -> str:
    for name, value in LAYERS.items():
        if value == number:
            return '%d (%s)' % (number, name)
    return str(number)


def _declared_mixins(server_type: type, extra: Iterable[type] = ()
                     ) -> List[Tuple[type, str]]:
    """(channel mixin, who asked for it) for the server mixins in
    ``server_type``'s MRO (plus ``extra``), outermost first; refuses two
    mixins claiming one layer."""
    found: List[Tuple[type, str]] = []
    for cls in server_type.__mro__:
        mixin = cls.__dict__.get('channel_mixin')
        if mixin is not None and all(m is not mixin for m, _ in found):
            found.append((mixin, cls.__name__))
    for mixin in extra:
        if all(m is not mixin for m, _ in found):
            found.append((mixin, 'add_channel_mixin()'))
    # sorted() is stable: equal layers keep MRO order (and are refused).
    found.sort(key=lambda entry: _layer(entry[0]))
    for (first, by_first), (second, by_second) in zip(found, found[1:]):
        if _layer(first) == _layer(second) and not (
                issubclass(first, second) or issubclass(second, first)):
            raise CompositionError(
                '%s (from %s) and %s (from %s) both claim layer %s of %s: '
                'their order would be undefined; give one its own layer'
                % (first.__name__, by_first, second.__name__, by_second,
                   _layer_name(_layer(first)), server_type.__name__))
    return found


def _check_requires(server_type: type, channel: type,
                    mixins: Sequence[Tuple[type, str]]) -> None:
    """Refuse a channel mixin whose ``requires`` names a layer that the
    channel class ``channel`` (composed or to be composed) lacks."""
    classes = list(channel.__mro__)
    for mixin, _ in mixins:
        classes.extend(mixin.__mro__)
    present = {c.__dict__['layer'] for c in classes if 'layer' in c.__dict__}
    for mixin, by in mixins:
        for name in getattr(mixin, 'requires', ()):
            if name not in LAYERS:
                raise CompositionError('%s requires the layer %r, which is '
                                       'not one of %s' % (mixin.__name__, name,
                                                          sorted(LAYERS)))
            if LAYERS[name] not in present:
                provider = _PROVIDERS.get(name, 'a capability with that layer')
                raise CompositionError(
                    '%s (from %s) needs the %r layer, which %s does not '
                    'compose: add %s' % (mixin.__name__, by, name,
                                         server_type.__name__, provider))


def _base_channel(channel_class: type) -> type:
    """The class a composed channel class was built on (itself otherwise)."""
    base: type = channel_class.__dict__.get('composed_base', channel_class)
    return base


def channel_class_for(server_type: type, channel_class: Type[_T],
                      extra: Iterable[type] = ()) -> Type[_T]:
    """The channel class a server of ``server_type`` whose own channel class
    is ``channel_class`` uses: see the module docstring."""
    base = _base_channel(channel_class)
    declared = [entry for entry in _declared_mixins(server_type, extra)
                if not issubclass(base, entry[0])]
    _check_requires(server_type, base, declared)
    mixins = [m for m, _ in declared]
    if not issubclass(base, SessionStateMixin):
        mixins.append(SessionStateMixin)
    return derive(base, mixins)


def compose_server(base: _C, mixins: Iterable[type], name: Optional[str] = None) -> _C:
    """``base`` with the server mixins ``mixins`` in front of it, in layer
    order (those ``base`` already has are left out).  The one way the CLI
    and the pytest plugin build a server class."""
    unique: List[type] = []
    for mixin in mixins:
        if not issubclass(base, mixin) and mixin not in unique:
            unique.append(mixin)
    unique.sort(key=lambda m: _layer(getattr(m, 'channel_mixin', None)))
    if not unique:
        return base
    cls = derive(base, unique)
    if name is not None and cls.__name__ != name:
        cls = derive(cls, (), name)
    return cls


# -- the server side --------------------------------------------------------------

class CapabilityServerMixin(_ServerBase):
    """Base of every capability's server mixin: builds the channel class
    once, before the listening socket exists (so no connection can see a
    half-built one), and checks the composition when a server class is
    defined.  A subclass sets :attr:`channel_mixin`; it never calls
    :func:`add_channel_mixin` itself."""

    #: The channel mixin this capability adds (None: none).
    channel_mixin: Optional[type] = None
    # What add_channel_mixin() added on this server.
    _extra_channel_mixins: Tuple[type, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if issubclass(cls, _smtpd.SMTPServer):
            # A server class (not a mixin in the making): refused now, not
            # when the first server is built.
            channel = _base_channel(cls.channel_class)
            declared = [entry for entry in _declared_mixins(cls)
                        if not issubclass(channel, entry[0])]
            _check_requires(cls, channel, declared)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.channel_class = channel_class_for(
            type(self), self.channel_class, self._extra_channel_mixins)
        super().__init__(*args, **kwargs)

    def add_close_callback(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` when this server's listening socket closes
        (after it closed; in the order added).  A capability that starts
        something per server (the worker threads) stops it here."""
        self.__dict__.setdefault('_close_callbacks', []).append(callback)

    def close(self) -> None:
        super().close()
        for callback in self.__dict__.pop('_close_callbacks', ()):
            callback()


def add_channel_mixin(server: CapabilityServerMixin, mixin: type) -> None:
    """Add ``mixin`` to ``server``'s channel class at its layer (for code
    that decides at run time; a server mixin declares ``channel_mixin``
    instead)."""
    extra = server._extra_channel_mixins + (mixin,)
    server.channel_class = channel_class_for(type(server),
                                             server.channel_class, extra)
    server._extra_channel_mixins = extra

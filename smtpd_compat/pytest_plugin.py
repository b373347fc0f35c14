"""pytest fixtures: an SMTP server that catches mail in tests.

Installed with smtpd-compat and registered through the ``pytest11`` entry
point, so no conftest is needed::

    import smtplib

    def test_welcome_mail(smtpd):
        with smtplib.SMTP(smtpd.host, smtpd.port) as client:
            client.sendmail('app@example.org', ['new@example.org'],
                            'Subject: Welcome\\r\\n\\r\\nHello!\\r\\n')
        assert smtpd.messages[0]['Subject'] == 'Welcome'

The fixture is a started :class:`smtpd_compat.controller.Controller` with a
capturing server, one per test, on a free port (so pytest-xdist workers never
collide).  Its own name is ``smtpd_compat_server``; it is also offered as
``smtpd`` unless another plugin (smtpdfix's, for one) already provides a
fixture of that name: an installed dependency never takes another plugin's
fixture away.  The ini option ``smtpd_compat_alias`` changes that rule:
``auto`` (the default, as described), ``always`` (``smtpd`` is ours even
beside another plugin's) or ``never`` (only ``smtpd_compat_server``).

Configure it with the ``smtpd`` marker, or by indirect parametrisation
(under the name the test uses) with a dict of the same keywords::

    @pytest.mark.smtpd(decode_data=True, data_size_limit=1000)
    def test_x(smtpd): ...

    @pytest.mark.parametrize('smtpd', [{}, {'enable_SMTPUTF8': True}],
                             indirect=True)
    def test_y(smtpd): ...

Keywords: ``server_class`` (an SMTPServer subclass, capture is added on top
of it), ``hostname``, ``port``, ``remoteaddr``, ``ready_timeout``, and any
keyword the server class takes (``data_size_limit``, ``enable_SMTPUTF8``,
``decode_data``, ``reply``, and those of capability classes).  Giving
``tls_context`` adds :class:`smtpd_compat.tls.TLSServerMixin`, giving
``authenticator`` adds :class:`smtpd_compat.auth.AuthServerMixin`, giving
``web`` (e.g. ``('127.0.0.1', 0)``) adds the web inbox
(:class:`smtpd_compat.web.WebInboxServerMixin`; its URL is
``smtpd.web_url``) (unless the server class has them already); their other keywords
(``implicit_tls``, ``auth_required``, ``auth_allow_plaintext`` ...) pass
through.  Markers on a class or module apply too; the closest wins per
keyword, and parametrisation wins over markers.

PYTEST_DONT_REWRITE: this module has no asserts to rewrite, and the marker
spares a warning when it was imported before pytest loads it as a plugin.
"""
# Nothing from smtpd_compat is imported at module level: pytest imports
# every plugin at start-up, and a test session that never asks for the
# fixture should not pay for (or be disturbed by) asyncore and the server
# code.
from __future__ import annotations

import sys
from typing import (TYPE_CHECKING, Any, Dict, Iterator, List, Optional,
                    Tuple, Type)

import pytest

if TYPE_CHECKING:
    import smtpd_compat
    from smtpd_compat.controller import Controller

__all__ = ['smtpd_compat_server']

_MARKER_HELP = (
    'smtpd(**kwargs): configure the smtpd (smtpd_compat_server) fixture: '
    'server_class, hostname, port, remoteaddr, ready_timeout, and the '
    'server class keywords '
    '(data_size_limit, enable_SMTPUTF8, decode_data, reply, ...)')


_ALIAS = 'smtpd'
_ALIAS_MODES: Tuple[str, ...] = ('auto', 'always', 'never')
_ALIAS_PLUGIN = 'smtpd_compat.smtpd_alias'
# The plugins found to provide their own "smtpd", for the report header.
_OWNERS_KEY: pytest.StashKey[List[str]] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        'smtpd_compat_alias',
        'offer smtpd_compat_server also as the "smtpd" fixture: auto (unless '
        'another plugin such as smtpdfix provides "smtpd"), always, never',
        default='auto')


def pytest_configure(config: pytest.Config) -> None:
    # Registered so that --strict-markers accepts @pytest.mark.smtpd.
    config.addinivalue_line('markers', _MARKER_HELP)
    mode = (config.getini('smtpd_compat_alias') or 'auto').strip().lower()
    if mode not in _ALIAS_MODES:
        raise pytest.UsageError(
            'smtpd_compat_alias must be one of %s, not %r'
            % (', '.join(_ALIAS_MODES), mode))
    # Every plugin of the run (entry points, -p, initial conftests) is
    # registered by now; pytest parses the fixtures of a plugin registered
    # later as well, so the alias can be added here or left out.
    owners = _other_providers(config)
    config.stash[_OWNERS_KEY] = owners
    if mode == 'always' or (mode == 'auto' and not owners):
        config.pluginmanager.register(_SmtpdAlias(), _ALIAS_PLUGIN)


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    owners = config.stash.get(_OWNERS_KEY, None)
    if owners and not config.pluginmanager.has_plugin(_ALIAS_PLUGIN):
        return ('smtpd_compat: fixture smtpd_compat_server ("smtpd" is %s\'s)'
                % owners[0])
    return None


def _is_fixture(obj: object) -> bool:
    try:
        from _pytest.fixtures import getfixturemarker
    except ImportError:      # a future pytest: look the way pytest 7/8 do
        return (hasattr(obj, '_pytestfixturefunction')
                or type(obj).__name__ == 'FixtureFunctionDefinition')
    try:
        return getfixturemarker(obj) is not None
    except Exception:
        return False


def _other_providers(config: pytest.Config) -> List[str]:
    """Names of the registered plugins (or their distributions), other
    than this one, that define a fixture named ``smtpd``."""
    owners: List[str] = []
    this = sys.modules[__name__]
    # Name a plugin by its distribution where it has one ("smtpdfix", not
    # its entry point's name "smtpd").
    dists: Dict[int, Optional[str]] = {}
    for plugin, dist in config.pluginmanager.list_plugin_distinfo():
        dists[id(plugin)] = getattr(dist, 'project_name', None)
    for name, plugin in config.pluginmanager.list_name_plugin():
        if plugin is None or plugin is this or isinstance(plugin, _SmtpdAlias):
            continue
        try:
            candidate = getattr(plugin, _ALIAS, None)
        except Exception:       # a plugin object with a strict __getattr__
            continue
        if candidate is not None and _is_fixture(candidate):
            owners.append(str(dists.get(id(plugin)) or name))
    return owners


def _options(request: pytest.FixtureRequest) -> Dict[str, Any]:
    """The fixture's keywords: markers from the farthest (module) to the
    closest (function), then the indirect parameter."""
    options: Dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers('smtpd'))):
        if marker.args:
            raise TypeError('@pytest.mark.smtpd takes keywords only, got '
                            'positional %r' % (marker.args,))
        options.update(marker.kwargs)
    param = getattr(request, 'param', None)
    if param is not None:
        if not isinstance(param, dict):
            raise TypeError('parametrize the smtpd fixture with dicts of '
                            'keywords, not %r' % (param,))
        options.update(param)
    return options


# Keywords that bring a capability's server mixin along, so that
# @pytest.mark.smtpd(tls_context=ctx) works without naming a server class.
_MIXIN_KEYWORDS: Tuple[Tuple[str, str, str], ...] = (
    ('authenticator', 'smtpd_compat.auth', 'AuthServerMixin'),
    ('tls_context', 'smtpd_compat.tls', 'TLSServerMixin'),
)


def _server_class(options: Dict[str, Any]
                  ) -> Type[smtpd_compat.SMTPServer]:
    """The capturing server class for the fixture's keywords (pops
    ``server_class``)."""
    import importlib

    import smtpd_compat
    from smtpd_compat.compose import compose_server
    from smtpd_compat.controller import CapturingServer, with_capture

    base: Optional[Type[smtpd_compat.SMTPServer]] = options.pop(
        'server_class', None)
    mixins = []
    for keyword, module, name in _MIXIN_KEYWORDS:
        if keyword in options:
            mixin = getattr(importlib.import_module(module), name)
            if base is None or not issubclass(base, mixin):
                mixins.append(mixin)
    if not mixins:
        return with_capture(base or CapturingServer)
    base = base or smtpd_compat.SMTPServer
    return with_capture(compose_server(base, mixins))


def _serve(request: pytest.FixtureRequest) -> Iterator[Controller]:
    from smtpd_compat.controller import Controller

    options = _options(request)
    server_class = _server_class(options)
    controller = Controller(server_class, **options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def smtpd_compat_server(request: pytest.FixtureRequest
                        ) -> Iterator[Controller]:
    """A started Controller with a capturing SMTP server on a free port.

    ``.host``, ``.port``: where to send; ``.messages``: what arrived
    (``messages[0]['Subject']``, ``.mailfrom``, ``.rcpttos``, ``.data``
    ...; ``messages == []`` when nothing did); ``.clear()``;
    ``.wait_for(n, timeout)`` for mail sent asynchronously.  Stopped after
    the test.  Also offered as ``smtpd`` (see the module's documentation).
    """
    yield from _serve(request)


class _SmtpdAlias:
    """The plugin that offers ``smtpd_compat_server`` as ``smtpd`` too; a
    fixture of its own rather than a wrapper, so that indirect
    parametrisation of ``smtpd`` reaches it."""

    @pytest.fixture
    def smtpd(self, request: pytest.FixtureRequest) -> Iterator[Controller]:
        """smtpd_compat's capturing server (``smtpd_compat_server``)."""
        yield from _serve(request)

"""The ``smtpd`` pytest fixture: an SMTP server that catches mail in tests.

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
collide).  Configure it with the ``smtpd`` marker, or by indirect
parametrisation with a dict of the same keywords::

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
# every plugin at start-up, and a test session that never asks for `smtpd`
# should not pay for (or be disturbed by) asyncore and the server code.
import pytest

__all__ = ['smtpd']

_MARKER_HELP = (
    'smtpd(**kwargs): configure the smtpd fixture: server_class, hostname, '
    'port, remoteaddr, ready_timeout, and the server class keywords '
    '(data_size_limit, enable_SMTPUTF8, decode_data, reply, ...)')


def pytest_configure(config):
    # Registered so that --strict-markers accepts @pytest.mark.smtpd.
    config.addinivalue_line('markers', _MARKER_HELP)


def _options(request):
    """The fixture's keywords: markers from the farthest (module) to the
    closest (function), then the indirect parameter."""
    options = {}
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
_MIXIN_KEYWORDS = (
    ('authenticator', 'smtpd_compat.auth', 'AuthServerMixin'),
    ('tls_context', 'smtpd_compat.tls', 'TLSServerMixin'),
)


def _server_class(options):
    """The capturing server class for the fixture's keywords (pops
    ``server_class``)."""
    import importlib

    import smtpd_compat
    from smtpd_compat._compose import compose_server
    from smtpd_compat.controller import CapturingServer, with_capture

    base = options.pop('server_class', None)
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


@pytest.fixture
def smtpd(request):
    """A started Controller with a capturing SMTP server on a free port.

    ``smtpd.host``, ``smtpd.port``: where to send; ``smtpd.messages``: what
    arrived (``smtpd.messages[0]['Subject']``, ``.mailfrom``, ``.rcpttos``,
    ``.data`` ...); ``smtpd.clear()``; ``smtpd.wait_for(n, timeout)`` for
    mail sent asynchronously.  Stopped after the test.
    """
    from smtpd_compat.controller import Controller

    options = _options(request)
    server_class = _server_class(options)
    controller = Controller(server_class, **options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()

# Types of the pytest plugin (the smtpd_compat_server fixture, also offered
# as smtpd where no other plugin provides one).
from collections.abc import Iterator
from typing import Any

import pytest

import smtpd_compat as _smtpd
from smtpd_compat.controller import Controller

__all__ = ["smtpd_compat_server"]

_MARKER_HELP: str
_ALIAS: str
_ALIAS_MODES: tuple[str, ...]
_ALIAS_PLUGIN: str
_OWNERS_KEY: pytest.StashKey[list[str]]
_MIXIN_KEYWORDS: tuple[tuple[str, str, str], ...]

def pytest_addoption(parser: pytest.Parser) -> None: ...
def pytest_configure(config: pytest.Config) -> None: ...
def pytest_report_header(config: pytest.Config) -> str | None: ...
def _is_fixture(obj: object) -> bool: ...
def _other_providers(config: pytest.Config) -> list[str]: ...
def _options(request: pytest.FixtureRequest) -> dict[str, Any]: ...
def _server_class(options: dict[str, Any]) -> type[_smtpd.SMTPServer]: ...
def _serve(request: pytest.FixtureRequest) -> Iterator[Controller]: ...

# A started Controller with a capturing server; stopped after the test.
@pytest.fixture
def smtpd_compat_server(request: pytest.FixtureRequest) -> Iterator[Controller]: ...

class _SmtpdAlias:
    @pytest.fixture
    def smtpd(self, request: pytest.FixtureRequest) -> Iterator[Controller]: ...

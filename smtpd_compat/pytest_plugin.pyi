# Types of the pytest plugin (the smtpd fixture).
from collections.abc import Iterator
from typing import Any

import pytest

import smtpd_compat as _smtpd
from smtpd_compat.controller import Controller

__all__ = ["smtpd"]

_MARKER_HELP: str
_MIXIN_KEYWORDS: tuple[tuple[str, str, str], ...]

def pytest_configure(config: pytest.Config) -> None: ...
def _options(request: pytest.FixtureRequest) -> dict[str, Any]: ...
def _server_class(options: dict[str, Any]) -> type[_smtpd.SMTPServer]: ...

# A started Controller with a capturing server; stopped after the test.
@pytest.fixture
def smtpd(request: pytest.FixtureRequest) -> Iterator[Controller]: ...

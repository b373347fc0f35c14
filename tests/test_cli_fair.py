"""The command-line options of issue 21: --max-message-memory (a limit:
production mode) and --handler-timeout (the worker pool's)."""
import pytest

from test_cli import _configured, _production
from smtpd_compat.limits import PRODUCTION_DEFAULTS
from smtpd_compat.threads import PoolServerMixin, ThreadedServerMixin


@pytest.mark.parametrize('text, size', [('1048576', 1 << 20), ('64M', 64 << 20)])
def test_max_message_memory_is_a_limit(text, size):
    cli = _configured(['--max-message-memory', text])
    assert _production(cli)
    assert cli.server_kwargs['max_message_memory'] == size


def test_production_default_budget():
    assert PRODUCTION_DEFAULTS['max_message_memory'] == 128 << 20
    cli = _configured(['--production'])
    assert 'max_message_memory' not in cli.server_kwargs    # the default applies


def test_handler_timeout_alone_adds_the_pool_settings():
    cli = _configured(['--handler-timeout', '2.5'])
    assert cli.server_kwargs['handler_timeout'] == 2.5
    assert PoolServerMixin in cli.mixins and not _production(cli)


def test_handler_timeout_with_threads():
    cli = _configured(['--threads', '2', '--handler-timeout', '3'])
    assert ThreadedServerMixin in cli.mixins and PoolServerMixin not in cli.mixins
    assert cli.server_kwargs['handler_timeout'] == 3.0


@pytest.mark.parametrize('argv', [['--handler-timeout', '0'],
                                  ['--handler-timeout', 'x'],
                                  ['--max-message-memory', 'lots']])
def test_bad_values_are_usage_errors(argv):
    with pytest.raises(SystemExit):
        _configured(argv)

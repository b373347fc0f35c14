"""The ``smtpd`` pytest fixture, used the way a project would use it.

Small projects' test files run under pytester against the plugin; the
plugin is loaded through its ``pytest11`` entry point when smtpd-compat is
installed, and with ``-p`` from a checkout.
"""
import importlib.util
import logging
import logging.handlers
import os
import sys

import pytest

import smtpd_compat
from smtpd_compat import pytest_plugin

from conftest import REQUIRE_TOOLS

pytest_plugins = ['pytester']

# This module uses the fixture itself too.  Bound by assignment rather than
# loaded as a plugin, which would clash with the entry point when installed.
smtpd = pytest_plugin.smtpd_compat_server

PLUGIN = 'smtpd_compat.pytest_plugin'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(smtpd_compat.__file__)))
# The checkout this file belongs to (what the smtpdfix venv installs).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _entry_point_installed():
    # Every distribution, as pytest loads plugins (a checkout's egg-info on
    # sys.path does not hide an installed copy from pytest).
    from importlib.metadata import distributions
    return any(ep.group == 'pytest11' and ep.value.strip() == PLUGIN
               for dist in distributions() for ep in dist.entry_points)


# The inner runs load no plugin of this environment but the ones named
# (pytest-benchmark, for one, warns under xdist), and are as strict as this
# suite: any warning is an error.
STRICT = ['-p', PLUGIN, '-W', 'error', '--strict-markers', '-p', 'no:cacheprovider']


@pytest.fixture(autouse=True)
def no_plugin_autoload(monkeypatch):
    monkeypatch.setenv('PYTEST_DISABLE_PLUGIN_AUTOLOAD', '1')


SEND = '''
import smtplib

def send(smtpd, message='Subject: hi\\r\\n\\r\\nbody\\r\\n', **kwargs):
    with smtplib.SMTP(smtpd.host, smtpd.port, timeout=10) as client:
        client.sendmail('app@example.org', ['user@example.org'], message,
                        **kwargs)
'''


@pytest.fixture
def subprocess_env(monkeypatch):
    """Subprocess runs import this checkout's smtpd_compat."""
    monkeypatch.setenv('PYTHONPATH', ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))


def test_the_three_line_test(pytester):
    pytester.makepyfile(SEND + '''
def test_welcome_mail(smtpd):
    send(smtpd, 'Subject: Welcome\\r\\n\\r\\nHello!\\r\\n')
    assert smtpd.messages[0]["Subject"] == "Welcome"
''')
    result = pytester.runpytest(*STRICT)
    result.assert_outcomes(passed=1)


def test_messages_compare_to_lists_and_say_when_none_arrived(pytester):
    pytester.makepyfile(SEND + '''
import pytest

def test_empty_then_one(smtpd):
    assert smtpd.messages == []
    with pytest.raises(IndexError, match=r'^no message has arrived .*wait_for'):
        smtpd.messages[0]
    send(smtpd)
    assert smtpd.messages == [smtpd.messages[0]]
    assert smtpd.messages != []

def test_failing_comparison_shows_the_messages(smtpd):
    send(smtpd)
    assert smtpd.messages == []
''')
    result = pytester.runpytest(*STRICT)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines([r'.*assert Mailbox\(\[<Cap.*\]\) == \[\]$'])


def test_fixture_api_and_isolation_between_tests(pytester):
    pytester.makepyfile(SEND + '''
import threading
from smtpd_compat.controller import CapturedMessage

ports = []

def test_one(smtpd):
    ports.append(smtpd.port)
    send(smtpd)
    send(smtpd, 'Subject: second\\r\\n\\r\\nx\\r\\n')
    m = smtpd.messages[1]
    assert isinstance(m, CapturedMessage)
    assert (m.mailfrom, m.rcpttos, m["Subject"]) == (
        'app@example.org', ['user@example.org'], 'second')
    smtpd.clear()
    assert len(smtpd.messages) == 0
    threading.Thread(target=send, args=(smtpd,)).start()
    assert smtpd.wait_for(1, timeout=10)[0]["Subject"] == "hi"

def test_two_starts_empty_on_its_own_server(smtpd):
    assert len(smtpd.messages) == 0
    assert smtpd.host == '127.0.0.1' and smtpd.port > 0
    assert smtpd.port not in ports
''')
    result = pytester.runpytest(*STRICT)
    result.assert_outcomes(passed=2)


def test_markers_configure_the_server(pytester):
    pytester.makepyfile(SEND + '''
import smtplib
import pytest
import smtpd_compat

pytestmark = pytest.mark.smtpd(data_size_limit=1000)

def test_module_marker_applies(smtpd):
    assert smtpd.server.data_size_limit == 1000

@pytest.mark.smtpd(decode_data=True)
def test_decode_data(smtpd):
    send(smtpd)
    assert isinstance(smtpd.messages[0].data, str)

@pytest.mark.smtpd(data_size_limit=100)
def test_size_limit(smtpd):
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        send(smtpd, 'Subject: big\\r\\n\\r\\n' + 'x' * 200 + '\\r\\n')
    assert info.value.smtp_code == 552
    assert len(smtpd.messages) == 0

@pytest.mark.smtpd(enable_SMTPUTF8=True)
def test_smtputf8(smtpd):
    send(smtpd, 'Subject: Grüße\\r\\n\\r\\nx\\r\\n'.encode(), mail_options=['SMTPUTF8'])
    assert smtpd.messages[0]['Subject'] == 'Grüße'

@pytest.mark.smtpd(reply='451 Try again later')
def test_reply(smtpd):
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(smtpd)
    assert info.value.smtp_code == 451

@pytest.mark.smtpd(server_class=smtpd_compat.DebuggingServer)
def test_server_class_gets_capture(smtpd):
    assert isinstance(smtpd.server, smtpd_compat.DebuggingServer)
    send(smtpd)
    assert smtpd.messages[0]['Subject'] == 'hi'

@pytest.mark.smtpd(decode_data=True, data_size_limit=2000)
class TestClosestMarkerWins:
    @pytest.mark.smtpd(data_size_limit=5000)
    def test_merge(self, smtpd):
        assert smtpd.server.data_size_limit == 5000
        assert smtpd.server._decode_data is True

@pytest.mark.parametrize('smtpd', [{}, {'decode_data': True}],
                         indirect=True, ids=['bytes', 'str'])
def test_parametrised(smtpd, request):
    send(smtpd)
    expected = str if request.node.callspec.id == 'str' else bytes
    assert type(smtpd.messages[0].data) is expected
    assert smtpd.server.data_size_limit == 1000   # marker still applies

@pytest.mark.smtpd('positional')
def test_bad_marker(smtpd):
    pass
''')
    result = pytester.runpytest(*STRICT)
    result.assert_outcomes(passed=9, errors=1)
    result.stdout.fnmatch_lines(['*TypeError: @pytest.mark.smtpd takes keywords only*'])


def test_tls_and_auth_keywords(pytester):
    pytest.importorskip('trustme')
    pytester.makepyfile(SEND + '''
import smtplib
import ssl
import pytest
import trustme

ca = trustme.CA()
server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ca.issue_cert('127.0.0.1').configure_cert(server_context)
client_context = ssl.create_default_context()
ca.configure_trust(client_context)

def check(mechanism, login, password, channel):
    return (login, password) == ('ann', 's3cret')

@pytest.mark.smtpd(tls_context=server_context)
def test_starttls(smtpd):
    with smtplib.SMTP(smtpd.host, smtpd.port, timeout=10) as client:
        client.starttls(context=client_context)
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: tls\\r\\n\\r\\nx')
    assert smtpd.messages[0]['Subject'] == 'tls'
    assert smtpd.messages[0].auth_user is None

@pytest.mark.smtpd(tls_context=server_context, authenticator=check,
                   auth_required=True)
def test_auth(smtpd):
    with smtplib.SMTP(smtpd.host, smtpd.port, timeout=10) as client:
        client.starttls(context=client_context)
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail('a@example.org', ['b@example.org'], 'Subject: no\\r\\n\\r\\nx')
        assert info.value.smtp_code == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login('ann', 'wrong')
        client.login('ann', 's3cret')
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: auth\\r\\n\\r\\nx')
    assert [m['Subject'] for m in smtpd.messages] == ['auth']
    assert smtpd.messages[0].auth_user == 'ann'

@pytest.mark.smtpd(authenticator=check)
def test_auth_without_tls_is_a_configuration_error(smtpd):
    pass
''')
    result = pytester.runpytest(*STRICT)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(['*ValueError: AUTH is only offered over TLS*'])


def test_marker_is_registered(pytester):
    result = pytester.runpytest(*STRICT, '--markers')
    result.stdout.fnmatch_lines(['@pytest.mark.smtpd(**kwargs): configure the smtpd (smtpd_compat_server) fixture*'])


@pytest.mark.skipif(not _entry_point_installed(),
                    reason='smtpd-compat is not installed (a checkout)')
def test_entry_point_loads_the_plugin(pytester, monkeypatch):
    # What `pip install smtpd-compat` gives: no -p, no conftest.
    monkeypatch.delenv('PYTEST_DISABLE_PLUGIN_AUTOLOAD')
    # Under `pytest -n` this process is an xdist worker; the inner run is
    # not, but would read it from the environment (pytest-benchmark then
    # warns, and warnings are errors here).
    for name in ('PYTEST_XDIST_WORKER', 'PYTEST_XDIST_WORKER_COUNT',
                 'PYTEST_XDIST_TESTRUNUID'):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(SEND + '''
def test_x(smtpd):
    send(smtpd)
    assert smtpd.messages[0]["Subject"] == "hi"
''')
    pytester.runpytest('-p', 'no:cacheprovider').assert_outcomes(passed=1)


def test_startup_imports_nothing_heavy(pytester, subprocess_env):
    # A fresh process: the plugin is loaded, the server code is not, until
    # a test asks for the fixture.
    pytester.makepyfile(SEND + '''
import sys

def test_a_not_loaded_yet():
    assert 'smtpd_compat.controller' not in sys.modules

def test_b_loaded_on_use(smtpd):
    assert 'smtpd_compat.controller' in sys.modules
''')
    result = pytester.runpytest_subprocess(*STRICT, '-p', 'no:randomly')
    result.assert_outcomes(passed=2)


def test_under_xdist(pytester, subprocess_env):
    if importlib.util.find_spec('xdist') is None:
        message = 'pytest-xdist is not installed (it is in the test extra)'
        if REQUIRE_TOOLS:
            pytest.fail(message)
        pytest.skip(message)
    ran = pytester.mkdir('ran')
    pytester.makepyfile(SEND + '''
import os
import pytest

@pytest.mark.parametrize('n', range(8))
def test_each_worker_has_its_own_server(smtpd, n):
    send(smtpd, 'Subject: mail %%d\\r\\n\\r\\nx\\r\\n' %% n)
    assert [m["Subject"] for m in smtpd.messages] == ['mail %%d' %% n]
    # Record which process served it, to check that several workers did.
    open(os.path.join(%r, '%%d-%%d' %% (n, os.getpid())), 'w').close()
''' % str(ran))
    result = pytester.runpytest_subprocess(*STRICT, '-p', 'xdist.plugin', '-n', '4')
    result.assert_outcomes(passed=8)
    done = [name.split('-') for name in os.listdir(str(ran))]
    assert sorted(int(n) for n, pid in done) == list(range(8))
    assert len({pid for n, pid in done}) > 1


def test_logging_smtphandler_sends_real_mail(smtpd):
    handler = logging.handlers.SMTPHandler(
        mailhost=smtpd.address, fromaddr='app@example.org',
        toaddrs=['ops@example.org'], subject='Alert from the app', timeout=10)
    logger = logging.getLogger('test_pytest_plugin.alerts')
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.error('disk %s is full', '/var')
    finally:
        logger.removeHandler(handler)
        handler.close()
    m = smtpd.messages[0]
    assert m.mailfrom == 'app@example.org'
    assert m.rcpttos == ['ops@example.org']
    assert m['Subject'] == 'Alert from the app'
    assert m['To'] == 'ops@example.org'
    assert m.get_content().strip() == 'disk /var is full'


def test_fixture_in_this_suite(smtpd):
    # The plugin's fixture, bound above, is a started capturing Controller.
    assert smtpd.server is not None and len(smtpd.messages) == 0
    assert sys.modules['smtpd_compat.controller'].Controller is type(smtpd)


# -- living beside other plugins (smtpdfix) ---------------------------------

OTHER_PLUGIN = '''
import pytest

@pytest.fixture
def smtpd():
    return 'theirs'
'''

BOTH_NAMES = SEND + '''
from smtpd_compat.controller import Controller

def test_ours(smtpd_compat_server):
    assert isinstance(smtpd_compat_server, Controller)
    send(smtpd_compat_server)
    assert smtpd_compat_server.messages[0]["Subject"] == "hi"

def test_smtpd(smtpd):
    assert smtpd == 'theirs'
'''


def test_both_names_without_another_plugin(pytester):
    pytester.makepyfile(SEND + '''
import pytest
from smtpd_compat.controller import Controller

@pytest.mark.smtpd(data_size_limit=1234)
def test_same_fixture_two_names(smtpd, smtpd_compat_server):
    # Two servers (each name is its own fixture), both ours and configured.
    assert isinstance(smtpd, Controller) and isinstance(smtpd_compat_server, Controller)
    assert smtpd.port != smtpd_compat_server.port
    assert smtpd.server.data_size_limit == smtpd_compat_server.server.data_size_limit == 1234

@pytest.mark.parametrize('smtpd_compat_server', [{'decode_data': True}],
                         indirect=True)
def test_parametrised_by_its_own_name(smtpd_compat_server):
    send(smtpd_compat_server)
    assert isinstance(smtpd_compat_server.messages[0].data, str)
''')
    result = pytester.runpytest(*STRICT)
    result.assert_outcomes(passed=2)
    assert 'smtpd_compat:' not in result.stdout.str()


@pytest.mark.parametrize('order', ['ours-first', 'theirs-first'])
def test_another_plugins_smtpd_fixture_stays_theirs(pytester, order):
    pytester.makepyfile(other_plugin=OTHER_PLUGIN)
    pytester.makepyfile(BOTH_NAMES)
    pytester.syspathinsert()
    theirs = ['-p', 'other_plugin']
    args = STRICT + theirs if order == 'ours-first' else theirs + STRICT
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=2)
    # The header says where ours went.
    result.stdout.fnmatch_lines(
        ['smtpd_compat: fixture smtpd_compat_server ("smtpd" is other_plugin\'s)'])


def test_alias_always_and_never(pytester):
    pytester.makepyfile(other_plugin=OTHER_PLUGIN)
    pytester.syspathinsert()
    pytester.makepyfile(SEND + '''
from smtpd_compat.controller import Controller

def test_smtpd(smtpd):
    assert isinstance(smtpd, Controller)
''')
    always = pytester.runpytest(*STRICT, '-p', 'other_plugin', '-o',
                                'smtpd_compat_alias=always')
    always.assert_outcomes(passed=1)
    never = pytester.runpytest(*STRICT, '-o', 'smtpd_compat_alias=never')
    never.assert_outcomes(errors=1)
    never.stdout.fnmatch_lines(["*fixture 'smtpd' not found*"])
    bad = pytester.runpytest(*STRICT, '-o', 'smtpd_compat_alias=sometimes')
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(['*smtpd_compat_alias must be one of auto, always, never*'])


# A project as smtpdfix's users write them: the fixture's smtpdfix-only
# attribute (``config``) shows whose fixture the test got.
SMTPDFIX_PROJECT = '''
import smtplib

def test_smtpdfix_fixture(smtpd):
    assert type(smtpd).__module__.startswith('smtpdfix')
    assert smtpd.config is not None
    with smtplib.SMTP(smtpd.hostname, smtpd.port, timeout=10) as client:
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: fix\\r\\n\\r\\nx')
    assert smtpd.messages[0]['Subject'] == 'fix'

def test_ours_beside_it(smtpd_compat_server):
    with smtplib.SMTP(smtpd_compat_server.host, smtpd_compat_server.port,
                      timeout=10) as client:
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: ours\\r\\n\\r\\nx')
    assert smtpd_compat_server.messages[0]['Subject'] == 'ours'
'''

OURS_PROJECT = '''
import smtplib

def test_ours_as_smtpd(smtpd):
    assert type(smtpd).__module__ == 'smtpd_compat.controller'
    with smtplib.SMTP(smtpd.host, smtpd.port, timeout=10) as client:
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: ours\\r\\n\\r\\nx')
    assert smtpd.messages[0]['Subject'] == 'ours'
'''


def _unavailable(message):
    if REQUIRE_TOOLS:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope='module')
def smtpdfix_venv(tmp_path_factory):
    """A fresh virtual environment with smtpdfix and pytest from PyPI and
    this checkout installed (as ``pip install smtpd-compat`` would), so that
    both plugins load through their entry points.  Skips when PyPI cannot
    be reached (fails under SMTPD_COMPAT_REQUIRE_TOOLS=1)."""
    import subprocess
    import venv  # noqa: F401  (the module the next command runs)
    home = tmp_path_factory.mktemp('smtpdfix-venv')
    env_dir = home / 'venv'
    run = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
               timeout=600)
    made = subprocess.run([sys.executable, '-m', 'venv', str(env_dir)], **run)
    if made.returncode:
        _unavailable('cannot create a venv: %s' % made.stdout[-500:])
    python = str(env_dir / ('Scripts' if os.name == 'nt' else 'bin') / 'python')
    pip = [python, '-m', 'pip', '--disable-pip-version-check', 'install', '-q',
           '--retries', '1', '--timeout', '20']
    needs = ['smtpdfix', 'pytest', 'setuptools', 'wheel']
    if sys.version_info >= (3, 12):
        needs += ['pyasyncore', 'pyasynchat']
    fetched = subprocess.run(pip + needs, **run)
    if fetched.returncode:
        _unavailable('cannot install smtpdfix from PyPI: %s' % fetched.stdout[-500:])
    # No network from here on: a failure to install this checkout is a bug.
    built = subprocess.run(pip + ['--no-deps', '--no-build-isolation', CHECKOUT],
                           cwd=str(home), **run)
    assert built.returncode == 0, built.stdout
    return python


def _run_project(python, tmp_path, source, *args):
    import subprocess
    (tmp_path / 'test_project.py').write_text(source)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('PYTEST_', 'PYTHON'))}
    return subprocess.run([python, '-m', 'pytest', '-p', 'no:cacheprovider',
                           '-W', 'error::pytest.PytestUnknownMarkWarning',
                           '-rA'] + list(args),
                          cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def test_smtpdfix_keeps_its_smtpd_fixture(smtpdfix_venv, tmp_path):
    result = _run_project(smtpdfix_venv, tmp_path, SMTPDFIX_PROJECT)
    assert result.returncode == 0, result.stdout
    assert '2 passed' in result.stdout
    assert 'smtpd_compat: fixture smtpd_compat_server ("smtpd" is smtpdfix\'s)' in result.stdout


def test_smtpd_is_ours_again_without_smtpdfix(smtpdfix_venv, tmp_path):
    # smtpdfix's entry point is named "smtpd"; switched off, ours is back.
    result = _run_project(smtpdfix_venv, tmp_path, OURS_PROJECT, '-p', 'no:smtpd')
    assert result.returncode == 0, result.stdout
    assert '1 passed' in result.stdout

"""The documentation: it builds from the sdist with warnings as errors and
every reference resolved, the man page lists every option, and the
examples in it match what the server does.

The Sphinx builds need the ``docs`` extra; ``tox -e docs`` runs this file
with it (elsewhere those tests skip).
"""
import configparser
import fcntl
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile

import pytest


# The checkout (or unpacked sdist) this file belongs to, not where an
# installed smtpd_compat lives (tox installs it into site-packages).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _need(module, why):
    if importlib.util.find_spec(module) is None:
        pytest.skip('%s is not installed (%s; tox -e docs runs this)' % (module, why))


@pytest.fixture(scope='module')
def sdist_tree(tmp_path_factory):
    """The sdist built from this checkout, unpacked: its top directory."""
    _need('setuptools', 'needed to build the sdist')
    out = tmp_path_factory.mktemp('sdist')
    # setup.py writes its egg-info into the checkout: under xdist, two
    # workers building at once race on it, so the build takes a lock that
    # every worker of this run shares (their temp folders' common parent).
    with open(str(tmp_path_factory.getbasetemp().parent / 'sdist.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = subprocess.run(
            [sys.executable, '-W', 'ignore', 'setup.py', '-q', 'sdist',
             '--formats=gztar', '-d', str(out)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert built.returncode == 0, built.stdout
    archive, = [name for name in os.listdir(str(out)) if name.endswith('.tar.gz')]
    with tarfile.open(str(out / archive)) as tar:
        if hasattr(tarfile, 'data_filter'):     # 3.12+ and recent 3.8-3.11
            tar.extractall(str(out / 'tree'), filter='data')
        else:
            tar.extractall(str(out / 'tree'))
    top, = os.listdir(str(out / 'tree'))
    return out / 'tree' / top


def _sphinx(builder, source, target):
    _need('sphinx', 'the docs extra')
    return subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '-n', '--keep-going', '-q',
         '-b', builder, str(source), str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


def test_sdist_holds_what_the_docs_and_tests_need(sdist_tree):
    for name in ('LICENSE', 'README.md', 'tox.ini', 'smtpd.py',
                 'docs/conf.py', 'docs/_static/performance.png',
                 'docs/_static/performance-results.md', 'docs/changelog.rst',
                 'tests/conftest.py', 'tests/golden/transcripts.json',
                 'tests/golden/record.py', 'smtpd_compat/py.typed'):
        assert (sdist_tree / name).is_file(), name
    for name in WEB_PAGE_FILES:
        assert (sdist_tree / 'smtpd_compat' / 'web' / 'static' / name).is_file(), name


# The web inbox page's files, package data of smtpd_compat.web.static.
WEB_PAGE_FILES = ('index.html', 'app.css', 'app.js')


@pytest.fixture(scope='module')
def wheel_from_sdist(sdist_tree, tmp_path_factory):
    """The wheel pip builds from the unpacked sdist (as ``pip install`` of
    the sdist does), with this environment's setuptools: its path."""
    _need('setuptools', 'needed to build the wheel')
    _need('wheel', 'needed to build the wheel with older setuptools')
    out = tmp_path_factory.mktemp('wheel')
    built = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
         '--no-build-isolation', '-w', str(out), str(sdist_tree)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert built.returncode == 0, built.stdout
    wheel, = [name for name in os.listdir(str(out)) if name.endswith('.whl')]
    return out / wheel


def test_wheel_ships_the_web_page(wheel_from_sdist, sdist_tree):
    with zipfile.ZipFile(str(wheel_from_sdist)) as wheel:
        names = set(wheel.namelist())
    for name in WEB_PAGE_FILES:
        assert 'smtpd_compat/web/static/' + name in names
    # importlib.resources reads them from the wheel itself, put on sys.path
    # as a zip (the strictest case: no files on disk).
    script = ('import sys; sys.path.insert(0, sys.argv[1]); '
              'from smtpd_compat.web import static; '
              'assert static.__file__.startswith(sys.argv[1]), static.__file__; '
              'sys.stdout.buffer.write(b"".join(static.read(n) for n in sys.argv[2:]))')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    loaded = subprocess.run(
        [sys.executable, '-c', script, str(wheel_from_sdist)] + list(WEB_PAGE_FILES),
        cwd=str(wheel_from_sdist.parent), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    shipped = b''.join((sdist_tree / 'smtpd_compat' / 'web' / 'static' / name).read_bytes()
                       for name in WEB_PAGE_FILES)
    assert loaded.stdout == shipped


@pytest.fixture(scope='module')
def built_from_sdist(sdist_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp('docs')
    for builder in ('html', 'man'):
        result = _sphinx(builder, sdist_tree / 'docs', out / builder)
        assert result.returncode == 0, result.stdout
    return out


def test_docs_build_from_the_sdist(built_from_sdist):
    html = (built_from_sdist / 'html' / 'index.html').read_text(encoding='utf-8')
    # The journey, in order.
    pages = ['install.html', 'migration.html', 'testing.html', 'cli.html',
             'operations.html', 'tls.html', 'api.html', 'modules.html',
             'deviations.html', 'changelog.html']
    positions = [html.index('href="%s"' % page) for page in pages]
    assert positions == sorted(positions)
    modules = (built_from_sdist / 'html' / 'modules.html').read_text(encoding='utf-8')
    for name in ('loop', 'limits', 'proxy_protocol', 'shutdown', 'workers',
                 'logging_', 'pytest_plugin'):
        assert 'id="module-smtpd_compat.%s"' % name in modules


def test_man_page_lists_every_option(built_from_sdist):
    from smtpd_compat.cli_options import GROUPS
    page = (built_from_sdist / 'man' / 'smtpd-compat.1').read_text(encoding='utf-8')
    text = page.replace('\\-', '-')
    assert text.startswith('.\\" Man page generated')
    assert '.TH "SMTPD-COMPAT" "1"' in text
    flags = ['--nosetuid', '--version', '--class', '--size', '--smtputf8',
             '--debug', '--help']
    for group in GROUPS:
        flags += ['--' + name.rstrip('=') for name, _, _ in group.options]
    assert '--package-version' in flags and '--production' in flags
    missing = [flag for flag in flags if not re.search(re.escape(flag) + r'\b', text)]
    assert missing == []


def _systemd_unit():
    with open(os.path.join(ROOT, 'docs', 'operations.rst'), encoding='utf-8') as f:
        text = f.read()
    block = text.split('.. example-systemd-unit-start')[1].split('.. example-systemd-unit-end')[0]
    lines = [line[4:] for line in block.splitlines() if line.startswith('    ')]
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read_string('\n'.join(lines).replace('\\\n', ' '))
    return unit


def test_systemd_unit_stops_gracefully():
    service = _systemd_unit()['Service']
    assert service['KillSignal'] == 'SIGTERM'
    assert service['KillMode'] == 'mixed'
    argv = shlex.split(service['ExecStart'])
    assert argv[1:3] == ['-m', 'smtpd_compat'] and '-n' in argv
    grace = float(argv[argv.index('--grace-period') + 1])
    # Room after the grace period to send the 421s and exit.
    assert float(service['TimeoutStopSec']) >= grace + 10


def test_systemd_unit_command_line_is_accepted(tmp_path, python_path_env):
    # The unit's options, checked by the real parser: --package-version
    # exits 0 only after every option was parsed and configured (a wrong
    # option name or combination exits 1 with a message).
    argv = shlex.split(_systemd_unit()['Service']['ExecStart'])[3:]
    argv[argv.index('--maildir') + 1] = str(tmp_path / 'Maildir')
    argv.insert(-1, '--package-version')     # options before the address
    proc = subprocess.run([sys.executable, '-m', 'smtpd_compat'] + argv,
                          env=python_path_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, '')
    assert proc.stdout.startswith('smtpd-compat ')

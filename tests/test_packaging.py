"""What the distribution says about itself: version, license, URLs,
platforms, and the package data it ships.  (That the sdist is complete is
checked by check-manifest in ``tox -e lint`` and by tests/test_docs.py,
which builds the docs from it and a wheel from that.)
"""
import configparser
import os
import subprocess
import sys

import pytest

from smtpd_compat._version import VERSION

# The checkout (or unpacked sdist) this file belongs to, not where an
# installed smtpd_compat lives (tox installs it into site-packages).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def metadata():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(os.path.join(ROOT, 'setup.cfg'), encoding='utf-8')
    return cfg['metadata']


def _lines(value):
    return [line.strip() for line in value.strip().splitlines() if line.strip()]


def test_package_version_flag(python_path_env):
    run = dict(env=python_path_env, stdout=subprocess.PIPE,
               stderr=subprocess.PIPE, text=True, timeout=60)
    ours = subprocess.run([sys.executable, '-m', 'smtpd_compat', '--package-version'], **run)
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, 'smtpd-compat %s\n' % VERSION, '')
    # -V stays the stdlib's banner.
    stdlib = subprocess.run([sys.executable, '-m', 'smtpd_compat', '-V'], **run)
    assert (stdlib.returncode, stdlib.stdout) == (0, 'Python SMTP proxy version 0.3\n')


def test_version_is_single_sourced(metadata):
    assert metadata['version'] == 'attr: smtpd_compat._version.VERSION'
    assert [int(part) for part in VERSION.split('.')]      # X.Y.Z
    with open(os.path.join(ROOT, 'docs', 'changelog.rst'), encoding='utf-8') as f:
        assert VERSION in f.read()


def test_license_file_matches_the_metadata(metadata):
    assert metadata['license'] == 'PSF-2.0'
    assert _lines(metadata['license_files']) == ['LICENSE']
    assert ('License :: OSI Approved :: Python Software Foundation License'
            in _lines(metadata['classifiers']))
    with open(os.path.join(ROOT, 'LICENSE'), encoding='utf-8') as f:
        text = f.read()
    assert 'PSF-2.0' in text and 'PSF LICENSE AGREEMENT' in text
    assert 'Copyright (c) 2026 The smtpd-compat authors' in text


def test_project_urls_and_platforms(metadata):
    urls = dict(line.split(' = ', 1) for line in _lines(metadata['project_urls']))
    assert sorted(urls) == ['Changelog', 'Documentation', 'Issues', 'Source']
    assert all(url.startswith('https://') for url in urls.values())
    classifiers = _lines(metadata['classifiers'])
    for platform in ('POSIX', 'Microsoft :: Windows', 'MacOS'):
        assert 'Operating System :: ' + platform in classifiers


def test_installed_package_ships_the_web_page():
    # Under tox smtpd_compat is installed from the sdist into site-packages:
    # the page's files must have come along, and load as package data.
    from smtpd_compat.web import static
    folder = os.path.join(ROOT, 'smtpd_compat', 'web', 'static')
    for name in static.NAMES:
        with open(os.path.join(folder, name), 'rb') as f:
            assert static.read(name) == f.read(), name
    assert sorted(static.NAMES) == sorted(
        name for name in os.listdir(folder) if not name.endswith(('.py', '.pyc'))
        and name != '__pycache__')

"""CPython 3.11's own test_smtpd.py, run against smtpd_compat.

The test file is read from the Python 3.11 installed on the machine (it is
CPython's, not ours, so it is not in this repository), with ``smtpd``
resolving to smtpd_compat, in a subprocess of the interpreter under test.
That checks the compat classes against the stdlib's own expectations on
3.12 and 3.13 too, where no stdlib smtpd exists.
"""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REQUIRE_TOOLS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNNER = r'''
import importlib.util, sys, unittest, warnings
test_file, root = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
import smtpd_compat
sys.modules['smtpd'] = smtpd_compat
spec = importlib.util.spec_from_file_location('cpython_test_smtpd', test_file)
module = importlib.util.module_from_spec(spec)
with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    try:
        spec.loader.exec_module(module)
    except (ImportError, AttributeError) as e:
        # test.support of an older Python lacks helpers the 3.11 file uses
        # (socket_helper before 3.9, warnings_helper.import_deprecated
        # before 3.11).
        print('SKIP', e)
        sys.exit(3)
suite = unittest.defaultTestLoader.loadTestsFromModule(module)
result = unittest.TextTestRunner(stream=sys.stdout, verbosity=1).run(suite)
print('RAN', result.testsRun)
sys.exit(0 if result.wasSuccessful() else 1)
'''


def _cpython_test_file():
    """Where Python 3.11's test_smtpd.py is, or None."""
    python311 = shutil.which('python3.11')
    if python311 is None:
        return None
    found = subprocess.run(
        [python311, '-W', 'ignore', '-c',
         'import test.test_smtpd as t; print(t.__file__)'],
        capture_output=True, text=True, timeout=60)
    path = found.stdout.strip()
    return path if found.returncode == 0 and os.path.exists(path) else None


def test_cpython_311_test_smtpd_passes():
    test_file = _cpython_test_file()
    if test_file is None:
        message = "Python 3.11 with its test package is needed for CPython's test_smtpd.py"
        if REQUIRE_TOOLS:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [sys.executable, '-W', 'ignore', '-c', RUNNER, test_file, ROOT],
        capture_output=True, text=True, timeout=300)
    if result.returncode == 3:
        # 3.8-3.10 lack helpers the 3.11 file needs.
        pytest.skip('test.support of Python %d.%d cannot load 3.11\'s '
                    'test_smtpd.py: %s' % (sys.version_info[:2]
                                           + (result.stdout.strip(),)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    ran = int(result.stdout.split('RAN ')[-1].split()[0])
    assert ran >= 150, output[-2000:]

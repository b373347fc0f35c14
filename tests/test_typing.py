"""Typing: the stubs (smtpd_compat/*.pyi, smtpd.pyi, stubs/*-stubs) pass
``mypy --strict``, match the code (mypy.stubtest), type the scripts users
write (tests/typing/legacy_script.py with ``import smtpd``,
compat_script.py with ``import smtpd_compat``), and reject what typeshed's
stub of the standard library's smtpd rejected (tests/typing/rejected.py,
one ``# E: <code>`` marker per line that must fail).

mypy runs in a subprocess from the project root, so ``import smtpd`` finds
smtpd.pyi there.  On 3.12+ asyncore and asynchat are typed by the
stub-only packages this distribution installs, so these tests need it
installed (tox does that).  They skip where mypy is missing or cannot
check this interpreter's code, and fail instead under
SMTPD_COMPAT_REQUIRE_TOOLS=1.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REQUIRE_TOOLS

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / 'tests' / 'typing'
STUB_PACKAGES = ('smtpd-stubs', 'asyncore-stubs', 'asynchat-stubs')

# The modules stubtest compares with their stubs.  On 3.11 and older
# ``import smtpd`` is the standard library's module (typeshed types it), and
# asyncore/asynchat are too.
STUBTEST_MODULES = ['smtpd_compat']
if sys.version_info >= (3, 12):
    STUBTEST_MODULES += ['smtpd', 'asyncore', 'asynchat']

_ERROR = re.compile(r'^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$')


def _installed():
    """True when smtpd-compat is installed here with its stubs (the stub-only
    packages and the package's .pyi files), as pip and tox install it."""
    wanted = STUB_PACKAGES + ('smtpd_compat',)
    for entry in sys.path:
        if not entry or Path(entry).resolve() == ROOT:
            continue
        if all(os.path.isfile(os.path.join(entry, name, '__init__.pyi'))
               for name in wanted):
            return True
    return False


_NOT_INSTALLED = ('smtpd-compat is not installed in this environment (pip '
                  'install .): its stubs are needed from site-packages')


def _run(args, cwd=ROOT, timeout=600):
    env = dict(os.environ)
    env.pop('MYPYPATH', None)
    return subprocess.run([sys.executable, '-m'] + args, cwd=str(cwd),
                          env=env, capture_output=True, text=True,
                          timeout=timeout)


def _unusable():
    """Why mypy cannot check code here, or None."""
    try:
        import mypy.version
    except ImportError:
        return 'mypy is not installed (it is in the test extra)'
    probe = _run(['mypy', '--cache-dir', os.devnull, '-c', 'x: int = 1'],
                 timeout=300)
    if probe.returncode != 0:
        return 'mypy %s cannot check Python %d.%d code here: %s' % (
            mypy.version.__version__, sys.version_info[0],
            sys.version_info[1], (probe.stdout + probe.stderr).strip())
    if sys.version_info >= (3, 12) and not _installed():
        # On 3.12+ its stub-only packages type asyncore and asynchat.
        return _NOT_INSTALLED
    return None


@pytest.fixture(scope='module')
def mypy_cache(tmp_path_factory):
    reason = _unusable()
    if reason is not None:
        if REQUIRE_TOOLS:
            pytest.fail(reason)
        pytest.skip(reason)
    return tmp_path_factory.mktemp('mypy-cache')


def _mypy(cache, *args, cwd=ROOT):
    return _run(['mypy', '--strict', '--cache-dir', str(cache),
                 '--no-color-output', '--show-error-codes'] + list(args),
                cwd=cwd)


def _errors(output):
    """(file name, line, code) of each error mypy printed."""
    found = set()
    for line in output.splitlines():
        m = _ERROR.match(line.strip())
        if m:
            found.add((Path(m.group('path')).name, int(m.group('line')),
                       m.group('code')))
    return found


def test_package_stubs_pass_strict(mypy_cache):
    result = _mypy(mypy_cache, '-p', 'smtpd_compat')
    assert result.returncode == 0, result.stdout + result.stderr
    # The stubs were checked, not the untyped code (which fails --strict).
    assert 'Success: no issues found in' in result.stdout


def test_stubs_match_the_code(mypy_cache):
    result = _run(['mypy.stubtest', '--allowlist',
                   str(ROOT / 'stubtest-allowlist.txt')] + STUBTEST_MODULES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('script', ['legacy_script.py', 'compat_script.py'])
def test_user_scripts_pass_strict(mypy_cache, script):
    result = _mypy(mypy_cache, str(SCRIPTS / script))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rejected_calls_fail(mypy_cache):
    path = SCRIPTS / 'rejected.py'
    expected = set()
    for number, text in enumerate(path.read_text().splitlines(), 1):
        m = re.search(r'# E: ([a-z-]+)$', text)
        if m:
            expected.add((path.name, number, m.group(1)))
    assert len(expected) >= 20
    result = _mypy(mypy_cache, str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    found = _errors(result.stdout)
    assert expected - found == set(), result.stdout
    # Nothing else fails: the unmarked lines show what is accepted.
    assert {(n, line) for n, line, _ in found} == \
        {(n, line) for n, line, _ in expected}, result.stdout


def test_smtpd_stub_is_one_file():
    # smtpd.pyi serves source checkouts (mypy finds it beside smtpd.py);
    # stubs/smtpd-stubs is what gets installed.  They must not drift apart.
    assert (ROOT / 'smtpd.pyi').read_bytes() == \
        (ROOT / 'stubs' / 'smtpd-stubs' / '__init__.pyi').read_bytes()


def test_installed_smtpd_is_typed(mypy_cache, tmp_path):
    """``import smtpd`` from a project outside this checkout, as a user's
    (mypy then finds smtpd.py in site-packages, typed by smtpd-stubs)."""
    if not _installed():
        if REQUIRE_TOOLS:
            pytest.fail(_NOT_INSTALLED)
        pytest.skip(_NOT_INSTALLED)
    if sys.version_info < (3, 12):
        pytest.skip('on %d.%d import smtpd is the standard library module '
                    '(typeshed types it)' % sys.version_info[:2])
    script = tmp_path / 'script.py'
    shutil.copy(str(SCRIPTS / 'legacy_script.py'), str(script))
    (tmp_path / 'reveal.py').write_text(
        'import smtpd\nreveal_type(smtpd.SMTPServer.process_message)\n')
    result = _mypy(mypy_cache, 'script.py', 'reveal.py', cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'import-untyped' not in result.stdout
    assert 'str | None' in result.stdout    # the return type: not Any


def _stub_definitions(path):
    """(class name or None, name) of every function, class and module
    variable a stub file defines, and of the methods in its classes
    (stubtest skips private names that are missing at run time; these are
    hooks that mixins and subclasses call, so they must exist).  Type
    aliases and protocols exist only in the stubs."""
    import ast
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found.append((None, node.name))
        elif (isinstance(node, ast.AnnAssign)
              and isinstance(node.target, ast.Name)
              and getattr(node.annotation, 'id', None) != 'TypeAlias'):
            found.append((None, node.target.id))
        elif isinstance(node, ast.ClassDef):
            bases = {getattr(b, 'id', None) or getattr(b, 'attr', None)
                     for b in node.bases}
            if 'Protocol' in bases:
                continue        # a type only the stubs have
            found.append((None, node.name))
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found.append((node.name, item.name))
    return found


# Modules typed in their code (mypy --strict checks the implementation).
INLINE_TYPED = {'__main__'}


def test_every_module_has_a_stub():
    # mypy reads a module's .pyi instead of its code: a module without one
    # is checked as code, which must then be typed inline (and pass
    # --strict and stubtest).
    modules = {p.stem for p in (ROOT / 'smtpd_compat').glob('*.py')}
    stubs = {p.stem for p in (ROOT / 'smtpd_compat').glob('*.pyi')}
    assert modules - stubs == INLINE_TYPED
    assert INLINE_TYPED & stubs == set()


@pytest.mark.parametrize('stub', sorted(
    p.name for p in (ROOT / 'smtpd_compat').glob('*.pyi')))
def test_every_stub_definition_exists(stub):
    import importlib
    name = 'smtpd_compat' if stub == '__init__.pyi' else \
        'smtpd_compat.' + stub[:-len('.pyi')]
    module = importlib.import_module(name)
    missing = []
    for cls, attr in _stub_definitions(ROOT / 'smtpd_compat' / stub):
        owner = module if cls is None else getattr(module, cls, None)
        if owner is None or not hasattr(owner, attr):
            missing.append(attr if cls is None else '%s.%s' % (cls, attr))
    assert missing == [], 'in %s but not in %s' % (stub, name)

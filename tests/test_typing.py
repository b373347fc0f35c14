"""Typing: the package passes ``mypy --strict``, checked from its code
(every module but the faithful core, which smtpd_compat/__init__.pyi types:
an error planted in any other module must be reported); the stubs
(__init__.pyi, smtpd.pyi, stubs/*-stubs) match the code (mypy.stubtest);
the scripts users write check (tests/typing/legacy_script.py with
``import smtpd``, compat_script.py with ``import smtpd_compat``), and what
typeshed's stub of the standard library's smtpd rejected is rejected
(tests/typing/rejected.py, one ``# E: <code>`` marker per line that must
fail).

mypy runs in a subprocess from the project root, so ``import smtpd`` finds
smtpd.pyi there.  On 3.12+ asyncore and asynchat are typed by the
stub-only packages this distribution installs, so these tests need it
installed (tox does that).  They skip where mypy is missing or cannot
check this interpreter's code, and fail instead under
SMTPD_COMPAT_REQUIRE_TOOLS=1.
"""
import configparser
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

# stubtest reads setup.cfg's [mypy] sections as mypy does.
_CONFIG = ['--mypy-config-file', str(ROOT / 'setup.cfg')]

# TEMPORARY (issue 19): modules whose stub belongs to another helper's work
# in progress.  mypy reads a module's .pyi instead of its code, so an error
# in the code goes unreported; test_planted_errors_are_reported expects
# that for these modules only (and fails once one of them is checked from
# its code, until it is taken out).  The coordinator empties this as the
# stubs go; it must end empty.
STUB_SHADOWED_FOR_NOW: set = set()


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


def test_package_passes_strict(mypy_cache):
    result = _mypy(mypy_cache, '-p', 'smtpd_compat')
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Success: no issues found in' in result.stdout


def test_stubs_match_the_code(mypy_cache):
    import mypy.version
    if int(mypy.version.__version__.split('.')[0]) < 2:
        # (Python 3.8 and 3.9 get mypy 1.14 and 1.19; tox -e mypy runs 2.x.)
        pytest.skip('stubtest before mypy 2 reports the names a module '
                    'imports only for type checking as missing at run time')
    result = _run(['mypy.stubtest', '--allowlist',
                   str(ROOT / 'stubtest-allowlist.txt')] + _CONFIG
                  + STUBTEST_MODULES)
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


# -- every module is checked from its code ------------------------------

CORE = 'smtpd_compat'   # keeps its stub: its source keeps the stdlib's shape

# Appended to every module of the package but the core: a function whose
# return type is wrong.  mypy must report each one.
_PLANTED = (
    '\n\n'
    'def _planted_type_error() -> int:\n'
    '    return "not an int"  # planted by tests/test_typing.py\n')


def _modules(package_dir):
    """{module name: source path} of every module below ``package_dir``
    (a package by its __init__.py), found by walking it."""
    found = {}
    for path in sorted(package_dir.rglob('*.py')):
        parts = path.relative_to(package_dir.parent).with_suffix('').parts
        if parts[-1] == '__init__':
            parts = parts[:-1]
        found['.'.join(parts)] = path
    return found


def _stub_of(path):
    stub = path.with_suffix('.pyi')
    return stub if stub.exists() else None


def _strict_config(target):
    """Write setup.cfg's mypy configuration to ``target`` without the
    sections that relax the check for modules of this package (see
    setup.cfg); return the modules those sections name."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(str(ROOT / 'setup.cfg'))
    relaxed = set()
    strict = configparser.ConfigParser(interpolation=None)
    strict['mypy'] = {}
    for section in config.sections():
        if section == 'mypy':
            strict[section] = dict(config[section])
        elif section.startswith('mypy-'):
            modules = [m.strip() for m in section[len('mypy-'):].split(',')]
            if any(m == CORE or m.startswith(CORE + '.') for m in modules):
                relaxed.update(modules)
            else:
                strict[section] = dict(config[section])
    with open(str(target), 'w') as f:
        strict.write(f)
    return relaxed


def _source_line(path, number):
    with open(str(path), encoding='utf-8') as f:
        for i, line in enumerate(f, 1):
            if i == number:
                return line.strip()
    return ''


def test_stubs_only_where_they_earn_their_place():
    # The faithful core keeps its stub (its source keeps the stdlib's
    # shape); every other module is typed in its code.
    package = ROOT / CORE
    stubs = {name for name, path in _modules(package).items()
             if _stub_of(path)}
    assert stubs - {CORE} == STUB_SHADOWED_FOR_NOW, (
        'modules with a .pyi beside them; only the core (and, for now, '
        'STUB_SHADOWED_FOR_NOW) may have one')
    orphans = [str(p) for p in package.rglob('*.pyi')
               if not p.with_suffix('.py').exists()]
    assert orphans == []


def test_planted_errors_are_reported(mypy_cache, tmp_path):
    """A wrong return type planted in each module (found by walking the
    package, sub-packages too) is reported by one ``mypy --strict`` run on
    a copy of the package; nothing else is reported but what a temporary
    setup.cfg section is there for."""
    copy = tmp_path / CORE
    shutil.copytree(str(ROOT / CORE), str(copy),
                    ignore=shutil.ignore_patterns('__pycache__'))
    modules = _modules(copy)
    planted = {}
    for name, path in modules.items():
        if name == CORE:
            continue
        text = path.read_text(encoding='utf-8')
        if text and not text.endswith('\n'):
            text += '\n'
        path.write_text(text + _PLANTED, encoding='utf-8')
        line = text.count('\n') + _PLANTED.count('\n')   # the return line
        planted[(path.relative_to(tmp_path).as_posix(), line)] = name
    assert len(planted) >= 10, sorted(planted.values())
    relaxed = _strict_config(tmp_path / 'mypy.ini')
    result = _mypy(mypy_cache, '--config-file', str(tmp_path / 'mypy.ini'),
                   '-p', CORE, cwd=tmp_path)
    reported = {}
    for line in result.stdout.splitlines():
        m = _ERROR.match(line.strip())
        if m:
            where = (Path(m.group('path')).as_posix(), int(m.group('line')))
            reported.setdefault(where, []).append(line.strip())

    problems = []
    for where, name in sorted(planted.items(), key=lambda item: item[1]):
        if where in reported:
            if name in STUB_SHADOWED_FOR_NOW:
                problems.append('%s is checked from its code now: take it '
                                'out of STUB_SHADOWED_FOR_NOW' % name)
        elif name in STUB_SHADOWED_FOR_NOW:
            continue
        elif _stub_of(modules[name]) is not None:
            problems.append('%s: mypy reads %s instead of the code (move '
                            'its types into the code and delete the stub)'
                            % (name, _stub_of(modules[name]).name))
        else:
            problems.append('%s: the error planted at line %d was not '
                            'reported' % (name, where[1]))
    # Anything else reported: only the unannotated signatures a temporary
    # setup.cfg section is there for.
    still_relaxed = set()
    for (path, number), lines in sorted(reported.items()):
        if (path, number) in planted:
            continue
        parts = Path(path).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        if name in relaxed and _source_line(
                tmp_path / path, number).startswith('def __init__('):
            still_relaxed.add(name)
            continue
        problems.extend(lines)
    for name in sorted(relaxed - still_relaxed):
        problems.append('%s needs no relaxed section in setup.cfg any more: '
                        'take it out' % name)
    assert problems == [], '\n'.join(problems) + '\n\n' + result.stdout


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

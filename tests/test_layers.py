"""The package's modules form layers, and imports only point down.

Every import in every module -- at module level and inside functions,
classes and ``if TYPE_CHECKING:`` blocks, found by walking the syntax
tree, not by importing -- goes to a module of the same layer or a lower
one, and the imports form no cycle (within a layer either).  A new module
must be given its layer in LAYER below, or this test fails.  Imports under
``if __name__ == '__main__':`` are the script's own and not counted.
"""
import ast
import functools
import os
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'smtpd_compat'

CORE, SERVICES, CAPABILITIES, FRONT = range(4)
NAMES = ['the core', 'loop services, session and composition',
         'capabilities', 'the CLI and test helpers']

#: The layer of every module of the package (a package's entry covers its
#: submodules), lowest first.
LAYER = {
    # The faithful core, and leaves that import nothing of the package.
    'smtpd_compat': CORE,
    'smtpd_compat._version': CORE,
    'smtpd_compat.logfmt': CORE,
    # What every capability stands on.
    'smtpd_compat.loop': SERVICES,
    'smtpd_compat.session': SERVICES,
    'smtpd_compat.compose': SERVICES,
    'smtpd_compat._compose': SERVICES,
    # The capabilities (they may use each other, without cycles).
    'smtpd_compat.message': CAPABILITIES,
    'smtpd_compat.logging_': CAPABILITIES,
    'smtpd_compat.limits': CAPABILITIES,
    'smtpd_compat.budget': CAPABILITIES,
    'smtpd_compat.proxy_protocol': CAPABILITIES,
    'smtpd_compat.tls': CAPABILITIES,
    'smtpd_compat.auth': CAPABILITIES,
    'smtpd_compat.threads': CAPABILITIES,
    'smtpd_compat.extensions': CAPABILITIES,
    'smtpd_compat.lmtp': CAPABILITIES,
    'smtpd_compat.delivery': CAPABILITIES,
    'smtpd_compat.relay': CAPABILITIES,
    'smtpd_compat.shutdown': CAPABILITIES,
    'smtpd_compat.workers': CAPABILITIES,
    'smtpd_compat.web': CAPABILITIES,
    # What users run: the command line and the test helpers.
    'smtpd_compat.__main__': FRONT,
    'smtpd_compat.cli_options': FRONT,
    'smtpd_compat.controller': FRONT,
    'smtpd_compat.pytest_plugin': FRONT,
}


def _modules():
    """module name -> path, for every .py file of the package."""
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = Path(directory) / name
            parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
            if parts[-1] == '__init__':
                parts = parts[:-1]
            found['.'.join(parts)] = path
    return found


MODULES = _modules()


def _layer_of(module):
    while module not in LAYER:
        if '.' not in module:
            return None
        module = module.rpartition('.')[0]
    return LAYER[module]


def _is_main_block(node):
    test = getattr(node, 'test', None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == '__name__')


def _imports(module, path):
    """(line, imported module of the package) for every import in
    ``path``, wherever it stands."""
    tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
    skipped = set()
    for node in tree.body:
        if _is_main_block(node):
            skipped.update(id(n) for n in ast.walk(node))
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parts = parts[:len(parts) - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            # "from smtpd_compat import loop" imports a module too.
            names = [base] + ['%s.%s' % (base, alias.name) for alias in node.names]
        else:
            continue
        for name in names:
            # The module itself, or the package that holds the name.
            while name and name not in MODULES:
                name = name.rpartition('.')[0]
            if name and name != module:
                yield node.lineno, name


@functools.lru_cache(maxsize=None)
def _graph():
    return {module: sorted(set(_imports(module, path)))
            for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if _layer_of(m) is None)
    assert missing == [], 'give these modules a layer in LAYER: %s' % missing
    stale = sorted(m for m in LAYER if m not in MODULES)
    assert stale == [], 'LAYER names modules that do not exist: %s' % stale


@pytest.mark.parametrize('module', sorted(MODULES))
def test_imports_point_down(module):
    mine = _layer_of(module)
    upward = ['line %d: %s (%s)' % (line, name, NAMES[_layer_of(name)])
              for line, name in _graph()[module] if _layer_of(name) > mine]
    assert upward == [], '%s (%s) imports upward: %s' % (
        module, NAMES[mine], '; '.join(upward))


def test_the_core_imports_nothing_of_the_package():
    for module, layer in LAYER.items():
        if layer == CORE and module in MODULES:
            assert _graph()[module] == [], module


def test_no_import_cycle():
    graph = {module: [name for _, name in edges]
             for module, edges in _graph().items()}
    state = {}

    def visit(module, path):
        state[module] = 'open'
        for name in graph[module]:
            if state.get(name) == 'open':
                cycle = path[path.index(name):] + [name]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if name not in state:
                visit(name, path + [name])
        state[module] = 'done'

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_walk_sees_imports_inside_functions(tmp_path, monkeypatch):
    # A test that cannot fail is a defect: an import hidden in a function,
    # relative or absolute, is an edge.
    source = ('def later():\n'
              '    from . import loop\n'
              '    import smtpd_compat.threads\n'
              'if __name__ == "__main__":\n'
              '    import smtpd_compat.controller\n')
    path = tmp_path / 'probe.py'
    path.write_text(source)
    monkeypatch.setitem(MODULES, 'smtpd_compat.probe', path)
    found = {name for _, name in _imports('smtpd_compat.probe', path)}
    assert found == {'smtpd_compat', 'smtpd_compat.loop', 'smtpd_compat.threads'}

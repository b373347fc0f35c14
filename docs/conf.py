# Sphinx configuration for smtpd_compat's documentation.
#
# Built with warnings as errors and nitpicky references (tox -e docs:
# ``sphinx-build -W -n``), so every cross-reference must resolve.  Standard
# library references go to docs.python.org through intersphinx; the
# inventory is read from a local copy when one is installed (Debian's
# python3-doc, which .ci/run installs), because CI has no network access
# beyond the package indexes.
import os
import sys

from docutils import nodes
from docutils.parsers.rst import Directive

sys.path.insert(0, os.path.abspath('..'))

from smtpd_compat._version import VERSION  # noqa: E402

project = 'smtpd_compat'
author = 'The smtpd-compat authors'
copyright = '2026, ' + author
version = release = VERSION
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.intersphinx']
exclude_patterns = ['_build']
html_theme = 'alabaster'
autodoc_member_order = 'bysource'

# The stdlib's smtpd, asyncore and asynchat are documented up to 3.11 only,
# and those are the pages this project's references mean.
_PYTHON_DOCS = 'https://docs.python.org/3.11'
_LOCAL_INVENTORIES = tuple(
    path for path in ('/usr/share/doc/python3/html/objects.inv',
                      '/usr/share/doc/python3.11/html/objects.inv',
                      os.environ.get('SMTPD_COMPAT_PYTHON_INVENTORY', ''))
    if path and os.path.isfile(path))
# A local inventory if there is one, else the one on docs.python.org.
intersphinx_mapping = {'python': (_PYTHON_DOCS, _LOCAL_INVENTORIES[:1] or None)}
intersphinx_timeout = 10

# Names in signatures and type hints that are not documented objects:
# typing aliases of this project and asyncore's classes (documented only as
# prose in the 3.11 docs' objects.inv for some versions).
nitpick_ignore_regex = [
    ('py:class', r'(typing\.)?(Any|Optional|Union|Callable|Tuple|List|Dict)'),
    ('py:class', r'asyncore\..*|asynchat\..*'),
    ('py:class', r'smtpd_compat\.(delivery|extensions)\.Message'),
    ('py:class', r'_pytest\..*|pytest\..*'),
    ('py:class', r'NoneType'),
    # The inline annotations: the core's type aliases (smtpd_compat/__init__.pyi
    # has them, the module does not), private aliases and type variables,
    # and Sphinx's reading of ``Callable[[], T]`` (it cuts at the ``[]``).
    ('py:class', r'_smtpd\._\w+|smtpd_compat(\.\w+)+\._\w+|_[A-Z]\w*'),
    ('py:obj', r'typing\.Callable\[\[\]'),
    # asyncore's dispatcher methods and private hooks named bare in the
    # capability modules' docstrings.
    ('py:meth', r'readable|writable|close|handle_\w+|_\w+'),
    # Capability modules announced by others before they land.
    ('py:mod', r'smtpd_compat\.(threads|web)'),
]

# ``python -m smtpd_compat``'s manual page, from cli.rst (sphinx-build -b man).
man_pages = [
    ('cli', 'smtpd-compat', 'an SMTP server: the stdlib smtpd command line '
     'plus opt-in production options', [author], 1),
]


class CLIOptions(Directive):
    """``.. smtpd-compat-options::``: the options the command line adds for
    the capabilities, from smtpd_compat.cli_options' groups, so that
    cli.rst and the man page never fall behind ``--help``."""

    has_content = False

    def run(self):
        from smtpd_compat.cli_options import GROUPS
        result = []
        for group in GROUPS:
            options = group.options
            if not options:
                continue
            name = 'smtpd_compat.' + group.module
            if group.module.startswith('_'):
                name = 'smtpd-compat'     # _version: the distribution itself
            result.append(nodes.rubric('', '', nodes.literal(name, name)))
            items = nodes.definition_list()
            for option, metavar, text in options:
                flag = '--' + option.rstrip('=')
                if metavar:
                    flag += ' ' + metavar
                term = nodes.term('', '', nodes.literal(flag, flag))
                body = nodes.definition('', nodes.paragraph(text, text))
                items += nodes.definition_list_item('', term, body)
            result.append(items)
        return result


def setup(app):
    app.add_directive('smtpd-compat-options', CLIOptions)

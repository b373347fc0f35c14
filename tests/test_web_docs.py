"""docs/web.rst and docs/testing.rst against the code, so that their text
cannot go stale unnoticed: every route, option, keyword, attribute and
module the pages name exists; every route, ``--web`` option, keyword and
module the code has is named; and each bound the pages give as a number
is the code's.  (The Sphinx build, ``tox -e docs``, checks the references
it resolves; this file checks what it cannot, on every interpreter.)
"""
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smtpd_compat import cli_options
from smtpd_compat.controller import CapturedMessage, Controller, Mailbox
from smtpd_compat.web import (
    Inbox, StoredMessage, WebInboxServer, WebInboxServerMixin, events, http, mailhog, mime,
    release, store, transport)

from test_layers import MODULES, _imports

ROOT = Path(__file__).resolve().parent.parent
WEB_RST = (ROOT / 'docs' / 'web.rst').read_text(encoding='utf-8')
TESTING_RST = (ROOT / 'docs' / 'testing.rst').read_text(encoding='utf-8')
APP_JS = (ROOT / 'smtpd_compat' / 'web' / 'static' / 'app.js').read_text(encoding='utf-8')


def _flat(text):
    # The words of a page, whatever its line breaks.
    return ' '.join(text.split())


def _section(text, title):
    """The text of a section of an .rst page, from its title to the next
    title of the same underline."""
    m = re.search(r'^%s\n([-=~^])\1+\n' % re.escape(title), text, re.M)
    assert m, 'no section %r' % title
    rest = text[m.end():]
    end = re.search(r'^\S.*\n%s{3,}\n' % re.escape(m.group(1)), rest, re.M)
    return rest[:end.start()] if end else rest


# ---------------------------------------------------------------------------
# Routes

_ROUTE = re.compile(r'``(GET|HEAD|PUT|POST|DELETE|OPTIONS) (/[^`\s]*)``')
# Placeholders of the pages' routes -> a value the route table takes.
_PLACEHOLDERS = {'{ID}': 'latest', '{PartID}': '1.2', '{Tag}': 'a tag', '...': 'x'}
# Routes only the page itself uses: the page and its files, and what it
# polls without the event stream.
_PAGE_ONLY = {('GET', '/'), ('GET', '/view/latest'), ('GET', '/app.js'),
              ('GET', '/app.css'), ('GET', '/api/web/state')}


def _documented_routes():
    routes = []
    for method, path in _ROUTE.findall(WEB_RST):
        path = path.partition('?')[0]
        for placeholder, value in _PLACEHOLDERS.items():
            path = path.replace(placeholder, value)
        routes.append((method, path))
    return routes


def test_every_route_the_page_names_is_served():
    routes = _documented_routes()
    assert len(routes) >= 25
    for method, path in routes:
        # (NotFound or MethodNotAllowed for a route that is not.)
        http.find_route(method, path)


def test_every_route_served_is_named_in_the_page():
    named = _documented_routes() + sorted(_PAGE_ONLY)
    for method, pattern, handler in http.ROUTES:
        assert any(m == method and pattern.match(path) for m, path in named), (
            '%s %s (%s) is not in docs/web.rst' % (method, pattern.pattern,
                                                   handler.__qualname__))
    for method, path in _PAGE_ONLY:
        http.find_route(method, path)


# ---------------------------------------------------------------------------
# Command-line options and keywords

def _long_options():
    """Every long option of the command line, without dashes or '='."""
    names = {name.rstrip('=') for group in cli_options.GROUPS
             for name, *_ in group.options}
    # The stdlib's own (smtpd.usage).
    names.update(('nosetuid', 'version', 'class', 'size', 'debug', 'smtputf8', 'help'))
    return names


# Options of other programs that docs/web.rst names: Mailpit's (to say
# what is not supported) and the benchmark's.
_OTHER_OPTIONS = {'api-cors', 'smtp-relay-all', 'tag', 'tags-config'}
_BENCHMARK_OPTIONS = {'baseline'}


def test_every_web_option_is_in_the_page_and_every_option_it_names_exists():
    group, = [g for g in cli_options.GROUPS if g.module == 'web']
    web_options = {name.rstrip('=') for name, *_ in group.options}
    assert 'web' in web_options and len(web_options) >= 5
    for name in web_options:
        assert re.search(r'--%s\b(?!-)' % re.escape(name), WEB_RST), (
            '--%s is not in docs/web.rst' % name)
    named = set(re.findall(r'(?<![\w-])--([a-z][a-z0-9-]*[a-z0-9])', WEB_RST))
    unknown = named - _long_options() - _OTHER_OPTIONS - _BENCHMARK_OPTIONS
    assert unknown == set(), 'docs/web.rst names options that do not exist'
    usage = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'web_hostile.py'), '--help'],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0, usage.stderr
    for name in _BENCHMARK_OPTIONS:
        assert '--%s' % name in usage.stdout


def _keywords(cls):
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind is p.KEYWORD_ONLY]


@pytest.fixture(scope='module')
def web_server():
    server = WebInboxServer(('127.0.0.1', 0), None, map={}, web=('127.0.0.1', 0))
    yield server
    server.close()


@pytest.fixture(scope='module')
def controller():
    # A started one, with the page: what the smtpd fixture is.
    with Controller(web=('127.0.0.1', 0)) as started:
        yield started


def test_every_keyword_is_in_the_page_and_every_name_it_gives_exists(web_server):
    keywords = _keywords(WebInboxServerMixin)
    assert {'web', 'inbox', 'web_db'} <= set(keywords)
    paragraph = _flat(WEB_RST.partition('\nKeywords: ')[2].partition('\n\n')[0])
    for keyword in keywords:
        assert '``%s``' % keyword in paragraph, (
            'keyword %s is not in the Keywords paragraph of docs/web.rst' % keyword)
    # Every web_* name is a keyword or what the server has (web_url, and
    # web_address, the class attribute the web keyword reads).
    for name in set(re.findall(r'``(web_\w+)', WEB_RST)):
        assert name in keywords or hasattr(web_server, name), name
    assert web_server.web_address[0] == '127.0.0.1'


# ---------------------------------------------------------------------------
# Names of the API reference

_AUTOCLASS = re.compile(r'^\.\. autoclass:: ([\w.]+)\n((?:   :.*\n(?:      .*\n)*)*)', re.M)


@pytest.mark.parametrize('page', ['web.rst', 'testing.rst'])
def test_every_member_the_reference_lists_exists(page, controller):
    text = (ROOT / 'docs' / page).read_text(encoding='utf-8')
    module = 'smtpd_compat.web' if page == 'web.rst' else 'smtpd_compat.controller'
    checked = 0
    for name, options in _AUTOCLASS.findall(text):
        if '.' not in name:
            name = module + '.' + name
        module_name, _, class_name = name.rpartition('.')
        cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
        members = re.search(r':members: ([^:]*)', options.replace('\n', ' '))
        for member in (members.group(1).replace(',', ' ').split() if members else ()):
            # (The Controller's address is known once it is started.)
            owner = controller if cls is Controller else cls
            assert hasattr(owner, member), '%s has no %s' % (name, member)
            checked += 1
    assert checked >= 10


def test_the_fixture_and_message_attributes_the_pages_name_exist(controller):
    message = CapturedMessage(('127.0.0.1', 1), 'a@example.org', ['b@example.org'],
                              b'Subject: s\n\nbody\n')
    for attribute in re.findall(r'``\.(\w+)``', TESTING_RST):
        if attribute in ('content', 'rcpt_tos', 'addresses'):
            continue        # aiosmtpd's envelope, the email package's headers
        assert hasattr(message, attribute), attribute
    for attribute in ('id', 'raw', 'received'):
        assert '``%s``' % attribute in TESTING_RST
        assert hasattr(message, attribute), attribute
    for text in (TESTING_RST, WEB_RST):
        for attribute in re.findall(r'(?<![\w.])(?:smtpd|controller)\.([a-z_]\w*)', text):
            assert hasattr(controller, attribute), attribute


def test_the_errors_testing_rst_shows_are_the_ones_raised():
    box = Mailbox()
    with pytest.raises(IndexError) as shown:
        box[0]
    assert 'IndexError: %s' % shown.value in _flat(TESTING_RST)
    box.append(CapturedMessage(None, 'a', ['b'], b'Subject: 1\n\n'))
    with pytest.raises(TimeoutError) as shown:
        box.wait_for(2, timeout=0.01)
    assert str(shown.value).replace('0.01 s', '10 s') in TESTING_RST


# ---------------------------------------------------------------------------
# Layout: the modules, in the order their imports allow

def _layout():
    return re.findall(r'^\.\. module:: smtpd_compat\.web\.(\w+)$',
                      _section(WEB_RST, 'Layout'), re.M)


def test_the_layout_names_every_module_in_import_order():
    order = _layout()
    modules = sorted(m.rpartition('.')[2] for m in MODULES
                     if m.startswith('smtpd_compat.web.'))
    assert sorted(order) == modules
    order.append('')        # the package (__init__.py), last
    for position, name in enumerate(order):
        module = 'smtpd_compat.web' + ('.' + name if name else '')
        for line, imported in _imports(module, MODULES[module]):
            if imported.startswith('smtpd_compat.web.'):
                assert order.index(imported.rpartition('.')[2]) < position, (
                    '%s imports %s (line %d), listed after it in docs/web.rst'
                    % (module, imported, line))


def test_the_package_docstring_lists_the_modules_in_the_same_order():
    import smtpd_compat.web
    listed = re.findall(r':mod:`~smtpd_compat\.web\.(\w+)`', smtpd_compat.web.__doc__)
    assert listed == _layout()


# ---------------------------------------------------------------------------
# The numbers the pages give

KIB, MIB = 1024, 1024 * 1024


def _size(n):
    return '%d MiB' % (n // MIB) if n % MIB == 0 else '%d KiB' % (n // KIB)


_HUB = inspect.signature(events.Hub.__init__).parameters
_WORDS = {2: 'two', 4: 'four'}

# (what docs/web.rst says, with the code's values put in)
NUMBERS = [
    ('At most {:,} parts and {} levels of nesting', mime.MAX_PARTS, mime.MAX_DEPTH),
    ('at most {:,} header fields per part', mime.MAX_HEADERS),
    ('{} parameters per ``Content-Type``', mime.MAX_PARAMS),
    ('and {} of each header value are read', _size(mime.MAX_HEADER_VALUE)),
    ('the first {} of an HTML-only message is turned into text',
     _size(mime.MAX_HTML_TEXT)),
    ('decoding goes {} at a time', _size(mime.CHUNK)),
    ('A message over {} is listed and shown from its headers only',
     _size(store.DEFAULT_MAX_PARSE_BYTES)),
    ('past {}, none', _size(store.DEFAULT_MAX_PARSE_BYTES)),
    ('``web_max_messages`` ({:,}) messages within ``web_max_bytes`` ({})',
     store.DEFAULT_MAX_MESSAGES, _size(store.DEFAULT_MAX_BYTES)),
    ("A message's search text is the first {} of its text", _size(mime.MAX_SEARCH_TEXT)),
    ('At most {} connections are open', transport.DEFAULT_MAX_CONNECTIONS),
    ('within {:g} seconds of its first byte ({} at most, else ``431``)',
     transport.HEADER_TIMEOUT, _size(transport.MAX_HEAD)),
    ('may wait {:g} seconds for its next request', transport.IDLE_TIMEOUT),
    ('makes no progress for {:g} seconds is dropped', transport.IO_TIMEOUT),
    ('{} worker threads answer requests', _WORDS.get(transport.DEFAULT_THREADS)),
    ("a message's JSON goes out {} at a time", _size(transport.CHUNK)),
    ('413 a body over {}', _size(http.MAX_REQUEST_BODY)),
    ('``limit`` at most {}', mailhog._MAX_LIMIT),
    ('Bounds: {} clients (more get 503), {} of unsent events per client and {:g} s '
     'for them to move', _HUB['max_clients'].default, _size(_HUB['max_pending'].default),
     _HUB['write_timeout'].default),
    ('{} per message a client sends', _size(_HUB['max_message'].default)),
    ('a ping after {:g} s of silence and a close after {:g} s',
     _HUB['ping_interval'].default, _HUB['idle_timeout'].default),
    ('at most {} times a second after changes', _WORDS.get(round(1 / events._STATS_DELAY))),
    ('many messages changed at once (over {})', events._MAX_IDS),
    ('with a {:g} s time-out per step',
     inspect.signature(release.Upstream.__init__).parameters['timeout'].default),
    ('The newest {0} are listed; *Show more* adds {0} more',
     int(re.search(r'var PAGE = (\d+);', APP_JS).group(1))),
]


@pytest.mark.parametrize('phrase', NUMBERS, ids=lambda case: case[0][:40])
def test_the_numbers_in_the_page_are_the_codes(phrase):
    template, *values = phrase
    text = template.format(*values)
    assert text in _flat(WEB_RST), 'docs/web.rst does not say %r' % text


def test_tag_names_are_cut_where_the_page_says():
    assert 'at most 100 characters' in _flat(WEB_RST)
    assert len(mime.clean_tag('t' * 150)) == 100


def test_every_public_name_is_importable_from_the_package():
    # docs/web.rst: "its public names (above) are all importable from it".
    import smtpd_compat.web
    for name, _ in _AUTOCLASS.findall(WEB_RST):
        assert hasattr(smtpd_compat.web, name.rpartition('.')[2]), name
    assert smtpd_compat.web.Inbox is Inbox and smtpd_compat.web.StoredMessage is StoredMessage

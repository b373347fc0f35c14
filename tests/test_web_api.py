"""The web inbox's Mailpit API beyond reading: destructive calls with each
content type a client sends, errors, Mailpit's search syntax, tags, the
send API, release through a relay, and the fields Mailpit clients read.

Mailpit's documentation is the specification (docs/web.rst lists where
this inbox differs on purpose).
"""
import base64
import hashlib
import http.client
import json
import shutil
import smtplib
import socket
import subprocess
import time
import urllib.parse

import pytest

from smtpd_compat.auth import AuthServerMixin
from smtpd_compat.controller import Controller, with_capture
from smtpd_compat.web import Inbox, WebInboxServer, mime
from smtpd_compat.web.api import parse_body, BadRequest
from smtpd_compat.web.search import parse_date, parse_query, parse_size, split_query

import test_web
from test_web import PNG, make_message

# The fixtures of test_web.py: inbox_web(server_class, **kwargs) -> a
# started Controller's Web helper; w, one with the defaults.
inbox_web = test_web.inbox_web
w = test_web.w


def raw_request(web, method, path, body=None, content_type=None, headers=()):
    """(status, headers, body) of one request sent with http.client, with
    exactly the Content-Type given (None: no such header)."""
    url = urllib.parse.urlsplit(web.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest(method, path)
        data = body.encode() if isinstance(body, str) else body
        if content_type is not None:
            conn.putheader('Content-Type', content_type)
        for name, value in headers:
            conn.putheader(name, value)
        if data is not None:
            conn.putheader('Content-Length', str(len(data)))
        conn.endheaders(data)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def subjects(web, path='/api/v1/messages'):
    return sorted(m['Subject'] for m in web.json(path)['messages'])


def ids_by_subject(web):
    return {m['Subject']: m['ID'] for m in web.json('/api/v1/messages')['messages']}


def read_by_subject(web):
    return {m['Subject']: m['Read'] for m in web.json('/api/v1/messages')['messages']}


def three(web):
    for subject in ('match one', 'match two', 'other'):
        web.send(make_message(subject=subject))
    return ids_by_subject(web)


# ---------------------------------------------------------------------------
# destructive calls: the body is JSON whatever its Content-Type

CONTENT_TYPES = {'json': 'application/json',
                 'form': 'application/x-www-form-urlencoded',
                 'none': None}


@pytest.mark.parametrize('ctype', list(CONTENT_TYPES.values()), ids=list(CONTENT_TYPES))
def test_delete_by_ids_deletes_exactly_those_whatever_the_content_type(w, ctype):
    ids = three(w)
    status, headers, body = raw_request(
        w, 'DELETE', '/api/v1/messages', json.dumps({'IDs': [ids['match one']]}), ctype)
    assert (status, body) == (200, b'ok')
    assert subjects(w) == ['match two', 'other']


@pytest.mark.parametrize('ctype', list(CONTENT_TYPES.values()), ids=list(CONTENT_TYPES))
@pytest.mark.parametrize('body', [None, '', '{}', '{"IDs": []}', '{"ids": null}', 'null'],
                         ids=['no-body', 'empty', 'empty-object', 'empty-ids', 'null-ids',
                              'null'])
def test_delete_without_ids_deletes_everything(w, ctype, body):
    three(w)
    status, _, _ = raw_request(w, 'DELETE', '/api/v1/messages', body, ctype)
    assert status == 200
    assert w.json('/api/v1/messages')['total'] == 0


@pytest.mark.parametrize('body', ['not json', '{"IDs": "abc"}', '{"IDs": [1]}', '[]',
                                  'foo=bar', '{"IDs": ['],
                         ids=['text', 'ids-string', 'ids-numbers', 'array', 'foreign-form',
                              'truncated'])
def test_delete_with_a_body_it_cannot_read_deletes_nothing(w, body):
    # Mailpit would take these for "no IDs" and delete everything.
    three(w)
    status, headers, text = raw_request(w, 'DELETE', '/api/v1/messages', body,
                                        'application/json')
    assert status == 400
    assert headers['Content-Type'].startswith('text/plain')
    assert w.json('/api/v1/messages')['total'] == 3


def test_curl_default_form_type_deletes_one(w):
    """The issue's case, with curl itself: -d sends a form Content-Type."""
    curl = shutil.which('curl')
    if curl is None:
        pytest.skip('curl is not installed')
    ids = three(w)
    proc = subprocess.run(
        [curl, '-sS', '-X', 'DELETE', '-d', json.dumps({'IDs': [ids['other']]}),
         w.url + 'api/v1/messages'], capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == b'ok', proc
    assert subjects(w) == ['match one', 'match two']


def test_a_form_of_ids_deletes_those(w):
    # What mailpit-api-client sends (httpx data={"ids": [...]}).
    ids = three(w)
    body = urllib.parse.urlencode({'ids': [ids['match one'], ids['other']]}, doseq=True)
    assert raw_request(w, 'DELETE', '/api/v1/messages', body,
                       'application/x-www-form-urlencoded')[0] == 200
    assert subjects(w) == ['match two']


def test_trailing_bytes_after_the_json_are_ignored_as_go_does(w):
    ids = three(w)
    raw_request(w, 'DELETE', '/api/v1/messages',
                json.dumps({'IDs': [ids['other']]}) + ' trailing', None)
    assert subjects(w) == ['match one', 'match two']


def test_chunked_body(w):
    ids = three(w)
    data = json.dumps({'IDs': [ids['other']]}).encode()
    chunked = b'%x\r\n%s\r\n0\r\n\r\n' % (len(data), data)
    status, _, _ = raw_request(w, 'DELETE', '/api/v1/messages', chunked, 'application/json',
                               headers=[('Transfer-Encoding', 'chunked')])
    assert status == 200
    assert subjects(w) == ['match one', 'match two']


@pytest.mark.parametrize('ctype', list(CONTENT_TYPES.values()), ids=list(CONTENT_TYPES))
def test_put_read_with_search_changes_only_the_matches(w, ctype):
    three(w)
    status, _, body = raw_request(w, 'PUT', '/api/v1/messages',
                                  json.dumps({'Search': 'subject:match', 'Read': True}), ctype)
    assert (status, body) == (200, b'ok')
    assert read_by_subject(w) == {'match one': True, 'match two': True, 'other': False}
    raw_request(w, 'PUT', '/api/v1/messages',
                json.dumps({'Search': '"match two"', 'Read': False}), ctype)
    assert read_by_subject(w) == {'match one': True, 'match two': False, 'other': False}


@pytest.mark.parametrize('ctype', list(CONTENT_TYPES.values()), ids=list(CONTENT_TYPES))
def test_put_read_by_ids_and_all(w, ctype):
    ids = three(w)
    raw_request(w, 'PUT', '/api/v1/messages',
                json.dumps({'IDs': [ids['other']], 'Read': True}), ctype)
    assert read_by_subject(w) == {'match one': False, 'match two': False, 'other': True}
    raw_request(w, 'PUT', '/api/v1/messages', json.dumps({'Read': True}), ctype)
    assert set(read_by_subject(w).values()) == {True}
    # Read defaults to false: unread.
    raw_request(w, 'PUT', '/api/v1/messages', '{}', ctype)
    assert set(read_by_subject(w).values()) == {False}


def test_put_read_as_a_form(w):
    ids = three(w)
    body = urllib.parse.urlencode({'ids': [ids['other']], 'Read': 'True'}, doseq=True)
    raw_request(w, 'PUT', '/api/v1/messages', body, 'application/x-www-form-urlencoded')
    assert read_by_subject(w)['other'] is True


@pytest.mark.parametrize('body, status', [
    (None, 400),
    ('{"IDs": ["x"], "Search": "match", "Read": true}', 400),
    ('{"Read": "yes"}', 400),
    ('{"Search": 5}', 400),
], ids=['no-body', 'ids-and-search', 'read-not-bool', 'search-not-string'])
def test_put_read_refuses_what_mailpit_refuses(w, body, status):
    three(w)
    assert raw_request(w, 'PUT', '/api/v1/messages', body, 'application/json')[0] == status
    assert set(read_by_subject(w).values()) == {False}


@pytest.mark.parametrize('ctype', list(CONTENT_TYPES.values()), ids=list(CONTENT_TYPES))
def test_delete_search_deletes_only_the_matches(w, ctype):
    three(w)
    # A body (any) does not widen it.
    status, _, _ = raw_request(w, 'DELETE', '/api/v1/search?query=subject%3Amatch',
                               '{"IDs": []}', ctype)
    assert status == 200
    assert subjects(w) == ['other']
    assert raw_request(w, 'DELETE', '/api/v1/search?query=', None, ctype)[0] == 400
    assert subjects(w) == ['other']


@pytest.mark.parametrize('ctype', list(CONTENT_TYPES.values()), ids=list(CONTENT_TYPES))
def test_put_tags_with_each_content_type(w, ctype):
    ids = three(w)
    status, _, _ = raw_request(w, 'PUT', '/api/v1/tags',
                               json.dumps({'IDs': [ids['other']], 'Tags': ['Alpha']}), ctype)
    assert status == 200
    tags = {m['Subject']: m['Tags'] for m in w.json('/api/v1/messages')['messages']}
    assert tags == {'match one': [], 'match two': [], 'other': ['Alpha']}


@pytest.mark.parametrize('data, values, form', [
    (b'', {}, False),
    (b'  \r\n', {}, False),
    (b'null', {}, False),
    (b'{"IDs": ["a"], "Read": true}', {'ids': ['a'], 'read': True}, False),
    (b'{"ids": ["a"]} {"IDs": ["b"]}', {'ids': ['a']}, False),
    (b'ids=a&ids=b&read=true', {'ids': ['a', 'b'], 'read': ['true']}, True),
], ids=['empty', 'blank', 'null', 'object', 'two-values', 'form'])
def test_parse_body(data, values, form):
    body = parse_body(data)
    assert (body.values, body.form) == (values, form)


@pytest.mark.parametrize('data', [b'[1]', b'"text"', b'plain words', b'{"a": '])
def test_parse_body_refuses(data):
    with pytest.raises(BadRequest):
        parse_body(data)


# ---------------------------------------------------------------------------
# errors: plain text (or JSON) with the right status, never an HTML page

def test_unknown_method_is_405_in_plain_text(w):
    for method in ('PATCH', 'FOO', 'POST'):
        status, headers, body = raw_request(w, method, '/api/v1/messages')
        assert status == 405, method
        assert headers['Content-Type'].startswith('text/plain')
        assert set(headers['Allow'].split(', ')) == {'GET', 'HEAD', 'PUT', 'DELETE'}
        assert b'<' not in body
    status, headers, body = raw_request(w, 'PATCH', '/no/such/page')
    assert (status, headers['Content-Type'][:10]) == (404, 'text/plain')


def test_options_answers_an_empty_200(w):
    status, headers, body = raw_request(w, 'OPTIONS', '/api/v1/messages')
    assert (status, body) == (200, b'')


def test_malformed_request_line_is_answered_in_plain_text(w):
    url = urllib.parse.urlsplit(w.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b'GET /api/v1/messages extra HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        data = b''
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 400 ')
    assert b'Content-Type: text/plain' in head
    assert b'<html' not in body.lower() and body


def test_foreign_origin_is_refused_as_mailpit_does(w):
    three(w)
    port = urllib.parse.urlsplit(w.url).port
    for origin in ('http://evil.example', 'null'):
        foreign = [('Origin', origin)]
        assert raw_request(w, 'DELETE', '/api/v1/messages', None, None, foreign)[0] == 403
        assert raw_request(w, 'PUT', '/api/v1/messages', '{"Read": true}', None,
                           foreign)[0] == 403
        assert raw_request(w, 'POST', '/api/v1/send', '{}', None, foreign)[0] == 403
        # A GET is answered, but with nothing that lets the page read it.
        status, headers, _ = raw_request(w, 'GET', '/api/v1/messages', None, None, foreign)
        assert status == 200 and 'Access-Control-Allow-Origin' not in headers
    assert w.json('/api/v1/messages')['total'] == 3
    assert set(read_by_subject(w).values()) == {False}
    same = [('Origin', 'http://127.0.0.1:%d' % port)]
    assert raw_request(w, 'GET', '/api/v1/messages', None, None, same)[0] == 200


def test_body_too_large_is_413(w):
    url = urllib.parse.urlsplit(w.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b'DELETE /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                     b'Content-Length: 2000000\r\n\r\n{"IDs": ["')
        assert sock.recv(100).startswith(b'HTTP/1.1 413 ')


# ---------------------------------------------------------------------------
# search: Mailpit's syntax

@pytest.fixture
def searchable():
    """An Inbox with four messages of known sizes, times, flags and tags."""
    inbox = Inbox()
    day = 86400.0
    base = time.mktime((2024, 4, 10, 12, 0, 0, 0, 0, -1))  # local noon
    specs = [
        # subject, size padding, received, extra headers, read
        ('small plain', 100, base - 20 * day, {}, False),
        ('big attached', 20000, base - 5 * day, {'X-Tags': 'Invoices, host-1'}, True),
        ('inline pic', 3000, base, {}, False),
        ('ä unicode', 500, base + 3 * day, {}, False),
    ]
    for subject, pad, received, extra, read in specs:
        kw = {}
        if subject == 'big attached':
            kw['attachments'] = [('report.pdf', b'x' * pad, 'application/pdf')]
        if subject == 'inline pic':
            kw.update(html='<img src="cid:pic@x">', inline_png='<pic@x>')
        message = make_message(subject=subject, body='body of %s' % subject,
                               to='Bob Example <bob+news@example.org>'
                               if subject == 'inline pic' else 'Bob <bob@example.org>',
                               Cc='Carol <carol@example.org>', **kw, **{
                                   k.replace('-', '_'): v for k, v in extra.items()})
        stored = inbox.add(message.as_bytes(), 'sender@example.org',
                           ['bob@example.org', 'hidden@example.org'])
        stored.received = received
        stored.read = read
    return inbox


def found(inbox, query, tz=''):
    return sorted(inbox.summary(m)['Subject'] for m in inbox.search(query, tz))


SEARCHES = [
    ('plain', ['small plain']),
    ('"body of small"', ['small plain']),
    ('BODY', ['big attached', 'inline pic', 'small plain', 'ä unicode']),
    ('-plain', ['big attached', 'inline pic', 'ä unicode']),
    ('!plain !pic', ['big attached', 'ä unicode']),
    ('from:ann@example.org', ['big attached', 'inline pic', 'small plain', 'ä unicode']),
    ('from:"Ann Example"', ['big attached', 'inline pic', 'small plain', 'ä unicode']),
    ('to:"bob example"', ['inline pic']),
    ('to:hidden@example.org', []),                 # envelope-only: a Bcc
    ('bcc:hidden@example.org', ['big attached', 'inline pic', 'small plain', 'ä unicode']),
    ('cc:carol', ['big attached', 'inline pic', 'small plain', 'ä unicode']),
    ('addressed:carol -subject:big', ['inline pic', 'small plain', 'ä unicode']),
    ('subject:"PLAIN"', ['small plain']),
    ('subject:Ä', ['ä unicode']),
    ('Ä', ['ä unicode']),
    ('report.pdf', ['big attached']),
    ('is:read', ['big attached']),
    ('is:unread', ['inline pic', 'small plain', 'ä unicode']),
    ('!is:read', ['inline pic', 'small plain', 'ä unicode']),
    ('has:attachment', ['big attached']),
    ('has:attachments', ['big attached']),
    ('-has:attachment', ['inline pic', 'small plain', 'ä unicode']),
    ('has:inline', ['inline pic']),
    ('!has:inline', ['big attached', 'small plain', 'ä unicode']),
    ('is:tagged', ['big attached', 'inline pic']),  # X-Tags; a plus address
    ('-is:tagged', ['small plain', 'ä unicode']),
    ('tag:invoices', ['big attached']),
    ('tag:"HOST-1"', ['big attached']),
    ('tag:host', []),                               # the whole name
    ('tag:news', ['inline pic']),
    ('-tag:news', ['big attached', 'small plain', 'ä unicode']),
    ('larger:10k', ['big attached']),
    ('larger:10K', ['big attached']),
    ('larger:0.01mb', ['big attached']),
    ('smaller:10k', ['inline pic', 'small plain', 'ä unicode']),
    ('-larger:10k', ['inline pic', 'small plain', 'ä unicode']),
    ('smaller:1M larger:0.5kb', ['big attached', 'inline pic']),
    ('smaller:0.5k larger:230', ['ä unicode']),
    ('larger:lots', []),                            # not a size: text
    ('before:2024/04/01', ['small plain']),
    ('after:2024/04/01', ['big attached', 'inline pic', 'ä unicode']),
    ('after:2024-04-10 before:2024-04-12', ['inline pic']),
    ('-after:2024/04/09', ['big attached', 'small plain']),
    ('after:"2024-04-10 11:00"', ['inline pic', 'ä unicode']),
    ('after:04/09/2024', ['inline pic', 'ä unicode']),          # US order
    ('after:"10 April 2024"', ['inline pic', 'ä unicode']),
    ('before:notadate plain', ['small plain']),     # an unreadable date is ignored
    ('foo:bar', []),                                # an unknown filter is text
    ('is:starred', []),
    # (the envelope recipient not named in a header is a Bcc, searched too)
    ('"<bob@example.org>"', ['big attached', 'inline pic', 'small plain', 'ä unicode']),
    ('', ['big attached', 'inline pic', 'small plain', 'ä unicode']),
]


@pytest.mark.parametrize('query, expected', SEARCHES, ids=[q or 'empty' for q, _ in SEARCHES])
def test_search_syntax(searchable, query, expected):
    assert found(searchable, query) == expected


def test_an_unknown_filter_is_searched_as_text(searchable):
    message = searchable.newest_first()[0]
    searchable.delete([m.id for m in searchable.newest_first()[1:]])
    assert found(searchable, 'zz:top') == []
    # The same word in the body is found, the colon and all.
    raw = make_message(subject='odd', body='see zz:top now').as_bytes()
    searchable.add(raw)
    assert found(searchable, 'zz:top') == ['odd']
    assert message.id != searchable.newest_first()[0].id


def test_dates_without_an_offset_are_read_in_the_tz_zone():
    utc = parse_date('2024-04-01', 'UTC')
    assert utc == 1711929600
    assert parse_date('2024-04-01T00:00:00Z') == utc
    assert parse_date('2024-04-01 02:00 +02:00') == utc
    assert parse_date('1711929600') == utc
    assert parse_date('1711929600000') == utc
    assert parse_date('Mon, 01 Apr 2024 00:00:00 +0000') == utc
    zoneinfo = pytest.importorskip('zoneinfo')
    try:
        zoneinfo.ZoneInfo('Pacific/Auckland')
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip('no time zone data')
    assert parse_date('2024-04-01', 'Pacific/Auckland') == utc - 13 * 3600


@pytest.mark.parametrize('text', ['', 'tomorrow', '2024-13-01', '2024/02/30', '99/99/2024'])
def test_unreadable_dates(text):
    assert parse_date(text, 'UTC') is None


@pytest.mark.parametrize('text, size', [
    ('2M', 2 * 1024 * 1024), ('1.5MB', 1536 * 1024), ('10k', 10240), ('10 kb', 10240),
    ('500', 500), ('0', 0), ('2G', 0), ('x', 0), ('-1k', 0)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_split_query_as_mailpit():
    assert split_query('a "b c" to:"Ann E" -"x y"  ') == ['a', 'b c', 'to:Ann E', '-x y']
    assert [t.kind for t in parse_query('- ! is:read')] == ['text', 'text', 'is:read']


def test_search_over_http_with_tz_and_unread_count(w):
    w.send(make_message(subject='first'))
    w.send(make_message(subject='second'))
    first = [m for m in w.json('/api/v1/messages')['messages'] if m['Subject'] == 'first'][0]
    w.json('/api/v1/message/' + first['ID'])    # read
    data = w.json('/api/v1/search?query=after%3A2000-01-01&tz=Europe%2FBerlin')
    assert (data['messages_count'], data['messages_unread'], data['unread']) == (2, 1, 1)
    data = w.json('/api/v1/search?query=before%3A2000-01-01&tz=Nowhere%2FNothing')
    assert data['messages'] == [] and data['messages_count'] == 0
    assert w.request('/api/v1/search?query=%20')[0] == 400


# ---------------------------------------------------------------------------
# tags

def test_tags_on_arrival_from_x_tags_and_plus_addresses(w):
    w.send(make_message(subject='tagged', X_Tags='Tag 1, tag 2, bad!chars, tag 1',
                        to='Bob <bob+Deploy+ci@example.org>'))
    m = w.json('/api/v1/messages')['messages'][0]
    assert m['Tags'] == ['bad chars', 'ci', 'Deploy', 'Tag 1', 'tag 2']
    assert w.json('/api/v1/tags') == ['bad chars', 'ci', 'Deploy', 'Tag 1', 'tag 2']
    assert w.json('/api/v1/messages')['tags'] == w.json('/api/v1/tags')
    assert w.json('/api/v1/message/' + m['ID'])['Tags'] == m['Tags']
    assert w.json('/api/v1/info')['Tags'] == {t: 1 for t in m['Tags']}


def test_set_rename_and_delete_tags(w):
    ids = three(w)
    w.request('/api/v1/tags', method='PUT',
              body={'IDs': [ids['match one'], ids['match two']], 'Tags': ['Keep', 'drop me']})
    # A name the inbox has keeps its spelling; duplicates (any case) go.
    w.request('/api/v1/tags', method='PUT',
              body={'IDs': [ids['other']], 'Tags': ['keep', 'KEEP', 'x/y']})
    tags = {m['Subject']: m['Tags'] for m in w.json('/api/v1/messages')['messages']}
    assert tags == {'match one': ['drop me', 'Keep'], 'match two': ['drop me', 'Keep'],
                    'other': ['Keep', 'x y']}
    assert [m['Subject'] for m in w.json('/api/v1/search?query=tag%3Akeep')['messages']] \
        == ['other', 'match two', 'match one']
    assert w.request('/api/v1/tags/Keep', method='PUT', body={'Name': 'Kept'})[0] == 200
    assert w.request('/api/v1/tags/Kept', method='PUT', body={'Name': 'x y'})[0] == 400
    assert w.request('/api/v1/tags/nosuch', method='PUT', body={'Name': 'a'})[0] == 400
    assert w.request('/api/v1/tags/Kept', method='PUT', body={'Name': '!!'})[0] == 400
    assert w.request('/api/v1/tags/drop%20me', method='DELETE')[0] == 200
    assert w.request('/api/v1/tags/drop%20me', method='DELETE')[0] == 400
    assert w.json('/api/v1/tags') == ['Kept', 'x y']
    # An empty list takes them all off; no IDs changes nothing.
    w.request('/api/v1/tags', method='PUT', body={'IDs': [ids['other']], 'Tags': []})
    w.request('/api/v1/tags', method='PUT', body={'Tags': ['ignored']})
    assert w.json('/api/v1/tags') == ['Kept']
    assert w.json('/api/v1/search?query=is%3Atagged')['messages_count'] == 2


def test_tags_are_bounded(w):
    w.send(make_message(X_Tags=', '.join('t%d' % i for i in range(500)),
                        to='Bob <bob' + ''.join('+p%d' % i for i in range(40)) +
                        '@example.org>'), to=['bob@example.org'])
    m = w.json('/api/v1/messages')['messages'][0]
    assert len(m['Tags']) == 100 and 't0' in m['Tags']
    ids = [m['ID']]
    w.request('/api/v1/tags', method='PUT', body={'IDs': ids, 'Tags': ['u%d' % i
                                                                    for i in range(300)]})
    assert len(w.json('/api/v1/tags')) == 100


def test_clean_tag():
    assert mime.clean_tag('  a!!b   c ') == 'a b c'
    assert mime.clean_tag('x' * 150) == 'x' * 100
    assert mime.clean_tag('!!!') == ''


# ---------------------------------------------------------------------------
# fields Mailpit clients read

def test_username_of_an_authenticated_smtp_session(inbox_web):
    class Server(AuthServerMixin, WebInboxServer):
        pass

    web = inbox_web(Server, authenticator=lambda *args: True, auth_allow_plaintext=True)
    with smtplib.SMTP(web.controller.hostname, web.controller.port, timeout=30) as client:
        client.login('alice', 'secret')
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: auth\r\n\r\nx\r\n')
    web.send('Subject: anonymous\r\n\r\nx\r\n')
    users = {m['Subject']: m['Username'] for m in web.json('/api/v1/messages')['messages']}
    assert users == {'auth': 'alice', 'anonymous': ''}
    latest = web.json('/api/v1/message/latest')
    assert latest['Username'] == ''


@pytest.mark.parametrize('header, links, error', [
    ('<mailto:u@example.org>, <https://example.org/u?x=1>',
     ['mailto:u@example.org', 'https://example.org/u?x=1'], ''),
    ('<https://example.org/u> (a comment)', ['https://example.org/u'], ''),
    ('https://example.org/u', [], 'angle brackets'),
    ('<https://a.example/1>, <https://b.example/2>', ['https://a.example/1'], 'only one'),
    ('<ftp://example.org/u>', [], 'http(s)://'),
    ('<https://example.org/a b>', [], 'spaces'),
    ('<mailto:a@b.c> <https://x.y/>', [], 'comma'),
    ('<a:1>,<b:2>,<c:3>', [], 'at most'),
])
def test_list_unsubscribe(header, links, error):
    result = mime.list_unsubscribe(header, 'List-Unsubscribe=One-Click')
    assert result['Header'] == header
    assert result['Links'] == links
    assert (error in result['Errors']) and bool(result['Errors']) == bool(error)
    assert result['HeaderPost'] == 'List-Unsubscribe=One-Click'


def test_list_unsubscribe_and_checksums_in_the_message(w):
    w.send(make_message(List_Unsubscribe='<mailto:leave@example.org>',
                        attachments=[('a.bin', b'\x00\x01', 'application/octet-stream')]))
    m = w.json('/api/v1/message/latest')
    assert m['ListUnsubscribe'] == {'Header': '<mailto:leave@example.org>',
                                    'Links': ['mailto:leave@example.org'],
                                    'Errors': '', 'HeaderPost': ''}
    assert m['Attachments'][0]['Checksums'] == {
        'MD5': hashlib.md5(b'\x00\x01').hexdigest(),
        'SHA1': hashlib.sha1(b'\x00\x01').hexdigest(),
        'SHA256': hashlib.sha256(b'\x00\x01').hexdigest()}
    w.send(make_message(subject='plain'))
    assert w.json('/api/v1/message/latest')['ListUnsubscribe'] == {
        'Header': '', 'Links': [], 'Errors': '', 'HeaderPost': ''}


# ---------------------------------------------------------------------------
# POST /api/v1/send

def test_send_api_injects_a_message(w):
    status, headers, body = raw_request(w, 'POST', '/api/v1/send', json.dumps({
        'From': {'Email': 'john@example.com', 'Name': 'John Doe'},
        'To': [{'Email': 'jane@example.com', 'Name': 'Jane Doe'}],
        'Cc': [{'Email': 'manager@example.com'}],
        'Bcc': ['jack@example.com'],
        'ReplyTo': [{'Email': 'secretary@example.com', 'Name': 'Secretary'}],
        'Subject': 'Sent over HTTP',
        'Text': 'Hello text',
        'HTML': '<p>Hello <img src="cid:logo"></p>',
        'Headers': {'X-IP': '1.2.3.4'},
        'Tags': ['Tag 1', 'Tag 2'],
        'Attachments': [
            {'Content': base64.b64encode(b'attached').decode(), 'Filename': 'a.txt'},
            {'Content': 'data:image/png;base64,' + base64.b64encode(PNG).decode(),
             'Filename': 'logo.png', 'ContentID': 'logo'},
        ],
    }), 'application/json', headers=[
        ('Authorization', 'Basic ' + base64.b64encode(b'sender:pw').decode())])
    assert status == 200, body
    assert headers['Content-Type'].startswith('application/json')
    id = json.loads(body)['ID']
    m = w.json('/api/v1/message/' + id)
    assert m['From'] == {'Name': 'John Doe', 'Address': 'john@example.com'}
    assert m['To'] == [{'Name': 'Jane Doe', 'Address': 'jane@example.com'}]
    assert m['Cc'] == [{'Name': '', 'Address': 'manager@example.com'}]
    assert m['Bcc'] == [{'Name': '', 'Address': 'jack@example.com'}]
    assert m['ReplyTo'] == [{'Name': 'Secretary', 'Address': 'secretary@example.com'}]
    assert (m['Subject'], m['Text'].strip()) == ('Sent over HTTP', 'Hello text')
    assert 'Hello <img src="cid:logo">' in m['HTML']
    assert m['Tags'] == ['Tag 1', 'Tag 2']
    assert m['Username'] == 'sender'
    assert [a['FileName'] for a in m['Attachments']] == ['a.txt']
    assert [(i['FileName'], i['ContentID'], i['ContentType']) for i in m['Inline']] == [
        ('logo.png', 'logo', 'image/png')]
    assert w.json('/api/v1/message/%s/headers' % id)['X-Ip'] == ['1.2.3.4']


@pytest.mark.parametrize('body, error', [
    ('', 'EOF'),
    ('not json', 'invalid JSON'),
    ('{"To": [{"Email": "a@example.org"}]}', 'From'),
    ('{"From": {"Email": "not an address"}}', 'invalid From address'),
    ('{"From": {"Email": "a@example.org"}, "To": [{"Email": "bad"}]}', 'invalid To'),
    ('{"From": {"Email": "a@example.org"}, "Bcc": ["x"]}', 'invalid Bcc'),
    ('{"From": {"Email": "a@example.org"}, "Headers": {"Subject": "x"}}', 'cannot overwrite'),
    ('{"From": {"Email": "a@example.org"}, "Tags": ["t"], "Headers": {"x-tags": "y"}}',
     'cannot overwrite'),
    ('{"From": {"Email": "a@example.org"}, "Attachments": [{"Content": "!!", '
     '"Filename": "f"}]}', 'base64'),
    ('{"From": {"Email": "a@example.org"}, "Headers": {"X-A": "b\\r\\nBcc: c@d.e"}}',
     'invalid header'),
], ids=['empty', 'not-json', 'no-from', 'bad-from', 'bad-to', 'bad-bcc', 'own-header',
        'x-tags', 'bad-base64', 'header-injection'])
def test_send_api_errors_are_json(w, body, error):
    status, headers, text = raw_request(w, 'POST', '/api/v1/send', body, 'application/json')
    assert status == 400
    assert headers['Content-Type'].startswith('application/json')
    assert error in json.loads(text)['Error']
    assert w.json('/api/v1/messages')['total'] == 0


# ---------------------------------------------------------------------------
# release through a relay

@pytest.fixture
def upstream():
    """A capturing SMTP server to relay to."""
    controller = Controller(with_capture(smtpd_compat_server_class())).start()
    yield controller
    controller.stop()


def smtpd_compat_server_class():
    import smtpd_compat
    return smtpd_compat.SMTPServer


def test_release_relays_through_the_upstream(inbox_web, upstream):
    web = inbox_web(web_relay='%s:%d' % (upstream.hostname, upstream.port),
                    web_relay_allowed=r'@example\.org$')
    web.send(make_message(subject='to release', Bcc='secret@example.org',
                          Message_ID='<original@example.org>'))
    config = web.json('/api/v1/webui')['MessageRelay']
    assert config['Enabled'] is True and config['AllowedRecipients'] == r'@example\.org$'
    status, _, body = raw_request(web, 'POST', '/api/v1/message/latest/release',
                                  json.dumps({'To': ['Dee <dee@example.org>']}), None)
    assert (status, body) == (200, b'ok')
    [relayed] = upstream.messages
    assert relayed.mailfrom == 'ann@example.org'
    assert relayed.rcpttos == ['dee@example.org']
    text = relayed.data.decode() if isinstance(relayed.data, bytes) else relayed.data
    assert 'Subject: to release' in text
    assert 'secret@example.org' not in text             # no Bcc
    assert '<original@example.org>' not in text         # a new Message-ID
    # Not allowed, not an address, none: 400 and nothing relayed.
    for to in (['eve@example.com'], ['not an address'], []):
        status, _, body = raw_request(web, 'POST', '/api/v1/message/latest/release',
                                      json.dumps({'To': to}), 'application/json')
        assert status == 400, (to, body)
    assert len(upstream.messages) == 1
    assert web.request('/api/v1/message/nosuch/release', method='POST',
                       body={'To': ['dee@example.org']})[0] == 404


def test_release_is_off_without_a_relay(w):
    w.send(make_message())
    assert w.json('/api/v1/webui')['MessageRelay'] == {'Enabled': False}
    status, _, body = raw_request(w, 'POST', '/api/v1/message/latest/release',
                                  '{"To": ["a@example.org"]}', 'application/json')
    assert status == 400 and b'not configured' in body


def test_release_upstream_down_is_an_smtp_error(inbox_web):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    web = inbox_web(web_relay='127.0.0.1:%d' % port)
    web.send(make_message())
    status, _, body = raw_request(web, 'POST', '/api/v1/message/latest/release',
                                  '{"To": ["a@example.org"]}', 'application/json')
    assert status == 400 and body.startswith(b'SMTP error')


# ---------------------------------------------------------------------------
# swagger.json

def test_swagger_json_describes_every_route_and_only_those(w):
    from smtpd_compat.web import http, openapi
    document = w.json('/api/v1/swagger.json')
    assert document['swagger'] == '2.0'
    described = set()
    for path, operations in document['paths'].items():
        for method in operations:
            sample = path.replace('{ID}', 'latest').replace('{PartID}', '1') \
                .replace('{Tag}', 'a tag')
            handler, _ = http.find_route(method.upper(), sample)
            described.add(handler)
            for name in (p['schema']['$ref'].rpartition('/')[2]
                         for p in operations[method]['parameters']
                         if '$ref' in p.get('schema', {})):
                assert name in document['definitions']
    served = {handler for method, _, handler in http.ROUTES
              if method != 'OPTIONS' and handler.__module__ != 'smtpd_compat.web.http'}
    assert described - {http.Handler.get_livez} == served
    assert len(openapi.OPERATIONS) == len({(m, p) for m, p, *_ in openapi.OPERATIONS})

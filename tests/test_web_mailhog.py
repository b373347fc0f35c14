"""The web inbox's MailHog API: /api/v2/messages and /api/v2/search with
MailHog's JSON shape, and its v1 deletes; checked against MailHog's
documentation (its swagger description, APIv1.md), against the npm client
``mailhog`` (blueimp's, installed into a temporary folder), and against the
PyPI client ``mailhog`` where it imports (its dataclass-wizard pin does not
import on Python 3.13).
"""
import json
import subprocess
import urllib.request

import pytest

import test_web
from smtpd_compat.relay import crlf_only
from smtpd_compat.web import Inbox, mailhog, mime
from smtpd_compat.web.http import WebServer
from test_web import make_message
from test_web_events import WAIT, node_environment, npm_install
from test_web_hostile import held_by_idle_readers, hostile

inbox_web = test_web.inbox_web
w = test_web.w

ITEM_KEYS = {'ID', 'From', 'To', 'Content', 'Created', 'MIME', 'Raw'}
PATH_KEYS = {'Relays', 'Mailbox', 'Domain', 'Params'}
CONTENT_KEYS = {'Headers', 'Body', 'Size', 'MIME'}


def test_v2_messages_has_mailhogs_shape(w):
    w.send(make_message(subject='first'), mailfrom='ann@example.org',
           to=['bob@example.org', 'eve@example.com'])
    w.send(make_message(subject='second', html='<p>hi</p>'))
    data = w.json('/api/v2/messages')
    assert set(data) == {'total', 'count', 'start', 'items'}
    assert (data['total'], data['count'], data['start']) == (2, 2, 0)
    first = data['items'][1]
    assert set(first) == ITEM_KEYS
    assert first['From'] == {'Relays': None, 'Mailbox': 'ann', 'Domain': 'example.org',
                             'Params': ''}
    assert [set(p) for p in first['To']] == [PATH_KEYS, PATH_KEYS]
    assert [(p['Mailbox'], p['Domain']) for p in first['To']] == [
        ('bob', 'example.org'), ('eve', 'example.com')]
    content = first['Content']
    assert set(content) == CONTENT_KEYS
    # Raw header values, as MailHog keeps them: a list per name.
    assert content['Headers']['Subject'] == ['first']
    assert content['Headers']['To'] == ['Bob <bob@example.org>']
    assert content['Headers']['Return-Path'] == ['<ann@example.org>']
    assert content['Body'].rstrip() == 'plain body'
    assert first['Raw']['From'] == 'ann@example.org'
    assert first['Raw']['To'] == ['bob@example.org', 'eve@example.com']
    assert first['Raw']['Data'].rstrip().endswith('\r\n\r\nplain body')
    assert content['Size'] == len(first['Raw']['Data'])
    assert first['MIME'] is None
    # A multipart message: its parts, split at the boundary.
    second = data['items'][0]
    parts = second['MIME']['Parts']
    types = [p['Headers'].get('Content-Type', [''])[0] for p in parts]
    assert types[:2] == ['text/plain; charset="utf-8"', 'text/html; charset="utf-8"']
    assert parts[1]['Body'] == '<p>hi</p>'
    # Each item's ID is this inbox's: the Mailpit routes take it.
    assert w.json('/api/v1/message/' + second['ID'])['Subject'] == 'second'


def test_v2_paging_as_mailhog(w):
    for i in range(4):
        w.send(make_message(subject='m%d' % i))
    data = w.json('/api/v2/messages?start=1&limit=2')
    subjects = [i['Content']['Headers']['Subject'][0] for i in data['items']]
    assert subjects == ['m2', 'm1']
    assert (data['total'], data['count'], data['start']) == (4, 2, 1)
    # Odd values: the defaults (0, 50); a limit over 250 is 250.
    assert w.json('/api/v2/messages?start=x&limit=-3')['count'] == 4
    assert w.json('/api/v2/messages?limit=1000')['count'] == 4
    assert w.json('/api/v2/messages?start=9')['items'] == []


def test_v2_search_kinds(w):
    w.send(make_message(subject='invoice 42', to='Bob <bob@example.org>'),
           mailfrom='billing@shop.example', to=['bob@example.org'])
    w.send(make_message(subject='hello', body='see the INVOICE attached'),
           mailfrom='friend@example.net', to=['carol@example.org'])

    def subjects(query):
        data = w.json('/api/v2/search?' + query)
        assert data['total'] == data['count'] == len(data['items'])
        return [i['Content']['Headers']['Subject'][0] for i in data['items']]

    assert subjects('kind=from&query=BILLING@') == ['invoice 42']
    assert subjects('kind=from&query=ann@example') == ['hello', 'invoice 42']  # header
    assert subjects('kind=to&query=carol') == ['hello']
    assert subjects('kind=containing&query=invoice') == ['hello', 'invoice 42']
    assert subjects('kind=containing&query=nothing') == []
    for query in ('kind=subject&query=x', 'kind=from&query=', 'query=x'):
        status, headers, _ = w.request('/api/v2/search?' + query)
        assert status == 400, query


def test_v1_deletes_as_mailhog(w):
    for i in range(3):
        w.send(make_message(subject='m%d' % i))
    items = w.json('/api/v2/messages')['items']
    status, _, body = w.request('/api/v1/messages/' + items[0]['ID'], method='DELETE')
    assert (status, body) == (200, b'')
    assert w.json('/api/v2/messages')['total'] == 2
    assert w.request('/api/v1/messages/nosuchid', method='DELETE')[0] == 404
    # MailHog's "delete all" is the same request as Mailpit's without IDs;
    # without a body the answer is empty, as MailHog's (its clients parse
    # a body as JSON).
    assert w.request('/api/v1/messages', method='DELETE')[::2] == (200, b'')
    assert w.json('/api/v2/messages')['total'] == 0


def test_a_message_that_is_not_utf8_is_still_json(w):
    w.send(b'Subject: \xff\xfe\r\n\r\nbody \xe9\r\n')
    item = w.json('/api/v2/messages')['items'][0]
    assert item['Content']['Headers']['Subject'] == ['\ufffd\ufffd']
    assert item['Content']['Body'].rstrip() == 'body \ufffd'


def test_nested_multipart_parts(w):
    w.send(make_message(subject='nested', html='<p>x</p>', inline_png='<a@b>',
                        attachments=[('f.txt', b'file', 'text/plain')]))
    item = w.json('/api/v2/messages')['items'][0]
    top = item['MIME']['Parts']
    assert any(p['MIME'] and p['MIME']['Parts'] for p in top)
    attached = [p for p in top
                if 'attachment' in p['Headers'].get('Content-Disposition', [''])[0]]
    assert len(attached) == 1


# ---------------------------------------------------------------------------
# MailHog clients, unchanged

NODE_SCRIPT = r'''
const mailhog = require('mailhog')({host: process.argv[2], port: Number(process.argv[3])});
(async () => {
  const all = await mailhog.messages();
  const latest = await mailhog.latestTo('bob@example.org');
  const found = await mailhog.search('attached', 'containing');
  const withFile = await mailhog.latestContaining('report.pdf');
  const out = {
    total: all.total, count: all.count,
    subject: latest.subject, from: latest.from, to: latest.to, text: latest.text,
    html: latest.html, attachments: withFile.attachments.map(a => a.name),
    found: found.total,
  };
  await mailhog.deleteMessage(latest.ID);
  out.afterDelete = (await mailhog.messages()).total;
  await mailhog.deleteAll();
  out.afterDeleteAll = (await mailhog.messages()).total;
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
'''


def test_mailhog_npm_client(w, tmp_path_factory):
    folder = npm_install(tmp_path_factory, 'mailhog@4.16.0')
    script = folder / 'client.js'
    script.write_text(NODE_SCRIPT)
    w.send(make_message(subject='older',
                        attachments=[('report.pdf', b'%PDF', 'application/pdf')]))
    w.send(make_message(subject='=?utf-8?q?Gr=C3=BC=C3=9Fe?=', body='Grüße, see attached',
                        html='<p>Grüße</p>'), to=['bob@example.org'])
    host, port = w.controller.server.web_server.server_address[:2]
    proc = subprocess.run(['node', str(script), host, str(port)], cwd=folder,
                          env=node_environment(), capture_output=True, text=True, timeout=WAIT * 4)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out['total'], out['count']) == (2, 2)
    assert out['subject'] == 'Grüße'
    assert out['from'] == 'Ann Example <ann@example.org>'
    assert out['to'] == 'Bob <bob@example.org>'
    assert out['text'].strip() == 'Grüße, see attached'
    assert out['html'].strip() == '<p>Grüße</p>'
    assert out['attachments'] == ['report.pdf']
    assert out['found'] == 1
    assert (out['afterDelete'], out['afterDeleteAll']) == (1, 0)


def test_mailhog_pypi_client(w):
    try:
        import mailhog as client
    except ImportError as e:     # not installed, or its dataclass-wizard on 3.13
        pytest.skip('the PyPI mailhog client does not import here: %s' % e)
    port = w.controller.server.web_server.server_address[1]
    api = client.Mailhog(host='127.0.0.1', port=port)
    w.send(make_message(subject='for pypi'), mailfrom='ann@example.org',
           to=['bob@example.org'])
    messages = api.messages()
    assert (messages.total, messages.count, messages.start) == (1, 1, 0)
    message = messages.items[0]
    assert message.get_sender() == 'ann@example.org'
    assert message.get_recipients() == ['bob@example.org']
    assert message.get_subject() == 'for pypi'
    assert api.search('pypi').total == 1
    assert api.search('bob@', kind='to').total == 1
    assert api.search('nobody', kind='from').total == 0
    api.delete(message)
    assert api.messages().total == 0
    w.send(make_message())
    api.delete_all()
    assert api.messages().total == 0


# ---------------------------------------------------------------------------
# What it costs: the web inbox's parser, sources streamed a slice at a time

SLICE = mailhog._SLICE


def _straddling_source():
    # Bare LF line ends (as smtpd hands the data over), a CRLF and a
    # two-byte UTF-8 character each cut by a slice boundary, a bare CR,
    # and a byte that is not UTF-8.
    head = b'Subject: slices\nTo: bob@example.org\n\n'
    filler = b'a' * (SLICE - len(head) - 1)
    return (head + filler + b'\r\n' + b'b' * (SLICE - 2) + '\u00e9'.encode('utf-8')
            + b'c\rd\n\xffend marker\n')


def test_sources_are_sent_with_crlf_line_ends_across_slices():
    raw = _straddling_source()
    inbox = Inbox()
    inbox.add(raw, 'ann@example.org', ['bob@example.org'])
    server = WebServer(('127.0.0.1', 0), inbox).start()
    try:
        with urllib.request.urlopen(server.url + 'api/v2/messages', timeout=WAIT) as r:
            # Streamed: more than a chunk, so not a Content-Length.
            assert r.headers['Transfer-Encoding'] == 'chunked'
            item = json.load(r)['items'][0]
    finally:
        server.stop()
        inbox.close()
    data = crlf_only(raw).decode('utf-8', 'replace')
    assert item['Raw']['Data'] == data
    assert item['Content']['Body'] == data.partition('\r\n\r\n')[2]
    assert item['Content']['Size'] == len(crlf_only(raw))
    assert item['Content']['Headers']['Subject'] == ['slices']
    assert '\u00e9c\r\nd\r\n\ufffdend marker' in item['Raw']['Data']


def test_search_reads_bodies_across_slices(w):
    w.send(_straddling_source())
    w.send(make_message(subject='other'))
    # Each query's text is cut by a slice boundary in the message.
    for query in ('aa%0D%0Abb', 'b%C3%A9C', 'END%20MARKER'):
        data = w.json('/api/v2/search?kind=containing&query=' + query)
        assert [i['Content']['Headers']['Subject'][0] for i in data['items']] == [
            'slices'], query


def test_parts_as_mailhog_splits_them_within_the_parsers_caps(w):
    # A part without headers is left out (as MailHog leaves it out); the
    # parts are those the inbox's parser follows (its cap, not 60,000).
    w.send(b'Subject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n'
           b'preamble\r\n--b\r\n\r\nheaderless\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
           b'\r\nbody\r\n\r\n--b--\r\nepilogue\r\n')
    w.send(b'Subject: many\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n'
           + b'--b\r\nContent-Type: text/plain\r\n\r\nx\r\n' * 2000 + b'--b--\r\n')
    w.send(hostile.many_parts())        # 60,000 parts without headers
    items = w.json('/api/v2/messages')['items']
    assert items[0]['MIME'] == {'Parts': []}
    assert len(items[1]['MIME']['Parts']) == mime.MAX_PARTS
    [part] = items[2]['MIME']['Parts']
    assert part['Headers'] == {'Content-Type': ['text/plain']}
    # What lies between the boundaries, without the line breaks around it;
    # the body is what follows the first empty line (here another one).
    assert part['Body'] == '\r\nbody'
    assert part['Size'] == len('Content-Type: text/plain\r\n\r\n\r\nbody')


def test_the_list_reuses_a_cached_parse():
    inbox = Inbox(ingest=False)
    message = inbox.add(make_message().as_bytes(), 'a@x', ['b@x'])
    tree = inbox.tree(message)
    assert tree is not inbox.tree(message)            # not cached: parsed each time
    parsed = inbox.parsed(message)                     # the Mailpit view caches one
    assert inbox.tree(message) is parsed.msg


def test_a_big_list_is_streamed_not_copied_per_reader():
    # 6 clients ask for MailHog's list of a 4 MiB message (its source is in
    # it twice: Body and Raw.Data) and read nothing: the server holds a
    # chunk each, not the item (several times the message) each.
    inbox = Inbox()
    inbox.add(hostile.big_text(4 * 1024 * 1024, 0), 'a@x', ['b@x'])
    try:
        inbox.flush(ingested=True)
        held = held_by_idle_readers(inbox, '/api/v2/messages')
    finally:
        inbox.close()
    assert held < 4 * 1024 * 1024, held

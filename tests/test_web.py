"""The web inbox (smtpd_compat.web): its Mailpit-compatible API spoken with
urllib against a live server, mail sent with smtplib; bounds, hostile MIME,
the CLI, and a Mailpit client library (when installed).

The browser tests are in test_web_browser.py.
"""
import base64
import hashlib
import itertools
import json
import os
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from email.header import Header
from email.message import EmailMessage

import pytest

import smtpd_compat
from smtpd_compat import web
from smtpd_compat.web import mime
from smtpd_compat.controller import CapturingServer, Controller, with_capture
from smtpd_compat.delivery import MaildirServer
from smtpd_compat import pytest_plugin
from smtpd_compat.web import Inbox, WebInboxServer, WebInboxServerMixin

from conftest import free_port, recv_reply, reserved_port, wait_for_port

# The plugin's fixture (the package need not be installed for its entry
# point to register it).
smtpd_compat_server = pytest_plugin.smtpd_compat_server

PNG = base64.b64decode(
    'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA'
    'hKmMIQAAAABJRU5ErkJggg==')


# ---------------------------------------------------------------------------
# helpers

class Web:
    """A started Controller with a web inbox, and small HTTP helpers."""

    def __init__(self, controller):
        self.controller = controller
        self.url = controller.web_url
        self.inbox = controller.server.inbox

    def request(self, path, method='GET', body=None, headers=None):
        """(status, headers, body bytes); HTTP errors are returned too."""
        data = body
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers.setdefault('Content-Type', 'application/json')
        req = urllib.request.Request(self.url + path.lstrip('/'), data=data,
                                     method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers, e.read()

    def json(self, path, **kw):
        status, headers, body = self.request(path, **kw)
        assert status == 200, (path, status, body)
        assert headers['Content-Type'].startswith('application/json')
        return json.loads(body)

    def send(self, message, to=None, mailfrom=None):
        with smtplib.SMTP(self.controller.hostname, self.controller.port,
                          timeout=30) as client:
            if isinstance(message, EmailMessage):
                client.send_message(message, from_addr=mailfrom, to_addrs=to)
            else:
                client.sendmail(mailfrom or 'sender@example.org',
                                to or ['rcpt@example.org'], message)


@pytest.fixture
def inbox_web():
    """Factory: ``inbox_web(server_class=WebInboxServer, **kwargs)`` -> Web."""
    started = []

    def start(server_class=WebInboxServer, **kwargs):
        kwargs.setdefault('web', ('127.0.0.1', 0))
        controller = Controller(server_class, **kwargs).start()
        started.append(controller)
        return Web(controller)

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def w(inbox_web):
    return inbox_web()


def make_message(subject='Hello', body='plain body', html=None, sender=None,
                 to='Bob <bob@example.org>', attachments=(), inline_png=None,
                 **headers):
    m = EmailMessage()
    m['From'] = sender or 'Ann Example <ann@example.org>'
    m['To'] = to
    m['Subject'] = subject
    for name, value in headers.items():
        m[name.replace('_', '-')] = value
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype='html')
        if inline_png is not None:
            m.get_payload()[1].add_related(PNG, 'image', 'png', cid=inline_png)
    for filename, data, ctype in attachments:
        maintype, subtype = ctype.split('/')
        m.add_attachment(data, maintype=maintype, subtype=subtype,
                         filename=filename)
    return m


# ---------------------------------------------------------------------------
# the Mailpit API: list, message, headers, raw, part

LIST_KEYS = {'total', 'unread', 'count', 'messages_count', 'messages_unread',
             'start', 'tags', 'messages'}
SUMMARY_KEYS = {'ID', 'MessageID', 'Read', 'From', 'To', 'Cc', 'Bcc',
                'ReplyTo', 'Subject', 'Created', 'Username', 'Tags', 'Size',
                'Attachments', 'Snippet'}
MESSAGE_KEYS = {'ID', 'MessageID', 'Read', 'From', 'To', 'Cc', 'Bcc',
                'ReplyTo', 'ReturnPath', 'Subject', 'ListUnsubscribe', 'Date',
                'Tags', 'Username', 'Text', 'HTML', 'Size', 'Inline',
                'Attachments'}
ATTACHMENT_KEYS = {'PartID', 'FileName', 'ContentType', 'ContentID', 'Size',
                   'Checksums'}


def test_list_is_newest_first_with_mailpits_fields(w):
    for i in range(3):
        w.send(make_message(subject='number %d' % i))
    data = w.json('/api/v1/messages')
    assert set(data) == LIST_KEYS
    assert (data['total'], data['unread'], data['count'],
            data['messages_count'], data['start'], data['tags']) == (3, 3, 3, 3, 0, [])
    assert [m['Subject'] for m in data['messages']] == [
        'number 2', 'number 1', 'number 0']
    first = data['messages'][0]
    assert set(first) == SUMMARY_KEYS
    assert first['From'] == {'Name': 'Ann Example', 'Address': 'ann@example.org'}
    assert first['To'] == [{'Name': 'Bob', 'Address': 'bob@example.org'}]
    assert first['Read'] is False
    assert first['Attachments'] == 0
    assert first['Snippet'] == 'plain body'
    assert first['Size'] == len(w.request('/api/v1/message/%s/raw' % first['ID'])[2])
    # Created: RFC 3339 with milliseconds, close to now.
    created = time.mktime(time.strptime(first['Created'][:19], '%Y-%m-%dT%H:%M:%S'))
    assert first['Created'].endswith('+00:00')
    assert abs(created - time.mktime(time.gmtime())) < 120


def test_list_paging_start_and_limit(w):
    for i in range(5):
        w.send(make_message(subject='m%d' % i))
    data = w.json('/api/v1/messages?start=1&limit=2')
    assert [m['Subject'] for m in data['messages']] == ['m3', 'm2']
    assert (data['start'], data['count'], data['messages_count'], data['total']) == (1, 2, 5, 5)
    assert w.json('/api/v1/messages?start=10')['messages'] == []
    # What Mailpit does with odd values: the defaults (0, 50); a limit of 0
    # lists everything.
    assert len(w.json('/api/v1/messages?limit=x')['messages']) == 5
    assert w.json('/api/v1/messages?start=-1&limit=1')['start'] == 0
    assert w.json('/api/v1/messages?start=2&limit=0')['count'] == 5


def test_message_detail_with_html_inline_image_and_attachment(w):
    w.send(make_message(
        subject='=?utf-8?q?Gr=C3=BC=C3=9Fe?= from the app',
        html='<p>Hi <img src="cid:logo@app"></p>', inline_png='<logo@app>',
        attachments=[('report.pdf', b'%PDF-1.4 data', 'application/pdf')],
        Cc='Carol <carol@example.org>', Reply_To='help@example.org',
        Message_ID='<abc.123@example.org>',
        Date='Mon, 30 Nov 2026 04:00:00 +0100'),
        to=['bob@example.org', 'carol@example.org', 'hidden@example.org'])
    m = w.json('/api/v1/message/latest')
    assert set(m) == MESSAGE_KEYS
    assert m['Subject'] == 'Grüße from the app'
    assert m['MessageID'] == 'abc.123@example.org'
    assert m['Cc'] == [{'Name': 'Carol', 'Address': 'carol@example.org'}]
    assert m['ReplyTo'] == [{'Name': '', 'Address': 'help@example.org'}]
    # An envelope recipient named in no header was a Bcc (as Mailpit shows).
    assert m['Bcc'] == [{'Name': '', 'Address': 'hidden@example.org'}]
    assert m['ReturnPath'] == 'ann@example.org'
    assert m['Date'] == '2026-11-30T04:00:00+01:00'
    assert m['Text'] == 'plain body\n'
    assert m['HTML'] == '<p>Hi <img src="cid:logo@app"></p>\n'
    assert m['Read'] is True
    [inline] = m['Inline']
    [attachment] = m['Attachments']
    assert set(inline) == set(attachment) == ATTACHMENT_KEYS
    assert inline['ContentID'] == 'logo@app'
    assert inline['ContentType'] == 'image/png'
    assert inline['Size'] == len(PNG)
    assert attachment == {'PartID': '2', 'FileName': 'report.pdf',
                          'ContentType': 'application/pdf', 'ContentID': '',
                          'Size': len(b'%PDF-1.4 data'), 'Checksums': {
                              'MD5': hashlib.md5(b'%PDF-1.4 data').hexdigest(),
                              'SHA1': hashlib.sha1(b'%PDF-1.4 data').hexdigest(),
                              'SHA256': hashlib.sha256(b'%PDF-1.4 data').hexdigest()}}
    # Parts by PartID, with their content type, decoded.
    status, headers, body = w.request('/api/v1/message/%s/part/2' % m['ID'])
    assert (status, headers['Content-Type'], body) == (
        200, 'application/pdf', b'%PDF-1.4 data')
    status, headers, body = w.request('/api/v1/message/%s/part/%s'
                                      % (m['ID'], inline['PartID']))
    assert (status, headers['Content-Type'], body) == (200, 'image/png', PNG)
    assert w.request('/api/v1/message/%s/part/9' % m['ID'])[0] == 404
    # Opening it marked it read.
    listed = w.json('/api/v1/messages')
    assert listed['unread'] == 0 and listed['messages'][0]['Read'] is True
    assert listed['messages'][0]['Attachments'] == 1


def test_html_only_message_gets_text_from_html(w):
    m = EmailMessage()
    m['From'] = 'a@example.org'
    m['To'] = 'b@example.org'
    m['Subject'] = 'html only'
    m.set_content('<style>p{color:red}</style><p>First&amp;para</p><p>Second</p>',
                  subtype='html')
    w.send(m)
    detail = w.json('/api/v1/message/latest')
    assert detail['Text'] == 'First&para\nSecond'
    assert w.json('/api/v1/messages')['messages'][0]['Snippet'] == 'First&para Second'


def _words(text):
    """``text`` as email.header.Header writes it: encoded words only."""
    return Header(text, 'utf-8').encode()


@pytest.mark.parametrize('sender, to, from_, to_, bcc', [
    (_words('\u00c4nn Ex\u00e4mple <ann@example.org>'), _words('Bob <bob@example.org>'),
     {'Name': '\u00c4nn Ex\u00e4mple', 'Address': 'ann@example.org'},
     [{'Name': 'Bob', 'Address': 'bob@example.org'}], []),
    (_words('Ann, Example <ann@example.org>'), 'bob@example.org',
     {'Name': 'Ann, Example', 'Address': 'ann@example.org'},
     [{'Name': '', 'Address': 'bob@example.org'}], []),
    # Folded into several words (a long name), and a list with one word.
    (_words('A name long enough to be folded into a second encoded word '
            '<ann.long@example.org>'),
     _words('bob@example.org') + ', carol@example.org',
     {'Name': 'A name long enough to be folded into a second encoded word',
      'Address': 'ann.long@example.org'},
     [{'Name': '', 'Address': 'bob@example.org'},
      {'Name': '', 'Address': 'carol@example.org'}], []),
    # Names only (a common tutorial's Header('name')): the name shows, as
    # Mailpit shows it; the recipient the headers do not name is a Bcc.
    (_words('\u00c4nn'), _words('Bob'),
     {'Name': '\u00c4nn', 'Address': ''}, [{'Name': 'Bob', 'Address': ''}],
     [{'Name': '', 'Address': 'bob@example.org'}]),
], ids=['name-and-address', 'comma-in-name', 'folded-and-list', 'names-only'])
def test_address_headers_of_encoded_words_only(w, sender, to, from_, to_, bcc):
    rcpts = [a['Address'] for a in to_ if a['Address']] or ['bob@example.org']
    w.send(('From: %s\nTo: %s\nSubject: encoded\n\nbody\n' % (sender, to)).encode(),
           to=rcpts, mailfrom='ann@example.org')
    assert '=?' in sender
    detail = w.json('/api/v1/message/latest')
    assert (detail['From'], detail['To'], detail['Bcc']) == (from_, to_, bcc)
    [summary] = w.json('/api/v1/messages')['messages']
    assert (summary['From'], summary['To'], summary['Bcc']) == (from_, to_, bcc)
    assert [m['Subject'] for m in w.json(
        '/api/v1/search?query=from:' + urllib.parse.quote(from_['Name'].split()[0]))[
            'messages']] == ['encoded']


@pytest.mark.parametrize('markup, text', [
    ('<p>a</p><p>b</p>', 'a\nb'),
    ('<html><head><title>t</title><body>unclosed head</body>', 'unclosed head'),
    ('<script>var x = "<p>";</script>visible', 'visible'),
    ('x &lt;y&gt; &amp; &#233;', 'x <y> & \u00e9'),
    ('<p>stray</b></i></div>', 'stray'),
], ids=['blocks', 'unclosed-head', 'script', 'entities', 'stray-end-tags'])
def test_html_to_text(markup, text):
    assert web.html_to_text(markup) == text


def test_headers_raw_and_latest(w):
    raw = (b'From: a@example.org\r\nTo: b@example.org\r\nSubject: one\r\n'
           b'Message-ID: <x@y>\r\nX-Custom: 1\r\nX-Custom: 2\r\n\r\nbody\r\n')
    w.send(raw)
    latest = w.json('/api/v1/message/latest')
    headers = w.json('/api/v1/message/%s/headers' % latest['ID'])
    # Go's canonical keys, sorted, every value kept (as Mailpit returns).
    assert list(headers) == sorted(headers)
    assert headers['Message-Id'] == ['<x@y>']
    assert headers['X-Custom'] == ['1', '2']
    assert headers['Subject'] == ['one']
    status, hdrs, body = w.request('/api/v1/message/latest/raw')
    assert status == 200 and hdrs['Content-Type'] == 'text/plain; charset=utf-8'
    # The server's process_message gets "\n" line ends (the stdlib's).
    assert body == raw.replace(b'\r\n', b'\n').rstrip(b'\n')
    status, hdrs, _ = w.request('/api/v1/message/latest/raw?dl=1')
    assert hdrs['Content-Disposition'].startswith('attachment;')
    assert '.eml' in hdrs['Content-Disposition']
    status, _, text = w.request('/view/latest.txt')
    assert (status, text) == (200, b'body')


def test_header_decoding(w):
    # Encoded words in names and subjects (RFC 2047), raw UTF-8 headers
    # (RFC 6532), folded lines (RFC 5322 section 2.2.3).
    w.send('From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.org>\r\n'
           'To: "Zo\u00eb, Team" <zoe@example.org>, plain@example.org\r\n'
           'Subject: a folded\r\n  =?iso-8859-1?q?s=FCbject?= line\r\n'
           '\r\nbody\r\n'.encode('utf-8'))
    m = w.json('/api/v1/messages')['messages'][0]
    assert m['From'] == {'Name': 'J\u00f6rg M\u00fcller', 'Address': 'joerg@example.org'}
    assert m['To'] == [{'Name': 'Zo\u00eb, Team', 'Address': 'zoe@example.org'},
                       {'Name': '', 'Address': 'plain@example.org'}]
    assert m['Subject'] == 'a folded s\u00fcbject line'
    headers = w.json('/api/v1/message/latest/headers')
    assert headers['Subject'] == ['a folded s\u00fcbject line']


def test_not_found_and_empty_inbox(w):
    assert w.request('/api/v1/message/latest')[0] == 404
    assert w.request('/api/v1/message/nosuchid')[0] == 404
    assert w.request('/api/v1/message/nosuchid/raw')[0] == 404
    assert w.request('/api/v1/nothing')[0] == 404
    assert w.request('/view/nosuchid.html')[0] == 404
    data = w.json('/api/v1/messages')
    assert (data['total'], data['messages']) == (0, [])


# ---------------------------------------------------------------------------
# search, delete, read status, info

def test_search_fields_words_phrases_and_negation(w):
    w.send(make_message(subject='Invoice 42', sender='Billing <billing@shop.example>',
                        to='carol@example.org', body='Please pay the amount due.',
                        attachments=[('invoice.pdf', b'x', 'application/pdf')]))
    w.send(make_message(subject='Welcome aboard', sender='hello@shop.example',
                        to='dave@example.org', body='Confirm your account.'))
    w.send(make_message(subject='Reset password', sender='security@other.example',
                        to='carol@example.org', body='Click to reset.'))

    def subjects(query):
        data = w.json('/api/v1/search?query=' + urllib.parse.quote(query))
        assert data['messages_count'] == len(data['messages'])
        assert data['total'] == 3
        return sorted(m['Subject'] for m in data['messages'])

    assert subjects('from:shop.example') == ['Invoice 42', 'Welcome aboard']
    assert subjects('from:billing') == ['Invoice 42']
    assert subjects('to:carol@example.org') == ['Invoice 42', 'Reset password']
    assert subjects('subject:welcome') == ['Welcome aboard']
    assert subjects('subject:"reset password"') == ['Reset password']
    assert subjects('confirm') == ['Welcome aboard']            # body text
    assert subjects('CONFIRM account') == ['Welcome aboard']    # ANDed
    assert subjects('"amount due"') == ['Invoice 42']
    assert subjects('to:carol -subject:invoice') == ['Reset password']
    assert subjects('!from:shop') == ['Reset password']
    assert subjects('has:attachment') == ['Invoice 42']
    assert subjects('invoice.pdf') == ['Invoice 42']            # file name
    assert subjects('nothing-like-this') == []
    assert subjects('http://x') == []       # not a field: a plain word
    w.json('/api/v1/message/latest')        # reads "Reset password"
    assert subjects('is:read') == ['Reset password']
    assert subjects('is:unread') == ['Invoice 42', 'Welcome aboard']
    assert w.request('/api/v1/search')[0] == 400
    assert w.request('/api/v1/search?query=%20')[0] == 400
    # DELETE /api/v1/search deletes what matches.
    assert w.request('/api/v1/search?query=from:shop', method='DELETE')[0] == 200
    assert [m['Subject'] for m in w.json('/api/v1/messages')['messages']] == ['Reset password']


def test_delete_by_ids_and_all(w):
    for i in range(4):
        w.send(make_message(subject='d%d' % i))
    ids = [m['ID'] for m in w.json('/api/v1/messages')['messages']]
    status, headers, body = w.request('/api/v1/messages', method='DELETE',
                                      body={'IDs': ids[:2]})
    assert (status, body) == (200, b'ok')
    assert [m['ID'] for m in w.json('/api/v1/messages')['messages']] == ids[2:]
    # Unknown IDs are ignored; keys are matched without regard to case
    # (Go's JSON decoder does so for Mailpit).
    w.request('/api/v1/messages', method='DELETE', body={'ids': ['nope', ids[2]]})
    assert [m['ID'] for m in w.json('/api/v1/messages')['messages']] == ids[3:]
    assert w.request('/api/v1/messages', method='DELETE', body=b'{bad',
                     headers={'Content-Type': 'application/json'})[0] == 400
    assert w.request('/api/v1/messages', method='DELETE', body={'IDs': 'x'})[0] == 400
    # No body (or no IDs): everything.
    assert w.request('/api/v1/messages', method='DELETE')[0] == 200
    assert w.json('/api/v1/messages')['total'] == 0
    assert w.json('/api/v1/info')['RuntimeStats']['MessagesDeleted'] == 4


def test_delete_with_a_form_body(w):
    # What mailpit-api-client sends (httpx data=): a form, not JSON.
    for i in range(2):
        w.send(make_message(subject='f%d' % i))
    ids = [m['ID'] for m in w.json('/api/v1/messages')['messages']]
    body = urllib.parse.urlencode({'ids': ids[0]}).encode()
    w.request('/api/v1/messages', method='DELETE', body=body,
              headers={'Content-Type': 'application/x-www-form-urlencoded'})
    assert [m['ID'] for m in w.json('/api/v1/messages')['messages']] == ids[1:]


def test_set_read_status(w):
    for i in range(2):
        w.send(make_message(subject='r%d' % i))
    ids = [m['ID'] for m in w.json('/api/v1/messages')['messages']]
    w.request('/api/v1/messages', method='PUT', body={'IDs': [ids[0]], 'Read': True})
    data = w.json('/api/v1/messages')
    assert data['unread'] == 1
    assert [m['Read'] for m in data['messages']] == [True, False]
    w.request('/api/v1/messages', method='PUT', body={'Read': True})
    assert w.json('/api/v1/messages')['unread'] == 0
    w.request('/api/v1/messages', method='PUT', body={'Read': False})
    assert w.json('/api/v1/messages')['unread'] == 2


def test_info(w):
    w.send(make_message())
    info = w.json('/api/v1/info')
    assert info['Messages'] == 1 and info['Unread'] == 1
    assert info['Version'].startswith('smtpd_compat')
    stats = info['RuntimeStats']
    assert stats['SMTPAccepted'] == 1
    # What the inbox keeps: the message, and its summary and parse.
    assert info['DatabaseSize'] >= stats['SMTPAcceptedSize'] > 0
    assert w.json('/api/v1/tags') == []


# ---------------------------------------------------------------------------
# safety: CSP, sandbox, escaping, header injection, DNS rebinding

def test_message_html_is_served_sandboxed_with_cid_images_rewritten(w):
    w.send(make_message(html='<img src="cid:logo@app"><script>alert(1)</script>',
                        inline_png='<logo@app>'))
    m = w.json('/api/v1/message/latest')
    status, headers, body = w.request('/view/%s.html?embed=1' % m['ID'])
    assert status == 200
    csp = headers['Content-Security-Policy']
    assert "default-src 'none'" in csp
    assert 'script-src' not in csp and 'unsafe-eval' not in csp
    assert 'sandbox' in csp and 'allow-scripts' not in csp
    assert headers['X-Content-Type-Options'] == 'nosniff'
    part = m['Inline'][0]['PartID']
    assert ('<img src="/api/v1/message/%s/part/%s">' % (m['ID'], part)).encode() in body
    assert b'<base target="_blank">' in body
    # Without embed=1 the HTML is as sent (cid: rewritten), as Mailpit does.
    assert b'<base' not in w.request('/view/%s.html' % m['ID'])[2]
    # Parts and raw source can never run as a page of this origin.
    for path in ('/api/v1/message/%s/part/%s' % (m['ID'], part),
                 '/api/v1/message/%s/raw' % m['ID']):
        headers = w.request(path)[1]
        assert 'sandbox' in headers['Content-Security-Policy']
        assert headers['X-Content-Type-Options'] == 'nosniff'


def test_message_html_remote_images_only_when_asked(w):
    # The page's remote-images toggle (off by default) adds remote=1;
    # only the image sources change, never the script or sandbox rules.
    w.send(make_message(html='<img src="https://img.example/x.png">'))
    m = w.json('/api/v1/message/latest')

    def img_src(query):
        status, headers, body = w.request('/view/%s.html%s' % (m['ID'], query))
        assert status == 200 and b'https://img.example/x.png' in body
        directives = dict(d.strip().partition(' ')[::2] for d in
                          headers['Content-Security-Policy'].split(';'))
        return directives.pop('img-src'), directives

    blocked, rules = img_src('?embed=1')
    assert 'http' not in blocked
    for query in ('?embed=1&remote=0', '?embed=1&remote=yes'):
        assert img_src(query) == (blocked, rules)
    allowed, same_rules = img_src('?embed=1&remote=1')
    assert allowed.split() == blocked.split() + ['https:', 'http:']
    assert same_rules == rules and 'allow-scripts' not in rules['sandbox']


def test_page_csp_allows_only_own_scripts(w):
    status, headers, body = w.request('/')
    assert status == 200 and headers['Content-Type'].startswith('text/html')
    csp = headers['Content-Security-Policy']
    assert "script-src 'self'" in csp and 'unsafe-inline' not in csp
    assert "frame-ancestors 'none'" in csp
    assert b'<script src="/app.js"' in body
    # /view/{ID} is the same page (the script shows the message).
    assert w.request('/view/anything')[2] == body
    for path in ('/app.js', '/app.css'):
        assert w.request(path)[0] == 200
    # The script never parses message data as HTML.
    script = w.request('/app.js')[2].decode()
    assert 'innerHTML' not in script and 'insertAdjacentHTML' not in script
    assert 'document.write' not in script


def test_hostile_file_name_cannot_inject_response_headers(w):
    # RFC 2231 lets a parameter carry any octet, CR LF included.
    w.send(b'From: a@example.org\nSubject: attack\n'
           b'Content-Type: multipart/mixed; boundary=b\n\n'
           b'--b\n\nx\n--b\nContent-Type: application/octet-stream\n'
           b"Content-Disposition: attachment; filename*=utf-8''a%22%0D%0ASet-Cookie:%20x=1%0D%0A.bin\n"
           b'\ndata\n--b--\n')
    detail = w.json('/api/v1/message/latest')
    part = detail['Attachments'][0]['PartID']
    status, headers, body = w.request('/api/v1/message/%s/part/%s?dl=1'
                                      % (detail['ID'], part))
    assert status == 200 and body == b'data'
    assert 'Set-Cookie' not in headers
    disposition = headers['Content-Disposition']
    assert '\r' not in disposition and '\n' not in disposition
    assert disposition.startswith('attachment; filename="')


def test_encoded_line_breaks_do_not_split_header_values(w):
    # An encoded-word may decode to CR LF; no value we return carries one.
    w.send(b'From: a@example.org\nSubject: =?utf-8?q?one=0D=0AX-Injected:_yes?=\n\nx\n')
    detail = w.json('/api/v1/message/latest')
    assert detail['Subject'] == 'one X-Injected: yes'
    headers = w.json('/api/v1/message/latest/headers')
    assert 'X-Injected' not in headers
    assert all('\n' not in v and '\r' not in v for vs in headers.values() for v in vs)


def test_foreign_host_header_is_refused(w):
    # DNS rebinding: a site whose name resolves to 127.0.0.1 must not read
    # a loopback inbox through the victim's browser.
    status, _, _ = w.request('/api/v1/messages', headers={'Host': 'evil.example:80'})
    assert status == 403
    for host in ('localhost:1', '127.0.0.1', 'app.localhost:8025', '[::1]:8025'):
        assert w.request('/api/v1/messages', headers={'Host': host})[0] == 200


HOSTILE = {
    'no-boundary': b'From: a@x\nContent-Type: multipart/mixed\n\n--zz\n\nbody\n',
    'bad-charset': (b'From: a@x\nSubject: =?x-nonsense?q?abc?=\n'
                    b'Content-Type: text/plain; charset=x-nonsense\n\n\xff\xfe text\n'),
    'bad-base64': (b'From: a@x\nContent-Type: text/plain\n'
                   b'Content-Transfer-Encoding: base64\n\n!!!not base64***\n'),
    'eight-bit-headers': b'From: \xff\xfe <a@x>\nTo: \x80\x81@\x82\nSubject: \xe9t\xe9\n\nbody\n',
    'nul-bytes': b'From: a@x\nSubject: a\x00b\n\nbo\x00dy\n',
    'bad-addresses': b'From: <<<@@@>>>\nTo: ,,,;;;"unclosed\nCc: @\nReply-To: "\n\nx\n',
    'bad-date': b'From: a@x\nDate: the day after tomorrow\n\nx\n',
    'no-headers': b'just a body line\n',
    'deep-nesting': b'From: a@x\nContent-Type: multipart/mixed; boundary=b0\n\n' + b''.join(
        b'--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n' % (i, i + 1)
        for i in range(300)) + b'--b300\n\ninner\n',
    'many-parts': b'From: a@x\nContent-Type: multipart/mixed; boundary=q\n\n' + b''.join(
        b'--q\nContent-Type: application/octet-stream\n'
        b'Content-Disposition: attachment; filename=f%d\n\nx\n' % i
        for i in range(2000)) + b'--q--\n',
    'script-everywhere': (b'From: "<script>alert(1)</script>" <a@x>\n'
                          b'Subject: <img src=x onerror=alert(1)>\n'
                          b'Content-Type: text/html\n\n'
                          b'<a href="javascript:alert(1)">x</a><script>alert(2)</script>\n'),
}


@pytest.mark.parametrize('raw', list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_mime_is_listed_and_shown_without_errors(w, raw):
    w.send(raw)
    data = w.json('/api/v1/messages')
    assert data['total'] == 1
    id = data['messages'][0]['ID']
    detail = w.json('/api/v1/message/%s' % id)
    assert detail['Size'] == data['messages'][0]['Size']
    assert w.request('/api/v1/message/%s/headers' % id)[0] == 200
    assert w.request('/api/v1/message/%s/raw' % id)[0] == 200
    assert w.request('/view/%s.txt' % id)[0] == 200
    assert w.request('/view/%s.html' % id)[0] in (200, 404)
    parts = detail['Attachments'] + detail['Inline']
    for part in parts[:2] + parts[-1:]:
        assert w.request('/api/v1/message/%s/part/%s' % (id, part['PartID']))[0] == 200
    assert w.json('/api/v1/search?query=anything')['total'] == 1
    assert len(detail['Attachments']) <= mime.MAX_PARTS


def test_script_in_subject_is_only_data(w):
    w.send(HOSTILE['script-everywhere'])
    m = w.json('/api/v1/messages')['messages'][0]
    # JSON carries it as text; the page sets it with textContent (see
    # test_page_csp_allows_only_own_scripts and the browser tests).
    assert m['Subject'] == '<img src=x onerror=alert(1)>'
    assert m['From']['Name'] == '<script>alert(1)</script>'


# ---------------------------------------------------------------------------
# bounds

def test_newest_n_messages_are_kept(inbox_web):
    w = inbox_web(web_max_messages=5)
    for i in range(8):
        w.send(make_message(subject='n%d' % i))
    data = w.json('/api/v1/messages')
    assert data['total'] == 5
    assert [m['Subject'] for m in data['messages']] == ['n7', 'n6', 'n5', 'n4', 'n3']


def test_byte_cap_drops_oldest_and_skips_oversized(inbox_web):
    # The cap counts all the inbox keeps for a message (its summary and
    # search text too: a few KB here), not only its raw bytes.
    w = inbox_web(web_max_bytes=20000)
    for i in range(8):
        w.send(make_message(subject='b%d' % i, body='x' * 1000))
    assert w.inbox.flush(30, ingested=True)
    data = w.json('/api/v1/messages')
    assert 1 < data['total'] < 8
    assert w.inbox.stats()['bytes'] <= 20000
    assert data['messages'][0]['Subject'] == 'b7'
    # One message over the whole cap is not kept (and counted as ignored),
    # nor does it push the others out.
    w.send(make_message(subject='huge', body='y' * 21000))
    assert [m['Subject'] for m in w.json('/api/v1/messages')['messages']] == [
        m['Subject'] for m in data['messages']]
    assert w.json('/api/v1/info')['RuntimeStats']['SMTPIgnored'] == 1


def test_inbox_bounds_are_checked():
    with pytest.raises(ValueError):
        Inbox(max_messages=0)
    with pytest.raises(ValueError):
        Inbox(max_bytes=-1)
    inbox = Inbox(max_messages=3)
    for i in range(10000):
        inbox.add(b'Subject: %d\n\nx\n' % i, 'a@x', ['b@x'])
    assert len(inbox) == 3
    assert [m.raw for m in inbox.newest_first()][0] == b'Subject: 9999\n\nx\n'


def test_message_over_parse_limit_shows_headers_only():
    # A 200 MiB message: listed and shown from its headers at once, body
    # left to the raw download.  (Stored directly: sending 200 MiB over
    # SMTP would only measure this machine.)
    inbox = Inbox(max_bytes=300 * 1024 * 1024)
    raw = b'From: big@example.org\nSubject: big\n\n' + b'x' * (200 * 1024 * 1024)
    inbox.add(raw, 'big@example.org', ['b@example.org'])
    raw = None
    server = web.WebServer(('127.0.0.1', 0), inbox).start()
    try:
        started = time.monotonic()
        with urllib.request.urlopen(server.url + 'api/v1/messages', timeout=60) as r:
            data = json.load(r)
        with urllib.request.urlopen(server.url + 'api/v1/message/latest', timeout=60) as r:
            detail = json.load(r)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert data['messages'][0]['Subject'] == 'big'
    assert data['messages'][0]['Size'] > 200 * 1024 * 1024
    assert detail['Subject'] == 'big' and 'raw source' in detail['Text']
    assert elapsed < 20, elapsed


def test_a_thousand_messages_list_quickly(inbox_web):
    # Sent over one SMTP connection; then the whole list at once.  The
    # first listing also parses every message (cached afterwards).
    w = inbox_web()
    with smtplib.SMTP(w.controller.hostname, w.controller.port, timeout=60) as c:
        for i in range(1000):
            c.sendmail('a@example.org', ['b@example.org'],
                       'From: a@example.org\r\nSubject: bulk %d\r\n\r\nbody %d\r\n' % (i, i))
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        data = w.json('/api/v1/messages?limit=1000')
        timings.append(time.perf_counter() - started)
    assert data['count'] == 1000 and data['messages'][0]['Subject'] == 'bulk 999'
    print('1000 messages listed: first %.3f s, cached %.3f s' % tuple(timings))
    # Under 1 s when measured on an idle machine (see the report); the
    # bound here leaves room for a loaded CI machine.
    assert timings[1] < 5, timings


def test_http_side_does_not_block_smtp(inbox_web):
    # A stalled HTTP client (headers never finished) holds one HTTP thread
    # only: SMTP and other HTTP requests go on.
    w = inbox_web()
    stalled = socket.create_connection((w.controller.hostname,
                                        w.controller.server.web_server.server_address[1]))
    try:
        stalled.sendall(b'GET /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n')
        w.send(make_message(subject='still flowing'))
        assert w.json('/api/v1/messages')['messages'][0]['Subject'] == 'still flowing'
    finally:
        stalled.close()


def test_reading_while_mail_arrives(inbox_web):
    # The SMTP thread appends while HTTP threads list, search and open
    # messages: every answer is consistent and nothing is lost.
    import threading
    w = inbox_web()
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                data = w.json('/api/v1/messages?limit=20')
                assert data['count'] == len(data['messages']) <= 20
                w.json('/api/v1/search?query=subject:load')
                if data['messages']:
                    w.json('/api/v1/message/%s' % data['messages'][-1]['ID'])
            except Exception as e:     # reported after the run
                errors.append(e)
                return

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        with smtplib.SMTP(w.controller.hostname, w.controller.port, timeout=60) as c:
            for i in range(200):
                c.sendmail('a@example.org', ['b@example.org'],
                           'Subject: load %d\r\n\r\nx\r\n' % i)
    finally:
        stop.set()
        for t in readers:
            t.join(60)
    assert errors == []
    data = w.json('/api/v1/search?query=subject:load&limit=1000')
    assert data['messages_count'] == 200


# ---------------------------------------------------------------------------
# the library API: composition with other server classes

class Sink(smtpd_compat.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None


class AnsweringServer(WebInboxServerMixin, smtpd_compat.SMTPServer):
    """A user's own server: its process_message does not call super()."""

    reply = None

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.seen = data
        return self.reply


def test_users_own_process_message_runs_and_is_recorded(inbox_web):
    w = inbox_web(AnsweringServer)
    w.send(make_message(subject='kept'))
    assert b'Subject: kept' in w.controller.server.seen
    assert w.json('/api/v1/messages')['total'] == 1


def test_refused_messages_are_not_recorded(inbox_web):
    class Refusing(AnsweringServer):
        reply = '550 No thanks'

    w = inbox_web(Refusing)
    with pytest.raises(smtplib.SMTPDataError):
        w.send(make_message(subject='refused'))
    assert w.json('/api/v1/messages')['total'] == 0


def test_an_inbox_fault_does_not_fail_the_delivery(inbox_web, caplog):
    class BrokenInbox(Inbox):
        def add(self, *args, **kwargs):
            raise RuntimeError('inbox broke')

    w = inbox_web(AnsweringServer, inbox=BrokenInbox())
    w.send(make_message(subject='delivered anyway'))      # 250, no raise
    assert b'delivered anyway' in w.controller.server.seen
    assert 'cannot record a message' in caplog.text


@pytest.mark.parametrize('order', list(itertools.permutations(range(3))),
                         ids=lambda o: ''.join(map(str, o)))
def test_composes_with_other_capabilities_in_any_order(inbox_web, raw_client, order):
    # With the limits and extensions layers, in every order of the three
    # mixins: a BDAT message (RFC 3030) reaches the inbox like a DATA one,
    # and the channel class is the same.
    from smtpd_compat.extensions import ExtensionsMixin
    from smtpd_compat.limits import LimitsServerMixin
    mixins = [WebInboxServerMixin, LimitsServerMixin, ExtensionsMixin]
    cls = type('Composed', tuple(mixins[i] for i in order) + (Sink,), {})
    w = inbox_web(cls, max_recipients=5)
    sock, greeting = raw_client(w.controller.address)
    body = b'Subject: chunked\r\n\r\nvia BDAT\r\n'
    for command in (b'EHLO x', b'MAIL FROM:<a@example.org>', b'RCPT TO:<b@example.org>'):
        sock.sendall(command + b'\r\n')
        assert recv_reply(sock).startswith(b'250')
    sock.sendall(b'BDAT %d LAST\r\n' % len(body) + body)
    assert recv_reply(sock).startswith(b'250')
    w.send(make_message(subject='via DATA'))
    assert [m['Subject'] for m in w.json('/api/v1/messages')['messages']] == [
        'via DATA', 'chunked']
    # The channel class is the one every order builds.
    reference = type('Reference', tuple(mixins) + (Sink,), {})(
        ('127.0.0.1', 0), None, web=('127.0.0.1', 0), map={})
    try:
        assert w.controller.server.channel_class is reference.channel_class
    finally:
        reference.close()


def test_debugging_server_still_prints(inbox_web, capsys):
    cls = type('WebDebugging', (WebInboxServerMixin, smtpd_compat.DebuggingServer), {})
    w = inbox_web(cls)
    w.send(make_message(subject='printed too'))
    assert 'Subject: printed too' in capsys.readouterr().out
    assert w.json('/api/v1/messages')['messages'][0]['Subject'] == 'printed too'


def test_maildir_server_still_stores(inbox_web, tmp_path):
    cls = type('WebMaildir', (WebInboxServerMixin, MaildirServer), {})
    w = inbox_web(cls, maildir=str(tmp_path))
    w.send(make_message(subject='stored too'))
    [name] = os.listdir(tmp_path / 'new')
    assert b'Subject: stored too' in (tmp_path / 'new' / name).read_bytes()
    assert w.json('/api/v1/messages')['total'] == 1


def test_class_attributes_are_read_not_shadowed(inbox_web):
    class Small(WebInboxServer):
        web_max_messages = 2

    w = inbox_web(Small)
    assert w.inbox.max_messages == 2
    assert Small.web_max_messages == 2


# That every keyword of WebInboxServerMixin honours a class attribute is
# checked with every other capability's keywords, in test_settings.py.


def test_the_inbox_patches_no_instance(inbox_web):
    # An ordinary capability: the user's process_message is the one the
    # class defines, and the inbox is a layer of the channel class.
    w = inbox_web(AnsweringServer)
    server = w.controller.server
    assert 'process_message' not in vars(server)
    assert type(server).process_message is AnsweringServer.process_message
    assert issubclass(server.channel_class, web.WebInboxChannelMixin)


def test_no_class_is_built_at_run_time():
    # Classes are written out, or composed by smtpd_compat.compose
    # (derive(), compose_server()), never made with type(name, bases,
    # namespace) or types.new_class: one way to make a class.
    import ast
    from pathlib import Path
    package = Path(smtpd_compat.__file__).parent
    files = sorted(package.glob('web/*.py')) + [package / 'controller.py',
                                                 package / 'pytest_plugin.py']
    built = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, 'id', None) or getattr(node.func, 'attr', None)
            if (name == 'type' and len(node.args) == 3) or name == 'new_class':
                built.append('%s:%d' % (path.name, node.lineno))
    assert len(files) > 10 and built == []


def test_message_accepted_is_a_hook_subclasses_extend(inbox_web):
    class Counting(AnsweringServer):
        def message_accepted(self, peer, mailfrom, rcpttos, data):
            self.hooked = (mailfrom, rcpttos, b'Subject: hooked' in data)
            super().message_accepted(peer, mailfrom, rcpttos, data)

    w = inbox_web(Counting)
    w.send(make_message(subject='hooked'), to=['x@example.org'],
           mailfrom='app@example.org')
    assert w.controller.server.hooked == ('app@example.org', ['x@example.org'], True)
    assert w.json('/api/v1/messages')['messages'][0]['Subject'] == 'hooked'


@pytest.mark.parametrize('threaded_first', [True, False], ids=['threads-web', 'web-threads'])
@pytest.mark.parametrize('reply, kept', [(None, 1), ('250 Fine', 1), ('550 No', 0)],
                         ids=['none', '250', '550'])
def test_threaded_process_message_is_recorded_in_any_order(inbox_web, threaded_first,
                                                           reply, kept):
    # process_message runs in a worker thread; the inbox still records
    # what it accepted, and only that, whatever order the bases are in.
    import threading
    from smtpd_compat.threads import ThreadedServerMixin
    bases = (ThreadedServerMixin, WebInboxServerMixin)
    threads = {}

    class Threaded(*(bases if threaded_first else bases[::-1]), smtpd_compat.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            threads['process_message'] = threading.current_thread()
            return reply

        def message_accepted(self, *args):
            threads['message_accepted'] = threading.current_thread()
            super().message_accepted(*args)

    w = inbox_web(Threaded)
    try:
        w.send(make_message(subject='threaded'))
    except smtplib.SMTPDataError:
        assert reply == '550 No'
    assert w.json('/api/v1/messages')['total'] == kept
    # The hook runs on the loop thread, process_message in a worker.
    assert ('message_accepted' in threads) == bool(kept)
    assert threads.get('message_accepted') is not threads['process_message']


def test_message_whose_client_left_during_process_message_is_recorded(
        inbox_web, raw_client, caplog):
    # The threads layer drops the reply of a client that reset the
    # connection while process_message ran; the message was accepted all
    # the same, and the inbox shows it.
    import logging
    import struct
    import threading
    from smtpd_compat.threads import ThreadedServerMixin
    caplog.set_level(logging.INFO, logger='smtpd_compat.threads')
    started, release, recorded = threading.Event(), threading.Event(), threading.Event()

    class Slow(ThreadedServerMixin, AnsweringServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            started.set()
            release.wait(30)
            return None

        def message_accepted(self, *args):
            super().message_accepted(*args)
            recorded.set()

    w = inbox_web(Slow)
    sock, _ = raw_client(w.controller.address)
    for command in (b'HELO x', b'MAIL FROM:<a@example.org>',
                    b'RCPT TO:<b@example.org>', b'DATA'):
        sock.sendall(command + b'\r\n')
        assert recv_reply(sock)[:1] in (b'2', b'3')
    sock.sendall(b'Subject: left early\r\n\r\nbody\r\n.\r\n')
    assert started.wait(30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    sock.close()            # a reset: the reply is never read
    release.set()
    assert recorded.wait(30)
    assert 'result dropped' in caplog.text
    assert w.json('/api/v1/messages')['messages'][0]['Subject'] == 'left early'


@pytest.mark.parametrize('status, kept', [
    (['250 ok', '550 no'], 1),
    (['550 no', '550 no'], 0),
    ({'b1@example.org': '550 no', 'b2@example.org': None}, 1),
    ({'b1@example.org': '550 no'}, 0),
], ids=['list-one-accepted', 'list-none', 'dict-one-accepted', 'dict-none'])
def test_lmtp_per_recipient_results(inbox_web, raw_client, status, kept):
    # RFC 2033: one result per recipient; the message is kept when any
    # recipient accepted it.
    from smtpd_compat.lmtp import LMTPServer

    class Local(WebInboxServerMixin, LMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            return status

    w = inbox_web(Local)
    sock, _ = raw_client(w.controller.address)
    for command in (b'LHLO x', b'MAIL FROM:<a@example.org>',
                    b'RCPT TO:<b1@example.org>', b'RCPT TO:<b2@example.org>', b'DATA'):
        sock.sendall(command + b'\r\n')
        assert recv_reply(sock)[:1] in (b'2', b'3')
    sock.sendall(b'Subject: local\r\n\r\nbody\r\n.\r\n')
    replies = recv_reply(sock)      # one reply per recipient
    if replies.count(b'\r\n') < 2:
        replies += recv_reply(sock)
    assert replies.count(b'\r\n') == 2
    assert w.json('/api/v1/messages')['total'] == kept


def test_shared_inbox_and_capture(inbox_web):
    inbox = Inbox()
    w = inbox_web(with_capture(WebInboxServer), inbox=inbox)
    w.send(make_message(subject='both'))
    assert w.controller.messages[0]['Subject'] == 'both'
    # One store: the capture's messages are the inbox, each message once.
    assert w.controller.messages is inbox and w.inbox is inbox
    assert len(inbox) == 1


class WebFirst(WebInboxServerMixin, CapturingServer):
    pass


@pytest.mark.parametrize('server_class', [with_capture(WebInboxServer), WebFirst, None],
                         ids=['capture-first', 'web-first', 'controller'])
def test_capture_and_web_share_one_store_in_any_order(server_class):
    # (The capture's class before the inbox's in the MRO, after it, and
    # what Controller(web=...) composes.)
    controller = Controller(server_class, web=('127.0.0.1', 0),
                            reply=None if server_class else '550 No thanks')
    with controller as c:
        server = c.server
        assert c.messages is server.inbox and server.messages is server.inbox
        with smtplib.SMTP(c.hostname, c.port, timeout=30) as client:
            try:
                client.sendmail('a@example.org', ['b@example.org'],
                                'Subject: once\r\n\r\nx\r\n')
            except smtplib.SMTPDataError as e:
                assert server_class is None and e.smtp_code == 550
        # Recorded once, by the capture, as a CapturedMessage (with the
        # MAIL parameters), also when the reply refused it; the page shows
        # the very same message.
        [m] = c.messages
        assert m['Subject'] == 'once' and m.mail_options == ['SIZE=20']
        listed = json.loads(urllib.request.urlopen(c.web_url + 'api/v1/messages',
                                                   timeout=30).read())
        assert [item['ID'] for item in listed['messages']] == [m.id]
        # wait_for and indexing read the inbox: it is the one store.
        assert c.wait_for(1, timeout=5) == [m] and server.inbox[0] is m
        c.clear()
        assert c.messages == [] and server.inbox.stats()['total'] == 0


def test_the_inbox_hook_still_runs_beside_the_capture(inbox_web):
    class Hooked(WebInboxServer):
        def message_accepted(self, peer, mailfrom, rcpttos, data):
            self.hooked = mailfrom
            super().message_accepted(peer, mailfrom, rcpttos, data)

    w = inbox_web(with_capture(Hooked))
    w.send(make_message(), mailfrom='hook@example.org')
    assert w.controller.server.hooked == 'hook@example.org'
    assert len(w.inbox) == 1 and w.controller.messages is w.inbox


def test_close_stops_the_web_server(inbox_web):
    w = inbox_web()
    port = w.controller.server.web_server.server_address[1]
    w.controller.stop()
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', port), timeout=5).close()


def test_web_port_in_use_is_a_clear_error():
    blocker = socket.socket()
    blocker.bind(('127.0.0.1', 0))
    blocker.listen()
    try:
        port = blocker.getsockname()[1]
        with pytest.raises(OSError, match='web inbox on 127.0.0.1 port %d' % port):
            WebInboxServer(('127.0.0.1', 0), None, web=('127.0.0.1', port), map={})
    finally:
        blocker.close()


def test_ipv6_loopback_address():
    if not socket.has_ipv6:
        pytest.skip('no IPv6')
    inbox = Inbox()
    inbox.add(b'Subject: six\n\nx\n', 'a@x', ['b@x'])
    try:
        server = web.WebServer(('::1', 0), inbox).start()
    except OSError as e:
        pytest.skip('cannot bind ::1: %s' % e)
    try:
        assert server.url.startswith('http://[::1]:')
        with urllib.request.urlopen(server.url + 'api/v1/message/latest', timeout=30) as r:
            assert json.load(r)['Subject'] == 'six'
    finally:
        server.stop()


@pytest.mark.parametrize('text, expected', [
    ('8025', ('127.0.0.1', 8025)),
    (':8025', ('127.0.0.1', 8025)),
    ('0.0.0.0:80', ('0.0.0.0', 80)),
    ('[::1]:8025', ('::1', 8025)),
    ('localhost:0', ('localhost', 0)),
    (8025, ('127.0.0.1', 8025)),
    (('', 1), ('127.0.0.1', 1)),
    (None, ('127.0.0.1', 8025)),
], ids=repr)
def test_parse_address(text, expected):
    assert web.parse_address(text) == expected


@pytest.mark.parametrize('text', ['', 'x', '99999', 'host:', 'host:-1'])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError):
        web.parse_address(text)


@pytest.mark.parametrize('smtpd_compat_server', [{'web': ('127.0.0.1', 0)}],
                         indirect=True)
def test_pytest_fixture_exposes_the_inbox(smtpd_compat_server):
    smtpd = smtpd_compat_server
    # What docs/testing.rst promises of smtpd.messages holds with the page
    # too: it is the inbox itself.
    assert smtpd.messages is smtpd.server.inbox
    assert smtpd.messages == [] and not smtpd.messages
    with pytest.raises(IndexError, match=r'^no message has arrived \(the inbox is empty\); '
                                         r'.*wait_for\(1, timeout=5\)$'):
        smtpd.messages[0]
    with smtplib.SMTP(smtpd.host, smtpd.port) as client:
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: fixture\r\n\r\nx\r\n')
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: second\r\n\r\nx\r\n')
    first, second = smtpd.messages
    assert first['Subject'] == 'fixture' and smtpd.messages == [first, second]
    with urllib.request.urlopen(smtpd.web_url + 'api/v1/message/latest') as r:
        assert json.load(r)['Subject'] == 'second'
    # A message the page deletes is gone from messages too.
    request = urllib.request.Request(
        smtpd.web_url + 'api/v1/messages', method='DELETE',
        data=json.dumps({'IDs': [first.id]}).encode(),
        headers={'Content-Type': 'application/json'})
    urllib.request.urlopen(request).close()
    assert smtpd.messages == [second] and smtpd.wait_for(1, timeout=5) == [second]


def test_controller_web_keyword_adds_the_inbox():
    with Controller(web=('127.0.0.1', 0)) as c:
        with smtplib.SMTP(c.hostname, c.port) as client:
            client.sendmail('a@example.org', ['b@example.org'], 'Subject: ctl\r\n\r\nx\r\n')
        assert c.messages[0]['Subject'] == 'ctl'        # still captures
        with urllib.request.urlopen(c.web_url + 'api/v1/message/latest') as r:
            assert json.load(r)['Subject'] == 'ctl'


def test_controller_without_web_says_so():
    with Controller() as c:
        with pytest.raises(AttributeError, match='no web inbox'):
            c.web_url


# ---------------------------------------------------------------------------
# the command line

def _cli(python_path_env, *args):
    # (Reserved until both listen: see helpers.reserved_port.)
    with reserved_port() as port, reserved_port() as web_port:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'smtpd_compat', '-n'] + list(args)
            + ['--web', '127.0.0.1:%d' % web_port, '127.0.0.1:%d' % port],
            env=python_path_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        wait_for_port(proc, port)
        wait_for_port(proc, web_port)
    return proc, port, web_port


def test_cli_web_with_debugging_server(python_path_env):
    proc, port, web_port = _cli(python_path_env, '-c', 'DebuggingServer')
    try:
        with smtplib.SMTP('127.0.0.1', port, timeout=30) as client:
            client.sendmail('a@example.org', ['b@example.org'],
                            'Subject: from the cli\r\n\r\nhello\r\n')
        url = 'http://127.0.0.1:%d/api/v1/messages' % web_port
        with urllib.request.urlopen(url, timeout=30) as r:
            assert json.load(r)['messages'][0]['Subject'] == 'from the cli'
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert 'Subject: from the cli' in out          # DebuggingServer printed it
    assert 'Web inbox at http://127.0.0.1:%d/' % web_port in err
    assert 'Traceback' not in err


def test_cli_web_inbox_server_class(python_path_env):
    proc, port, web_port = _cli(python_path_env, '-c', 'WebInboxServer')
    try:
        with smtplib.SMTP('127.0.0.1', port, timeout=30) as client:
            client.sendmail('a@example.org', ['b@example.org'], 'Subject: x\r\n\r\ny\r\n')
        with urllib.request.urlopen('http://127.0.0.1:%d/api/v1/info' % web_port) as r:
            assert json.load(r)['Messages'] == 1
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out == ''


@pytest.mark.parametrize('args, message', [
    (['--web', 'nonsense'], 'Invalid --web'),
    (['--web', '8025', '--workers', '2'], '--web cannot be combined with --workers'),
], ids=['bad-address', 'workers'])
def test_cli_web_errors(python_path_env, args, message):
    proc = subprocess.run(
        [sys.executable, '-m', 'smtpd_compat', '-n', '-c', 'DebuggingServer']
        + args + ['127.0.0.1:%d' % free_port()],
        env=python_path_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert message in proc.stdout + proc.stderr


def test_cli_help_lists_web(python_path_env):
    proc = subprocess.run([sys.executable, '-m', 'smtpd_compat', '--help'],
                          env=python_path_env, capture_output=True, text=True,
                          timeout=60)
    assert '--web [HOST:]PORT' in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# an existing Mailpit client, unchanged

def test_mailpit_api_client_works_unchanged(w):
    """mailpit-api-client (PyPI), as its users call it."""
    api_module = pytest.importorskip('mailpit.client.api')
    api = api_module.API(w.url.rstrip('/'))
    w.send(make_message(
        subject='for the client', Message_ID='<client.1@example.org>',
        Date='Mon, 30 Nov 2026 04:00:00 +0000', Delivered_To='bob@example.org',
        attachments=[('a.txt', b'attached text', 'text/plain')]))
    messages = api.get_messages()
    assert (messages.total, messages.count, messages.unread) == (1, 1, 1)
    summary = messages.messages[0]
    assert summary.message_id == 'client.1@example.org'
    assert summary.from_.address == 'ann@example.org'
    assert summary.attachments == 1
    message = api.get_message(summary.id)
    assert message.subject == 'for the client'
    assert message.to[0].address == 'bob@example.org'
    assert message.date.isoformat() == '2026-11-30T04:00:00+00:00'
    assert api.get_message_attachment(
        message.id, message.attachments[0].part_id) == 'attached text'
    headers = api.get_message_headers(message.id)
    assert headers.delivered_to == ['bob@example.org']
    api.delete_messages([message.id])
    assert api.get_messages().total == 0

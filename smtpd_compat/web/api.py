"""Mailpit's API v1: the route handlers.

Each handler is a function of the request it answers (a :class:`Request`,
which :class:`smtpd_compat.web.http.Handler` is) and the groups of its
route's path pattern; :data:`smtpd_compat.web.http.ROUTES` maps paths to
them.  A handler answers with the request's ``_send*`` methods, or raises
:class:`NotFound` or :class:`BadRequest`.
"""
from __future__ import annotations

import email.message
import json
import re
import time
import urllib.parse
from typing import Any, Dict, Iterable, List, Protocol, Tuple

from smtpd_compat._version import VERSION
from smtpd_compat.web.mime import decode_header, header_text, part_bytes
from smtpd_compat.web.store import Inbox, StoredMessage

__all__ = [
    'Request', 'NotFound', 'BadRequest', 'MESSAGE_CSP', 'DATA_CSP',
    'get_messages', 'get_search', 'delete_search', 'delete_messages',
    'put_messages', 'get_message', 'get_headers', 'get_raw', 'get_part',
    'get_info', 'get_tags', 'get_view_html', 'get_view_text',
]

#: A message's HTML: no script at all (the CSP sandbox also applies when the
#: URL is opened directly, not only inside the page's sandboxed iframe), no
#: remote loads; images inline (data:) or from this inbox (cid: rewritten).
#: Links open in a new tab (allow-popups) that leaves the sandbox, so a link
#: to a web app works there; javascript: URLs cannot run (no script source).
MESSAGE_CSP = ("default-src 'none'; img-src 'self' data: cid:; "
               "style-src 'unsafe-inline'; font-src data:; "
               "frame-ancestors 'self'; "
               "sandbox allow-popups allow-popups-to-escape-sandbox")
#: Raw source and parts: never rendered as a document of this origin.
DATA_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"


class NotFound(Exception):
    """Answered with 404 and the exception's text."""


class BadRequest(Exception):
    """Answered with 400 and the exception's text."""


class Request(Protocol):
    """What a handler uses of the request it answers."""

    command: str
    headers: email.message.Message
    query: Dict[str, List[str]]

    @property
    def inbox(self) -> Inbox: ...

    def _param(self, name: str, default: str = '') -> str: ...

    def _int_param(self, name: str, default: int) -> int: ...

    def _body(self) -> Dict[str, Any]: ...

    def _send(self, status: int, body: bytes, content_type: str,
              csp: str = DATA_CSP, headers: Iterable[Tuple[str, str]] = ()) -> None: ...

    def _send_json(self, value: Any) -> None: ...

    def _send_text(self, status: int, text: str) -> None: ...


def _public(summary: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in summary.items() if not k.startswith('_')}


def _content_disposition(kind: str, filename: str) -> str:
    """A Content-Disposition value that a hostile file name cannot break
    out of: an ASCII fallback of safe characters, and the full name in
    RFC 8187 encoding (RFC 6266 section 4.3)."""
    fallback = re.sub(r'[^A-Za-z0-9._ -]', '_', filename)[:100] or 'download'
    return "%s; filename=\"%s\"; filename*=UTF-8''%s" % (
        kind, fallback, urllib.parse.quote(filename[:200], safe=''))


def _inject_base(markup: str) -> str:
    """Links in the mail open in a new tab: a ``<base target=_blank>``
    after the <head> tag (or the doctype, or at the start)."""
    base = '<base target="_blank">'
    m = re.search(r'<head\b[^>]*>', markup, re.I)
    if m is None:
        m = re.match(r'\s*<!doctype[^>]*>', markup, re.I)
    if m is None:
        return base + markup
    return markup[:m.end()] + base + markup[m.end():]


def _message(h: Request, id: str) -> StoredMessage:
    message = h.inbox.get(id)
    if message is None:
        raise NotFound('Message not found')
    return message


def _list(h: Request, messages: List[StoredMessage]) -> None:
    start = h._int_param('start', 0)
    limit = h._int_param('limit', 50)
    page = messages[start:start + limit]
    stats = h.inbox.stats()
    items = []
    for m in page:
        item: Dict[str, Any] = {'ID': m.id, 'MessageID': '', 'Read': m.read}
        item.update(_public(h.inbox.summary(m)))
        items.append(item)
    h._send_json({
        'total': stats['total'],
        'unread': stats['unread'],
        'count': len(items),
        'messages_count': len(messages),
        'start': start,
        'tags': [],
        'messages': items,
    })


def get_messages(h: Request) -> None:
    _list(h, h.inbox.newest_first())


def get_search(h: Request) -> None:
    query = h._param('query')
    if not query.strip():
        raise BadRequest('no search query')
    _list(h, h.inbox.search(query))


def delete_search(h: Request) -> None:
    query = h._param('query')
    if not query.strip():
        raise BadRequest('no search query')
    h.inbox.delete([m.id for m in h.inbox.search(query)])
    h._send_text(200, 'ok')


def delete_messages(h: Request) -> None:
    ids = h._body().get('ids')
    if ids is None or ids == []:
        h.inbox.delete(None)
    elif isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        h.inbox.delete(ids)
    else:
        raise BadRequest('IDs must be a list of strings')
    h._send_text(200, 'ok')


def put_messages(h: Request) -> None:
    body = h._body()
    ids = body.get('ids')
    read = body.get('read', False)
    if isinstance(read, list):      # a form
        read = read[-1].lower() in ('1', 'true', 'yes')
    if ids is not None and not (
            isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise BadRequest('IDs must be a list of strings')
    h.inbox.set_read(ids or None, bool(read))
    h._send_text(200, 'ok')


def get_message(h: Request, id: str) -> None:
    message = _message(h, id)
    details = dict(h.inbox.parsed(message).details)
    del details['_parts']
    if not message.read:
        h.inbox.set_read([message.id], True)
    result: Dict[str, Any] = {'ID': message.id, 'Read': True}
    result.update(details)
    h._send_json(result)


def get_headers(h: Request, id: str) -> None:
    msg = h.inbox.parsed(_message(h, id)).msg
    headers: Dict[str, List[str]] = {}
    for name, value in msg.raw_items():
        text = decode_header(value)
        # Go's canonical form (textproto.CanonicalMIMEHeaderKey), as
        # Mailpit returns the keys: Message-Id, Content-Type.
        key = '-'.join(w[:1].upper() + w[1:].lower() for w in name.split('-'))
        headers.setdefault(key, []).append(text)
    h._send_json(dict(sorted(headers.items())))


def get_raw(h: Request, id: str) -> None:
    message = _message(h, id)
    headers = []
    if h._param('dl'):
        headers.append(('Content-Disposition', _content_disposition(
            'attachment', message.id + '.eml')))
        ctype = 'message/rfc822'
    else:
        ctype = 'text/plain; charset=utf-8'
    h._send(200, message.raw, ctype, headers=headers)


def get_part(h: Request, id: str, part_id: str) -> None:
    message = _message(h, id)
    parts = h.inbox.parsed(message).details['_parts']
    part = parts.get(part_id)
    if part is None:
        raise NotFound('Part not found')
    ctype = part.get_content_type()
    charset = part.get_content_charset()
    if charset and ctype.startswith('text/') and re.match(r'^[\w.:-]+$', charset):
        ctype += '; charset=' + charset
    try:
        filename = header_text(part.get_filename() or '')
    except Exception:
        filename = ''
    kind = 'attachment' if h._param('dl') else 'inline'
    headers = [('Content-Disposition', _content_disposition(
        kind, filename or 'part-' + part_id))]
    h._send(200, part_bytes(part), ctype, headers=headers)


def get_info(h: Request) -> None:
    stats = h.inbox.stats()
    inbox = h.inbox
    h._send_json({
        'Version': 'smtpd_compat ' + VERSION,
        'LatestVersion': '',
        'Database': '',
        'DatabaseSize': stats['bytes'],
        'Messages': stats['total'],
        'Unread': stats['unread'],
        'Tags': {},
        'RuntimeStats': {
            'Memory': 0,
            'MessagesDeleted': inbox.deleted,
            'SMTPAccepted': inbox.accepted,
            'SMTPAcceptedSize': inbox.accepted_bytes,
            'SMTPIgnored': inbox.ignored,
            'SMTPRejected': 0,
            'Uptime': int(time.time() - inbox.started),
        },
    })


def get_tags(h: Request) -> None:
    h._send_json([])


def get_view_html(h: Request, id: str) -> None:
    message = _message(h, id)
    details = h.inbox.parsed(message).details
    markup = details['HTML']
    if not markup:
        raise NotFound('Message has no HTML part')
    # cid: references become this inbox's part URLs, so inline images
    # load from the same origin (and nothing from elsewhere).
    by_cid = {a['ContentID']: a['PartID']
              for a in details['Inline'] + details['Attachments']
              if a['ContentID']}

    def rewrite(m: 're.Match[str]') -> str:
        cid = urllib.parse.unquote(m.group(1))
        part_id = by_cid.get(cid)
        if part_id is None:
            return m.group(0)
        return '/api/v1/message/%s/part/%s' % (message.id, part_id)

    markup = re.sub(r'cid:([^"\'\s>)]+)', rewrite, markup, flags=re.I)
    if h._param('embed'):
        markup = _inject_base(markup)
    h._send(200, markup.encode('utf-8', 'replace'),
               'text/html; charset=utf-8', csp=MESSAGE_CSP)


def get_view_text(h: Request, id: str) -> None:
    message = _message(h, id)
    text = h.inbox.parsed(message).details['Text']
    h._send_text(200, text)

"""MailHog's API, for the test suites written against MailHog.

* ``GET /api/v2/messages?start=&limit=``: ``{"total", "count", "start",
  "items"}``, newest first (``limit`` 50 by default, at most 250);
* ``GET /api/v2/search?kind=from|to|containing&query=``: the same for the
  messages whose envelope or header (``from``, ``to``) or body or any
  header (``containing``) has ``query`` in it, without regard to case;
* ``DELETE /api/v1/messages`` deletes everything (Mailpit's route, which
  does the same without a body) and ``DELETE /api/v1/messages/{ID}`` one
  message.

Each item has MailHog's shape (its ``data.Message``): ``ID``, ``From`` and
``To`` as SMTP paths (``{"Relays", "Mailbox", "Domain", "Params"}``),
``Content`` (``Headers``: name -> raw values, unfolded, not decoded, as
MailHog returns them; ``Body``: the raw body; ``Size``; ``MIME``),
``Created``, ``MIME`` (``{"Parts": [...]}`` for a multipart message, each
part's ``Content`` as MailHog splits it at the boundary: without the line
breaks around it, parts without headers left out) and ``Raw`` (``{"From",
"To", "Data", "Helo"}``), with CRLF line ends as MailHog keeps the source.
IDs are this inbox's, so the Mailpit routes take them too.

What it costs: the structure comes from the web inbox's own parser
(:func:`smtpd_compat.web.mime.tree`: linear, with its caps; the parse
cached for the Mailpit API when there is one), worked out in the request's
worker thread; the bodies and sources, the bulk of a MailHog item, are
never copied: they are decoded and JSON-encoded from the stored bytes a
slice at a time as the response is sent, like every other streamed
answer.  A search reads each body a slice at a time too.
"""
from __future__ import annotations

import codecs
import json
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

from smtpd_compat.relay import crlf_only
from smtpd_compat.web.api import BadRequest, NotFound, Request
from smtpd_compat.web.mime import Part, iso_time
from smtpd_compat.web.store import StoredMessage
from smtpd_compat.web.transport import RawJSON

__all__ = ['get_messages', 'get_search', 'delete_message']

# MailHog's paging: 50 by default, at most 250.
_DEFAULT_LIMIT = 50
_MAX_LIMIT = 250
# Bytes of a source decoded, encoded or searched at a time: as much text
# as the transport sends at a time (a slice's decoded and escaped copies
# live while it is sent).
_SLICE = 16 * 1024

_encode = json.JSONEncoder(separators=(',', ':'), ensure_ascii=False).encode


def _path(address: str) -> Dict[str, Any]:
    """An SMTP path as MailHog's ``Path``: source-route relays before a
    ``:``, then mailbox and domain around the ``@``."""
    relays: Optional[List[str]] = None
    if ':' in address:
        route, _, address = address.partition(':')
        relays = route.split(',')
    mailbox, _, domain = address.partition('@')
    return {'Relays': relays, 'Mailbox': mailbox, 'Domain': domain, 'Params': ''}


# -- the source, a slice at a time ------------------------------------------------

def _slices(raw: bytes, start: int, end: int) -> Iterator[bytes]:
    """``raw[start:end]`` with MailHog's CRLF line ends, a slice at a
    time (a CRLF is never cut in two, so each slice converts alone)."""
    pos = start
    while pos < end:
        stop = min(end, pos + _SLICE)
        if stop < end and raw[stop - 1] == 0x0D:
            stop += 1
        yield crlf_only(raw[pos:stop])
        pos = stop


def _texts(raw: bytes, start: int, end: int) -> Iterator[str]:
    """The slices as text: UTF-8, what is not as U+FFFD (JSON has no
    place for the bytes of another charset)."""
    decoder = codecs.getincrementaldecoder('utf-8')('replace')
    for data in _slices(raw, start, end):
        yield decoder.decode(data)
    yield decoder.decode(b'', True)


def _crlf_size(raw: bytes, start: int, end: int) -> int:
    """The length of ``raw[start:end]`` with CRLF line ends, counted
    without a copy."""
    crlf = raw.count(b'\r\n', start, end)
    return (end - start + raw.count(b'\n', start, end) + raw.count(b'\r', start, end)
            - 2 * crlf)


def _trimmed(raw: bytes, start: int, end: int) -> Tuple[int, int]:
    # MailHog trims the line breaks around each part it splits off.
    while start < end and raw[start] in (0x0A, 0x0D):
        start += 1
    while end > start and raw[end - 1] in (0x0A, 0x0D):
        end -= 1
    return start, end


class _Source:
    """A JSON string of a range of the source, made as it is sent."""

    __slots__ = ('raw', 'start', 'end')

    def __init__(self, raw: bytes, start: int, end: int) -> None:
        self.raw, self.start, self.end = raw, start, end

    def pieces(self) -> Iterator[str]:
        yield '"'
        for text in _texts(self.raw, self.start, self.end):
            if text:
                yield _encode(text)[1:-1]
        yield '"'


# -- an item ------------------------------------------------------------------

def _headers(part: Part) -> Dict[str, List[str]]:
    """The header fields as MailHog lists them: each name's values in
    order, unfolded, not decoded (a value over the parser's cap ends
    with "[N more bytes not shown]")."""
    headers: Dict[str, List[str]] = {}
    for name, value in part.raw_items():
        headers.setdefault(name, []).append(value)
    return headers


def _mime(part: Part) -> Optional[Dict[str, Any]]:
    """MailHog's ``MIME`` of an entity: its parts when it is a multipart
    (those the parser followed), else null."""
    if part.get_content_maintype() != 'multipart':
        return None
    return {'Parts': [_content(child) for child in part.children or ()
                      if child.fields.items]}


def _content(part: Part) -> Dict[str, Any]:
    """MailHog's ``Content`` of a part: what lies between its boundaries,
    without the line breaks around it."""
    raw = part.raw
    head, end = _trimmed(raw, part.head, part.end)
    start = min(max(part.start, head), end)
    return {'Headers': _headers(part), 'Body': _Source(raw, start, end),
            'Size': _crlf_size(raw, head, end), 'MIME': _mime(part)}


def _item(message: StoredMessage, root: Part) -> Dict[str, Any]:
    """A message as MailHog's ``data.Message``, its bodies and source
    still to be made (see :func:`_pieces`)."""
    raw = message.raw
    headers = _headers(root)
    names = {name.lower() for name in headers}
    # MailHog adds these when the message has none.
    if 'return-path' not in names:
        headers['Return-Path'] = ['<%s>' % message.mailfrom]
    if 'message-id' not in names:
        headers['Message-ID'] = [message.id]
    return {
        'ID': message.id,
        'From': _path(message.mailfrom),
        'To': [_path(r) for r in message.rcpttos],
        # (The top level's MIME is the item's, as MailHog has it.)
        'Content': {'Headers': headers,
                    'Body': _Source(raw, min(root.start, len(raw)), len(raw)),
                    'Size': _crlf_size(raw, 0, len(raw)), 'MIME': None},
        'Created': iso_time(message.received),
        'MIME': _mime(root),
        'Raw': {'From': message.mailfrom, 'To': list(message.rcpttos),
                'Data': _Source(raw, 0, len(raw)), 'Helo': ''},
    }


def _pieces(value: Any) -> Iterator[str]:
    """JSON text of an item: sources streamed, the rest (small) by the
    C encoder."""
    if isinstance(value, _Source):
        yield from value.pieces()
    elif isinstance(value, dict):
        yield '{'
        for i, (key, item) in enumerate(value.items()):
            yield (',' if i else '') + _encode(key) + ':'
            yield from _pieces(item)
        yield '}'
    elif isinstance(value, list):
        yield '['
        for i, item in enumerate(value):
            if i:
                yield ','
            yield from _pieces(item)
        yield ']'
    else:
        yield _encode(value)


# -- the routes ---------------------------------------------------------------

def _start_limit(h: Request) -> Tuple[int, int]:
    start = h._param('start')
    limit = h._param('limit')
    start_n = int(start) if re.fullmatch(r'\+?\d+', start) else 0
    limit_n = int(limit) if re.fullmatch(r'\+?\d+', limit) else 0
    return start_n, min(limit_n, _MAX_LIMIT) if limit_n > 0 else _DEFAULT_LIMIT


def _send_items(h: Request, messages: List[StoredMessage], total: int) -> None:
    start, limit = _start_limit(h)
    page = messages[start:start + limit]
    # The parsing here, in the worker; the sending, a slice at a time.
    items = [_item(m, h.inbox.tree(m)) for m in page]
    h._send_json({'total': total, 'count': len(page), 'start': start,
                  'items': [RawJSON(_pieces(item)) for item in items]})


def get_messages(h: Request) -> None:
    """``GET /api/v2/messages``."""
    messages = h.inbox.newest_first()
    _send_items(h, messages, len(messages))


def _body_has(raw: bytes, start: int, query: str) -> bool:
    """Is ``query`` (lower case) in the body, in any case?  A slice at a
    time, each overlapping the last by the query's length."""
    tail = ''
    for text in _texts(raw, start, len(raw)):
        window = tail + text.lower()
        if query in window:
            return True
        tail = window[-len(query):]
    return False


def _matches(message: StoredMessage, root: Part, kind: str, query: str) -> bool:
    if kind == 'to':
        return (any(query in r.lower() for r in message.rcpttos)
                or any(query in v.lower() for v in root.fields.get_all('To')))
    if kind == 'from':
        return (query in message.mailfrom.lower()
                or any(query in v.lower() for v in root.fields.get_all('From')))
    return (any(query in value.lower() for _, value in root.raw_items())
            or _body_has(message.raw, root.start, query))


def get_search(h: Request) -> None:
    """``GET /api/v2/search?kind=&query=``; 400 for another kind or no
    query, as MailHog answers."""
    kind = h._param('kind')
    query = h._param('query').lower()
    if kind not in ('from', 'to', 'containing'):
        raise BadRequest('kind must be from, to or containing')
    if not query:
        raise BadRequest('no search query')
    found = [m for m in h.inbox.newest_first()
             if _matches(m, h.inbox.tree(m), kind, query)]
    _send_items(h, found, len(found))


def delete_message(h: Request, id: str) -> None:
    """MailHog's ``DELETE /api/v1/messages/{ID}``."""
    if not h.inbox.delete([id]):
        raise NotFound('Message not found')
    h._send_text(200, '')

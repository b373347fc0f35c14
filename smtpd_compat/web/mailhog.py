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
``Created``, ``MIME`` (``{"Parts": [...]}`` for a multipart message, split
at its boundary the way MailHog splits it) and ``Raw`` (``{"From", "To",
"Data", "Helo"}``).  IDs are this inbox's, so the Mailpit routes take them
too.
"""
import re
from typing import Any, Dict, List, Optional, Tuple, cast

from smtpd_compat.relay import crlf_only
from smtpd_compat.web.api import BadRequest, NotFound, Request
from smtpd_compat.web.mime import iso_time
from smtpd_compat.web.store import StoredMessage

__all__ = ['get_messages', 'get_search', 'delete_message', 'item']

# MailHog's paging: 50 by default, at most 250.
_DEFAULT_LIMIT = 50
_MAX_LIMIT = 250
# A MIME tree split deeper or wider than this is cut (the message is the
# client's).
_MAX_DEPTH = 16
_MAX_PARTS = 500


def _path(address: str) -> Dict[str, Any]:
    """An SMTP path as MailHog's ``Path``: source-route relays before a
    ``:``, then mailbox and domain around the ``@``."""
    relays: Optional[List[str]] = None
    if ':' in address:
        route, _, address = address.partition(':')
        relays = route.split(',')
    mailbox, _, domain = address.partition('@')
    return {'Relays': relays, 'Mailbox': mailbox, 'Domain': domain, 'Params': ''}


def _content(data: str, depth: int = 0, budget: Optional[List[int]] = None) -> Dict[str, Any]:
    """MailHog's ``Content`` of a message or part: headers up to the first
    empty line (continuation lines joined to their header without the line
    break), the rest as the body, and for a multipart type its parts."""
    head, sep, body = data.partition('\r\n\r\n')
    if not sep:
        head, body = '', data
    headers: Dict[str, List[str]] = {}
    last = None
    for line in head.split('\r\n'):
        if last is not None and line[:1] in (' ', '\t'):
            headers[last][-1] += line
        elif ': ' in line:
            name, _, value = line.partition(': ')
            headers.setdefault(name, []).append(value)
            last = name
    content: Dict[str, Any] = {'Headers': headers, 'Body': body,
                               'Size': len(data.encode('utf-8', 'surrogateescape')),
                               'MIME': None}
    content['MIME'] = _mime(headers, body, depth, budget if budget is not None else [_MAX_PARTS])
    return content


def _mime(headers: Dict[str, List[str]], body: str, depth: int,
          budget: List[int]) -> Optional[Dict[str, Any]]:
    ctype = (headers.get('Content-Type') or [''])[0]
    if not ctype.startswith('multipart/') or depth >= _MAX_DEPTH:
        return None
    m = re.search(r'boundary\s*=\s*(?:"([^"]*)"|([^\s;]+))', ctype, re.I)
    parts = []
    if m is not None:
        boundary = m.group(1) if m.group(1) is not None else m.group(2)
        for chunk in body.split('--' + boundary):
            if chunk and budget[0] > 0:
                budget[0] -= 1
                parts.append(_content(chunk.strip('\r\n'), depth + 1, budget))
    return {'Parts': parts}


def item(message: StoredMessage) -> Dict[str, Any]:
    """A message as MailHog's ``data.Message``."""
    data = crlf_only(message.raw).decode('utf-8', 'surrogateescape')
    content = _content(data)
    names = {name.lower() for name in content['Headers']}
    # MailHog adds these when the message has none.
    if 'return-path' not in names:
        content['Headers']['Return-Path'] = ['<%s>' % message.mailfrom]
    if 'message-id' not in names:
        content['Headers']['Message-ID'] = [message.id]
    mime = content.pop('MIME')
    content['MIME'] = None
    result = {
        'ID': message.id,
        'From': _path(message.mailfrom),
        'To': [_path(r) for r in message.rcpttos],
        'Content': content,
        'Created': iso_time(message.received),
        'MIME': mime,
        'Raw': {'From': message.mailfrom, 'To': list(message.rcpttos),
                'Data': data, 'Helo': ''},
    }
    # JSON cannot carry the surrogates of bytes that are not UTF-8.
    return cast(Dict[str, Any], _replace_surrogates(result))


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace') if any(
            '\udc80' <= c <= '\udcff' for c in value) else value
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {k: _replace_surrogates(v) for k, v in value.items()}
    return value


def _start_limit(h: Request) -> Tuple[int, int]:
    start = h._param('start')
    limit = h._param('limit')
    start_n = int(start) if re.fullmatch(r'\+?\d+', start) else 0
    limit_n = int(limit) if re.fullmatch(r'\+?\d+', limit) else 0
    return start_n, min(limit_n, _MAX_LIMIT) if limit_n > 0 else _DEFAULT_LIMIT


def _send_items(h: Request, messages: List[StoredMessage], total: int) -> None:
    start, limit = _start_limit(h)
    page = messages[start:start + limit]
    h._send_json({'total': total, 'count': len(page), 'start': start,
                  'items': [item(m) for m in page]})


def get_messages(h: Request) -> None:
    """``GET /api/v2/messages``."""
    messages = h.inbox.newest_first()
    _send_items(h, messages, len(messages))


def _matches(message: StoredMessage, kind: str, query: str) -> bool:
    content = _content(crlf_only(message.raw).decode('utf-8', 'surrogateescape'))
    headers = content['Headers']
    if kind == 'to':
        return (any(query in r.lower() for r in message.rcpttos)
                or any(query in v.lower() for v in headers.get('To', ())))
    if kind == 'from':
        return (query in message.mailfrom.lower()
                or any(query in v.lower() for v in headers.get('From', ())))
    return (query in content['Body'].lower()
            or any(query in v.lower() for vs in headers.values() for v in vs))


def get_search(h: Request) -> None:
    """``GET /api/v2/search?kind=&query=``; 400 for another kind or no
    query, as MailHog answers."""
    kind = h._param('kind')
    query = h._param('query').lower()
    if kind not in ('from', 'to', 'containing'):
        raise BadRequest('kind must be from, to or containing')
    if not query:
        raise BadRequest('no search query')
    found = [m for m in h.inbox.newest_first() if _matches(m, kind, query)]
    _send_items(h, found, len(found))


def delete_message(h: Request, id: str) -> None:
    """MailHog's ``DELETE /api/v1/messages/{ID}``."""
    if not h.inbox.delete([id]):
        raise NotFound('Message not found')
    h._send_text(200, '')

"""Mailpit's API v1: the route handlers.

Each handler is a function of the request it answers (a :class:`Request`,
which :class:`smtpd_compat.web.http.Handler` is) and the groups of its
route's path pattern; :data:`smtpd_compat.web.http.ROUTES` maps paths to
them.  A handler answers with the request's ``_send*`` methods, or raises
an :class:`HTTPError` (:class:`NotFound`, :class:`BadRequest`, ...), which
is answered as plain text (as Mailpit answers errors), or as ``{"Error":
...}`` where Mailpit answers JSON.

Request bodies are read as Mailpit reads them, as JSON whatever their
Content-Type (:func:`parse_body`): curl's ``-d`` sends a form type, and
``{"IDs": [...]}`` sent so still names those IDs.  Only one thing differs:
a body that is neither JSON nor a form (what mailpit-api-client sends) is
refused with 400, where Mailpit's ``DELETE /api/v1/messages`` would take it
for "no IDs" and delete everything.
"""
from __future__ import annotations

import base64
import binascii
import email.message
import email.utils
import json
import mimetypes
import re
import time
import urllib.parse
from email.headerregistry import Address as EmailAddress
from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, cast

from smtpd_compat._version import VERSION
from smtpd_compat.web.mime import decode_header, header_text
from smtpd_compat.web.release import ReleaseError, Upstream, parse_address
from smtpd_compat.web.store import Inbox, StoredMessage
from smtpd_compat.web.transport import ResponseBody, Stream

__all__ = [
    'Request', 'Body', 'parse_body', 'HTTPError', 'NotFound', 'BadRequest',
    'MethodNotAllowed', 'Forbidden', 'MESSAGE_CSP', 'MESSAGE_CSP_REMOTE_IMAGES', 'DATA_CSP', 'VERSION_TEXT',
    'message_summary', 'get_messages', 'get_search', 'delete_search',
    'delete_messages', 'put_messages', 'get_message', 'get_headers',
    'get_raw', 'get_part', 'get_info', 'get_webui', 'get_tags', 'put_tags',
    'put_tag', 'delete_tag', 'post_send', 'post_release', 'get_view_html',
    'get_view_text', 'options',
]

#: What ``Version`` says in /api/v1/info and the ``stats`` event.
VERSION_TEXT = 'smtpd_compat ' + VERSION

#: A message's HTML: no script at all (the CSP sandbox also applies when the
#: URL is opened directly, not only inside the page's sandboxed iframe), no
#: remote loads; images inline (data:) or from this inbox (cid: rewritten).
#: Links open in a new tab (allow-popups) that leaves the sandbox, so a link
#: to a web app works there; javascript: URLs cannot run (no script source).
MESSAGE_CSP = ("default-src 'none'; img-src 'self' data: cid:; "
               "style-src 'unsafe-inline'; font-src data:; "
               "frame-ancestors 'self'; "
               "sandbox allow-popups allow-popups-to-escape-sandbox")
#: A message's HTML when the reader asked for its remote images (the
#: page's toggle, ``?remote=1``): the same, with images from anywhere.
MESSAGE_CSP_REMOTE_IMAGES = MESSAGE_CSP.replace(
    "img-src 'self' data: cid:;", "img-src 'self' data: cid: https: http:;")
#: Raw source and parts: never rendered as a document of this origin.
DATA_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"


class HTTPError(Exception):
    """An error answered with ``status`` and the exception's text (plain
    text; ``{"Error": text}`` when ``as_json``), and ``headers``."""

    status = 500

    def __init__(self, text: str = '', as_json: bool = False,
                 headers: Sequence[Tuple[str, str]] = ()) -> None:
        super().__init__(text)
        self.as_json = as_json
        self.headers = list(headers)


class NotFound(HTTPError):
    """404."""

    status = 404


class BadRequest(HTTPError):
    """400."""

    status = 400


class Forbidden(HTTPError):
    """403."""

    status = 403


class MethodNotAllowed(HTTPError):
    """405, with the ``Allow`` header."""

    status = 405


class PayloadTooLarge(HTTPError):
    """413."""

    status = 413


class Body:
    """A request body: ``values`` (keys lower-cased, as Go's JSON decoder
    matches field names without regard to case), ``form`` when it was a
    form (each value a list of strings), ``empty`` when there was none."""

    def __init__(self, values: Dict[str, Any], form: bool = False,
                 empty: bool = False) -> None:
        self.values = values
        self.form = form
        self.empty = empty

    def expect(self, *names: str) -> None:
        """A form must name one of these fields: a body that is neither
        JSON nor a form of this endpoint is refused, never read as "no
        IDs"."""
        if self.form and not any(n.lower() in self.values for n in names):
            raise BadRequest('invalid JSON body')

    def strings(self, name: str) -> Optional[List[str]]:
        """A list of strings (JSON ``["a", "b"]``, or the field repeated
        in a form); None when absent or null."""
        value = self.values.get(name.lower())
        if value is None:
            return None
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise BadRequest('%s must be an array of strings' % name)
        return list(value)

    def string(self, name: str) -> str:
        value = self.values.get(name.lower())
        if self.form and isinstance(value, list):
            value = value[-1]
        if value is None:
            return ''
        if not isinstance(value, str):
            raise BadRequest('%s must be a string' % name)
        return value

    def boolean(self, name: str) -> bool:
        value = self.values.get(name.lower())
        if self.form and isinstance(value, list):
            return value[-1].lower() in ('1', 'true', 'on', 'yes')
        if value is None:
            return False
        if not isinstance(value, bool):
            raise BadRequest('%s must be true or false' % name)
        return value


def parse_body(data: bytes) -> Body:
    """A request body as Mailpit's handlers read it: JSON whatever the
    Content-Type, its first value only (Go's decoder ignores what
    follows); ``null`` is an empty object.  Not JSON: a form, as some
    clients send (``ids=a&ids=b``); neither: BadRequest."""
    text = data.decode('utf-8', 'replace').strip()
    if not text:
        return Body({}, empty=True)
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        try:
            form = urllib.parse.parse_qs(text, keep_blank_values=True,
                                         strict_parsing=True)
        except ValueError:
            raise BadRequest('invalid JSON body') from None
        return Body({k.lower(): v for k, v in form.items()}, form=True)
    if value is None:
        return Body({})
    if not isinstance(value, dict):
        raise BadRequest('the body must be a JSON object')
    return Body({str(k).lower(): v for k, v in value.items()})


class Request(Protocol):
    """What a handler uses of the request it answers."""

    command: str
    headers: email.message.Message
    query: Dict[str, List[str]]

    @property
    def inbox(self) -> Inbox: ...

    def _param(self, name: str, default: str = '') -> str: ...

    def _body(self, limit: int = ...) -> Body: ...

    @property
    def upstream(self) -> Optional[Upstream]: ...

    client_address: Any

    def _send(self, status: int, body: ResponseBody, content_type: str,
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


_HEAD_TAG = re.compile(r'<head(?=[\s/>])', re.I)
_DOCTYPE = re.compile(r'\s*<!doctype', re.I)


def _inject_base(markup: str) -> str:
    """Links in the mail open in a new tab: a ``<base target=_blank>``
    after the <head> tag (or the doctype, or at the start).  Linear: one
    search for the tag, one for its end (``<head\b[^>]*>`` scanned to
    the end from each of 80,000 ``<head``)."""
    base = '<base target="_blank">'
    m = _HEAD_TAG.search(markup) or _DOCTYPE.match(markup)
    end = markup.find('>', m.end()) if m is not None else -1
    if end < 0:
        return base + markup
    return markup[:end + 1] + base + markup[end + 1:]


def _message(h: Request, id: str) -> StoredMessage:
    message = h.inbox.get(id)
    if message is None:
        raise NotFound('Message not found')
    return message


def _time_zone(h: Request) -> str:
    return h._param('tz')


def _start_limit(h: Request) -> Tuple[int, int]:
    """Mailpit's paging: ``start`` (default 0) and ``limit`` (default 50);
    a value that is not a number, or negative, is the default."""
    start = h._param('start')
    limit = h._param('limit')
    return (int(start) if re.fullmatch(r'\+?\d+', start) else 0,
            int(limit) if re.fullmatch(r'\+?\d+', limit) else 50)


def message_summary(inbox: Inbox, message: StoredMessage) -> Dict[str, Any]:
    """Mailpit's MessageSummary of a message, in Mailpit's field order."""
    summary = inbox.summary(message)
    item: Dict[str, Any] = {'ID': message.id, 'MessageID': summary['MessageID'],
                            'Read': message.read}
    item.update(_public(summary))
    item['Username'] = message.username
    item['Tags'] = message.tags
    for key in ('Size', 'Attachments', 'Snippet'):
        item[key] = item.pop(key)
    return item


def _list(h: Request, messages: List[StoredMessage], search: bool) -> None:
    start, limit = _start_limit(h)
    if limit == 0 and not search:
        # Mailpit lists everything when the limit is 0 (its search, none).
        start, page = 0, messages
    else:
        page = messages[start:start + limit]
    items = [message_summary(h.inbox, m) for m in page]
    stats = h.inbox.stats()
    h._send_json({
        'total': stats['total'],
        'unread': stats['unread'],
        'count': len(items),
        'messages_count': len(messages),
        'messages_unread': sum(1 for m in messages if not m.read),
        'start': start,
        'tags': h.inbox.tags(),
        'messages': items,
    })


def _query(h: Request) -> str:
    query = h._param('query').strip()
    if not query:
        raise BadRequest('Error: no search query')
    return query


def get_messages(h: Request) -> None:
    _list(h, h.inbox.newest_first(), search=False)


def get_search(h: Request) -> None:
    _list(h, h.inbox.search(_query(h), _time_zone(h)), search=True)


def delete_search(h: Request) -> None:
    """Delete the messages that match ``query`` (and nothing else)."""
    messages = h.inbox.search(_query(h), _time_zone(h))
    if messages:
        h.inbox.delete([m.id for m in messages])
    h._send_text(200, 'ok')


def delete_messages(h: Request) -> None:
    """``{"IDs": [...]}`` deletes those messages; everything is deleted
    only when no IDs are given (no body, ``{}``, ``{"IDs": []}``), as
    Mailpit's documentation says.  The same route without a body is
    MailHog's "delete all"."""
    body = h._body()
    body.expect('IDs')
    ids = body.strings('IDs')
    h.inbox.delete(ids if ids else None)
    # Without a body this is MailHog's "delete all" too, whose clients
    # parse any answer as JSON: theirs is empty.
    h._send_text(200, '' if body.empty else 'ok')


def put_messages(h: Request) -> None:
    """Set the read status (``Read``, default false) of the messages named
    by ``IDs``, or matching ``Search``, or of all when neither is given."""
    body = h._body()
    if body.empty:
        raise BadRequest('EOF')
    body.expect('IDs', 'Read', 'Search')
    read = body.boolean('Read')
    ids = body.strings('IDs')
    search = body.string('Search').strip()
    if ids and search:
        raise BadRequest('You may specify either IDs or a search query, not both')
    if search:
        ids = [m.id for m in h.inbox.search(search, _time_zone(h))
               if m.read != read]
        if ids:
            h.inbox.set_read(ids, read)
    else:
        h.inbox.set_read(ids or None, read)
    h._send_text(200, 'ok')


def get_message(h: Request, id: str) -> None:
    """Mailpit's Message; marks it read."""
    message = _message(h, id)
    details = h.inbox.parsed(message).details
    h.inbox.summary(message)        # the tags it came with
    if not message.read:
        h.inbox.set_read([message.id], True)
    result: Dict[str, Any] = {'ID': message.id}
    for key, value in details.items():
        if key == 'Tags':
            result['Tags'] = message.tags
            result['Username'] = message.username
        elif not key.startswith('_'):
            result[key] = value
    # (Mailpit's Message has no Read field; the page reads it here.)
    result['Read'] = True
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
    # Decoded as it is sent, from the shared parse.
    h._send(200, Stream(part.chunks(64 * 1024), part.decoded_size()), ctype,
            headers=headers)


def get_info(h: Request) -> None:
    stats = h.inbox.stats()
    inbox = h.inbox
    h._send_json({
        'Version': VERSION_TEXT,
        'LatestVersion': '',
        'Database': '',
        'DatabaseSize': stats['bytes'],
        'Messages': stats['total'],
        'Unread': stats['unread'],
        'Tags': inbox.tag_counts(),
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


def get_webui(h: Request) -> None:
    """Mailpit's web UI configuration: whether release is on, and where
    to."""
    upstream = h.upstream
    relay: Dict[str, Any] = {'Enabled': upstream is not None}
    if upstream is not None:
        relay.update({
            'SMTPServer': '%s:%d' % (upstream.host, upstream.port),
            'ReturnPath': '', 'OverrideFrom': '', 'BlockedRecipients': '',
            'AllowedRecipients': upstream.allowed.pattern if upstream.allowed else '',
            'PreserveMessageIDs': False,
        })
    h._send_json({'Label': '', 'MessageRelay': relay, 'SpamAssassin': False,
                  'ChaosEnabled': False, 'DuplicatesIgnored': False,
                  'HideDeleteAllButton': False})


# -- tags --------------------------------------------------------------------

def get_tags(h: Request) -> None:
    """Every tag in use, sorted."""
    h._send_json(h.inbox.tags())


def put_tags(h: Request) -> None:
    """``{"IDs": [...], "Tags": [...]}``: those messages get exactly those
    tags (``[]`` removes them all); no IDs changes nothing."""
    body = h._body()
    if body.empty:
        raise BadRequest('EOF')
    body.expect('IDs', 'Tags')
    ids = body.strings('IDs')
    tags = body.strings('Tags') or []
    if ids:
        h.inbox.set_tags(ids, tags)
    h._send_text(200, 'ok')


def put_tag(h: Request, tag: str) -> None:
    """``{"Name": "new"}`` renames a tag on every message."""
    body = h._body()
    if body.empty:
        raise BadRequest('EOF')
    body.expect('Name')
    try:
        h.inbox.rename_tag(tag, body.string('Name'))
    except ValueError as e:
        raise BadRequest(str(e)) from None
    h._send_text(200, 'ok')


def delete_tag(h: Request, tag: str) -> None:
    """Take a tag off every message (the messages stay)."""
    try:
        h.inbox.delete_tag(tag)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    h._send_text(200, 'ok')


# -- send and release ----------------------------------------------------------

# Request bodies are small, but /api/v1/send carries attachments in base64.
SEND_BODY_LIMIT = 48 * 1024 * 1024
# Headers the send API sets itself (Mailpit refuses to let Headers change
# them), compared without regard to case.
_OWN_HEADERS = {'to', 'from', 'cc', 'bcc', 'reply-to', 'date', 'subject',
                'content-type', 'mime-version'}


def _json_error(text: str) -> BadRequest:
    return BadRequest(text, as_json=True)


def _people(value: Any, field: str, names: bool = True) -> List[Tuple[str, str]]:
    """``[{"Email": ..., "Name": ...}]`` (or, without names, a list of
    addresses) as ``(name, address)`` pairs, each address checked."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _json_error('%s must be an array' % field)
    people = []
    for item in value:
        if names and isinstance(item, dict):
            entry = {str(k).lower(): v for k, v in item.items()}
            name, address = entry.get('name') or '', entry.get('email') or ''
        else:
            name, address = '', item
        if not isinstance(name, str) or not isinstance(address, str):
            raise _json_error('%s must hold strings' % field)
        if parse_address(address) != address.strip() or not address.strip():
            raise _json_error('invalid %s address: %s' % (field, address))
        people.append((name, address.strip()))
    return people


def _header_address(name: str, address: str) -> str:
    try:
        return str(EmailAddress(display_name=name, addr_spec=address))
    except (ValueError, IndexError, TypeError):
        raise _json_error('invalid address: %s' % address) from None


def post_send(h: Request) -> None:
    """Mailpit's send API: build a message from JSON and put it in the
    inbox, as if it had come by SMTP (``{"ID": ...}``; errors as
    ``{"Error": ...}``)."""
    try:
        body = h._body(SEND_BODY_LIMIT)
    except BadRequest as e:
        raise _json_error(str(e)) from None
    if body.form or body.empty:
        raise _json_error('invalid JSON body' if body.form else 'EOF')
    values = body.values
    sender = values.get('from')
    if not isinstance(sender, dict):
        raise _json_error('From is required')
    [(from_name, from_address)] = _people([sender], 'From')
    to = _people(values.get('to'), 'To')
    cc = _people(values.get('cc'), 'Cc')
    bcc = _people(values.get('bcc'), 'Bcc', names=False)
    reply_to = _people(values.get('replyto'), 'Reply-To')
    for field in ('subject', 'text', 'html'):
        if not isinstance(values.get(field) or '', str):
            raise _json_error('%s must be a string' % field.title())
    tags = values.get('tags') or []
    headers = values.get('headers') or {}
    attachments = values.get('attachments') or []
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise _json_error('Tags must be an array of strings')
    if not (isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())):
        raise _json_error('Headers must be an object of strings')
    if not isinstance(attachments, list):
        raise _json_error('Attachments must be an array')

    message = email.message.EmailMessage()
    message['From'] = _header_address(from_name, from_address)
    for field, people in (('To', to), ('Cc', cc), ('Reply-To', reply_to)):
        if people:
            message[field] = ', '.join(_header_address(*p) for p in people)
    message['Subject'] = values.get('subject') or ''
    message['Date'] = email.utils.formatdate(localtime=True)
    message['Message-ID'] = email.utils.make_msgid('smtpd_compat')
    own = set(_OWN_HEADERS)
    if tags:
        message['X-Tags'] = ', '.join(tags)
        own.add('x-tags')
    for name, value in headers.items():
        if name.lower() in own:
            raise _json_error('cannot overwrite header: "%s"' % name)
        try:
            message[name] = value
        except (ValueError, TypeError) as e:
            raise _json_error('invalid header %s: %s' % (name, e)) from None
    message.set_content(values.get('text') or '')
    if values.get('html'):
        message.add_alternative(values['html'], subtype='html')
    # Inline parts go with the HTML (multipart/related), then the
    # attachments around it all (multipart/mixed).
    files = [_attachment(item) for item in attachments]
    html_part = message
    if values.get('html'):
        # (add_alternative made it multipart/alternative: text, HTML.)
        html_part = cast(email.message.EmailMessage, message.get_payload(1))
    for data, filename, ctype, cid in files:
        if cid:
            html_part.add_related(data, *ctype.split('/'), filename=filename or None,
                                  cid='<%s>' % cid.strip('<>'), disposition='inline')
    for data, filename, ctype, cid in files:
        if not cid:
            message.add_attachment(data, *ctype.split('/'), filename=filename or None)
    raw = message.as_bytes()
    user = _basic_auth_user(h)
    stored = h.inbox.add(raw, from_address, [a for _, a in to + cc + bcc],
                         peer=h.client_address, username=user)
    if stored is None:
        raise _json_error('the message is larger than the inbox holds')
    h._send_json({'ID': stored.id})


def _attachment(item: Any) -> Tuple[bytes, str, str, str]:
    """An attachment of the send API: (content, file name, content type,
    Content-ID or '')."""
    if not isinstance(item, dict):
        raise _json_error('each attachment must be an object')
    entry = {str(k).lower(): v for k, v in item.items()}
    filename = entry.get('filename') or ''
    content = entry.get('content') or ''
    ctype = entry.get('contenttype') or ''
    cid = entry.get('contentid') or ''
    if not all(isinstance(v, str) for v in (filename, content, ctype, cid)):
        raise _json_error('attachment fields must be strings')
    try:
        # A data: URL's prefix is dropped, as Mailpit does.
        data = base64.b64decode(content.rpartition(',')[2], validate=True)
    except (binascii.Error, ValueError) as e:
        raise _json_error('error decoding base64 attachment "%s": %s'
                          % (filename, e)) from None
    if not re.fullmatch(r'[\w.+-]+/[\w.+-]+', ctype):
        ctype = mimetypes.guess_type(filename)[0] or 'application/octet-stream'
    return data, filename, ctype, cid


def _basic_auth_user(h: Request) -> str:
    """The user of an ``Authorization: Basic`` header ('' without one):
    Mailpit records it as the message's ``Username``."""
    kind, _, value = (h.headers.get('Authorization') or '').partition(' ')
    if kind.lower() != 'basic':
        return ''
    try:
        return header_text(base64.b64decode(value.strip()).decode('utf-8', 'replace')
                           .partition(':')[0])
    except (binascii.Error, ValueError):
        return ''


def post_release(h: Request, id: str) -> None:
    """Relay a message to ``{"To": [...]}`` through the configured upstream
    (:mod:`smtpd_compat.web.release`); 400 when none is configured."""
    message = _message(h, id)
    body = h._body()
    if body.empty:
        raise BadRequest('EOF')
    body.expect('To')
    to = body.strings('To') or []
    upstream = h.upstream
    if upstream is None:
        raise BadRequest('Message relay is not configured (--web-relay)')
    try:
        upstream.release(message.raw, to)
    except ReleaseError as e:
        raise BadRequest(str(e)) from None
    h._send_text(200, 'ok')


def options(h: Request) -> None:
    """A CORS preflight: an empty answer (a foreign Origin was refused
    before)."""
    h._send_text(200, '')


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
    csp = MESSAGE_CSP_REMOTE_IMAGES if h._param('remote') == '1' else MESSAGE_CSP
    # (Encoded as it is sent.)
    h._send(200, markup, 'text/html; charset=utf-8', csp=csp)


def get_view_text(h: Request, id: str) -> None:
    message = _message(h, id)
    text = h.inbox.parsed(message).details['Text']
    h._send_text(200, text)

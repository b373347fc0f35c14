"""A web inbox: every message the server accepts, shown in a browser and
served over a Mailpit-compatible HTTP API.

``python -m smtpd_compat -n -c DebuggingServer --web 8025 localhost:1025``
keeps every accepted message in an in-memory :class:`Inbox` and serves it on
http://127.0.0.1:8025/ (DebuggingServer still prints; any -c class works).
From Python, put :class:`WebInboxServerMixin` in front of a server class, or
use :class:`WebInboxServer`, which only keeps mail for the inbox.

How the pieces share work (the SMTP loop must never wait for the web side):

* the SMTP side only appends ``(raw bytes, envelope, time)`` to the inbox,
  under a lock held for a few dictionary operations;
* the HTTP side is a :class:`http.server.ThreadingHTTPServer` in a daemon
  thread (one thread per request).  Parsing a message (``email`` with
  ``policy.default``) happens there, on first need, and its summary is
  cached on the stored message; a few whole parses are kept in a small LRU.

The inbox is bounded: the newest ``max_messages`` (default 1,000) within
``max_bytes`` of raw mail (default 256 MiB), the oldest dropped first; a
message over ``max_parse_bytes`` (default 32 MiB, the stdlib's default size
limit) is shown by its headers only.  Everything taken from a message is
data: escaped server-side (JSON, ``html.escape``, header values cleaned),
set with ``textContent`` in the page, and a message's HTML is only ever
served under a Content-Security-Policy with ``sandbox`` and no script
source, inside an ``<iframe sandbox>`` without ``allow-scripts``.

The API follows Mailpit's OpenAPI description (paths, field names, ``latest``
as an ID), for the routes test tools use; see docs/web.rst for the table.
"""
import datetime
import http.server
import json
import logging
import re
import secrets
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict
from html.parser import HTMLParser
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import smtpd_compat as _smtpd
from smtpd_compat._compose import UNSET, settings
from smtpd_compat._version import VERSION

__all__ = [
    'Inbox', 'StoredMessage', 'WebInboxServerMixin', 'WebInboxServer',
    'WebServer', 'parse_address', 'html_to_text', 'DEFAULT_ADDRESS',
    'CLI_OPTIONS', 'cli_configure',
]

log = logging.getLogger(__name__)

#: Where the inbox listens when no address is given (Mailpit's port).
DEFAULT_ADDRESS = ('127.0.0.1', 8025)

_MAX_MESSAGES = 1000
_MAX_BYTES = 256 * 1024 * 1024
_MAX_PARSE_BYTES = 32 * 1024 * 1024
# A MIME tree deeper or wider than this is cut: a hostile message must not
# cost unbounded time or recursion to summarise.
_MAX_DEPTH = 32
_MAX_PARTS = 500
_SNIPPET = 250
# Request bodies (DELETE/PUT with a list of IDs) are small; refuse more.
_MAX_REQUEST_BODY = 1024 * 1024

Address = Tuple[str, int]


# ---------------------------------------------------------------------------
# The store

_ID_ALPHABET = ('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ'
                'abcdefghijklmnopqrstuvwxyz')


def _new_id() -> str:
    # 22 base-62 characters, the shape of Mailpit's IDs.
    return ''.join(secrets.choice(_ID_ALPHABET) for _ in range(22))


class StoredMessage:
    """One message in the inbox: the raw bytes and envelope as received.

    Its summary (the decoded fields the list and the search need) is
    computed by ``Inbox.summary()`` on first use, in the reading thread,
    and cached here.
    """

    __slots__ = ('id', 'raw', 'mailfrom', 'rcpttos', 'peer', 'received',
                 'read', '_summary')

    def __init__(self, raw: bytes, mailfrom: str, rcpttos: List[str],
                 peer: Any = None, received: Optional[float] = None) -> None:
        self.id = _new_id()
        self.raw = raw
        self.mailfrom = mailfrom
        self.rcpttos = list(rcpttos)
        self.peer = peer
        self.received = time.time() if received is None else received
        self.read = False
        self._summary: Optional[Dict[str, Any]] = None

    @property
    def size(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return '<StoredMessage %s from %r, %d bytes>' % (
            self.id, self.mailfrom, len(self.raw))


class Inbox:
    """A thread-safe, bounded store of received messages, oldest first.

    Keeps the newest ``max_messages`` messages whose raw sizes add up to at
    most ``max_bytes``; adding drops the oldest beyond either bound.  A
    single message larger than ``max_bytes`` is not kept (and counted in
    ``ignored``).  ``version`` changes on every add, delete and read
    change, so a page can poll it cheaply.
    """

    def __init__(self, max_messages: int = _MAX_MESSAGES,
                 max_bytes: int = _MAX_BYTES,
                 max_parse_bytes: int = _MAX_PARSE_BYTES) -> None:
        for name, value in (('max_messages', max_messages),
                            ('max_bytes', max_bytes),
                            ('max_parse_bytes', max_parse_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError('%s must be a positive integer, not %r'
                                 % (name, value))
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_parse_bytes = max_parse_bytes
        self._messages: 'OrderedDict[str, StoredMessage]' = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._parsed: 'OrderedDict[str, Any]' = OrderedDict()
        self.version = 0
        self.started = time.time()
        #: Counters for /api/v1/info.
        self.accepted = 0
        self.accepted_bytes = 0
        self.deleted = 0
        self.ignored = 0

    # -- writing (any thread; the SMTP loop calls add) -----------------------

    def add(self, data: Union[bytes, str], mailfrom: str = '',
            rcpttos: Iterable[str] = (), peer: Any = None) -> Optional[StoredMessage]:
        """Store a message; returns it, or None when it alone is over
        ``max_bytes``.  Only bookkeeping happens here: no parsing."""
        if isinstance(data, str):
            # decode_data=True servers hand over text; keep what came in.
            data = data.encode('utf-8', 'surrogateescape')
        message = StoredMessage(bytes(data), mailfrom, list(rcpttos), peer)
        size = len(message.raw)
        with self._lock:
            self.accepted += 1
            self.accepted_bytes += size
            if size > self.max_bytes:
                self.ignored += 1
                log.warning('web inbox: a message of %d bytes is over the '
                            'inbox byte cap (%d) and is not shown',
                            size, self.max_bytes)
                return None
            self._messages[message.id] = message
            self._bytes += size
            while (len(self._messages) > self.max_messages
                   or self._bytes > self.max_bytes):
                _, old = self._messages.popitem(last=False)
                self._bytes -= len(old.raw)
                self._parsed.pop(old.id, None)
            self.version += 1
        return message

    def delete(self, ids: Optional[Iterable[str]] = None) -> int:
        """Delete the messages with these IDs (all when None); returns how
        many were deleted.  Unknown IDs are ignored."""
        with self._lock:
            if ids is None:
                count = len(self._messages)
                self._messages.clear()
                self._parsed.clear()
                self._bytes = 0
            else:
                count = 0
                for id in ids:
                    message = self._messages.pop(self._resolve(id), None)
                    if message is not None:
                        count += 1
                        self._bytes -= len(message.raw)
                        self._parsed.pop(message.id, None)
            self.deleted += count
            self.version += 1
        return count

    def clear(self) -> None:
        """Delete every message."""
        self.delete(None)

    def set_read(self, ids: Optional[Iterable[str]], read: bool = True) -> None:
        """Mark messages read or unread (all when ``ids`` is None)."""
        with self._lock:
            targets = (self._messages.values() if ids is None else
                       [self._messages.get(self._resolve(i)) for i in ids])
            for message in targets:
                if message is not None:
                    message.read = bool(read)
            self.version += 1

    # -- reading -------------------------------------------------------------

    def _resolve(self, id: str) -> str:
        if id == 'latest' and self._messages:
            return next(reversed(self._messages))
        return id

    def get(self, id: str) -> Optional[StoredMessage]:
        """The message with this ID (or the newest for ``'latest'``)."""
        with self._lock:
            return self._messages.get(self._resolve(id))

    def newest_first(self) -> List[StoredMessage]:
        """A snapshot of every message, newest first."""
        with self._lock:
            return list(reversed(self._messages.values()))

    def stats(self) -> Dict[str, int]:
        """total, unread, bytes and version, read together."""
        with self._lock:
            return {
                'total': len(self._messages),
                'unread': sum(1 for m in self._messages.values() if not m.read),
                'bytes': self._bytes,
                'version': self.version,
            }

    def search(self, query: str) -> List[StoredMessage]:
        """The messages matching a Mailpit-style search, newest first (see
        ``_parse_query``)."""
        terms = _parse_query(query)
        return [m for m in self.newest_first()
                if _matches(m, self.summary(m), terms)]

    def summary(self, message: StoredMessage) -> Dict[str, Any]:
        """The decoded list fields of ``message`` (Mailpit's MessageSummary
        without ID and Read) plus private search keys, computed once.  Two
        threads may compute it at once; both get the same result, and the
        assignment is atomic."""
        summary = message._summary
        if summary is None:
            details = self.parsed(message).details
            summary = message._summary = _summarise(message, details)
        return summary

    def parsed(self, message: StoredMessage) -> '_Parsed':
        """The parsed message (headers only past ``max_parse_bytes``) and
        its details, from a small cache of recent parses."""
        with self._lock:
            parsed = self._parsed.get(message.id)
            if parsed is not None:
                self._parsed.move_to_end(message.id)
                return parsed
        parsed = _Parsed(message, self.max_parse_bytes)
        with self._lock:
            if message.id in self._messages:
                self._parsed[message.id] = parsed
                while len(self._parsed) > 4:
                    self._parsed.popitem(last=False)
        return parsed

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def __iter__(self):
        with self._lock:
            return iter(list(self._messages.values()))

    def __repr__(self) -> str:
        stats = self.stats()
        return '<Inbox %d messages, %d bytes>' % (stats['total'], stats['bytes'])


# ---------------------------------------------------------------------------
# MIME: parsing and summarising (HTTP threads only)

def _parse(raw: bytes, max_parse_bytes: int):
    import email
    import email.policy
    if len(raw) <= max_parse_bytes:
        return email.message_from_bytes(raw, policy=email.policy.default)
    # Too large to show: parse the header section only (it ends at the
    # first empty line, RFC 5322 section 2.1) and keep no body.
    end = len(raw)
    for sep in (b'\r\n\r\n', b'\n\n'):
        at = raw.find(sep, 0, max_parse_bytes)
        if at != -1:
            end = min(end, at)
    head = raw[:min(end, max_parse_bytes)]
    parsed = email.message_from_bytes(head + b'\n\n',
                                      policy=email.policy.default)
    parsed.set_payload('')
    parsed.too_large = max_parse_bytes
    return parsed


def _header_text(value: Any) -> str:
    """A value as one line of text: line breaks never survive (they would
    be new header lines wherever the value is written)."""
    try:
        text = str(value)
    except Exception:
        text = ''
    return re.sub(r'[\r\n]+[ \t]*', ' ', text)


# Header values are decoded from their raw form with email.header and
# email.utils: the same result as policy.default's header objects for mail
# as it is sent, several times faster (listing 1,000 messages parses 1,000
# header sections), and a value they cannot decode is shown as received.

def _raw_headers(msg) -> Dict[str, List[str]]:
    """Lower-cased header name -> its raw values, in order."""
    headers: Dict[str, List[str]] = {}
    for name, value in msg.raw_items():
        headers.setdefault(name.lower(), []).append(value)
    return headers


def _unfold(value: str) -> str:
    if not isinstance(value, str):
        value = str(value)
    if any('\udc80' <= c <= '\udcff' for c in value):
        # 8-bit bytes in a header (RFC 6532 allows UTF-8 there): the
        # parser kept them as surrogate escapes.
        value = value.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')
    # RFC 5322 section 2.2.3: unfolding removes the line breaks.
    return _header_text(value).strip()


def _decode_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded words decoded."""
    if '=?' not in text:
        return text
    import email.header
    try:
        return _header_text(email.header.make_header(
            email.header.decode_header(text)))
    except Exception:
        return text


def _header_value(headers: Dict[str, List[str]], name: str) -> str:
    """The first ``name`` header, decoded; '' when there is none."""
    values = headers.get(name.lower())
    return _decode_words(_unfold(values[0])) if values else ''


def _addresses(headers: Dict[str, List[str]], name: str) -> List[Dict[str, str]]:
    """Every address in every ``name`` header, as Mailpit's Address."""
    import email.utils
    values = [_unfold(v) for v in headers.get(name.lower(), ())]
    if not values:
        return []
    try:
        pairs = email.utils.getaddresses(values)
    except Exception:
        pairs = []
    return [{'Name': _decode_words(display), 'Address': address}
            for display, address in pairs if display or address]


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(
        timestamp, datetime.timezone.utc).isoformat(timespec='milliseconds')


def _date(headers: Dict[str, List[str]], received: float) -> str:
    import email.utils
    value = _header_value(headers, 'Date')
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except Exception:
        dt = None
    if dt is None:
        return _iso(received)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.isoformat()


def _part_text(part) -> str:
    """A text part's content as str, whatever its declared charset."""
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content
    except Exception:
        pass
    try:
        payload = part.get_payload(decode=True) or b''
    except Exception:
        payload = b''
    if isinstance(payload, str):
        return payload
    return payload.decode('utf-8', 'replace')


def _part_bytes(part) -> bytes:
    """A leaf part's decoded content; an attached message as bytes."""
    if part.get_content_type() == 'message/rfc822' or isinstance(
            part.get_payload(), list):
        try:
            return part.as_bytes()
        except Exception:
            return str(part).encode('utf-8', 'replace')
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        return b''
    return payload if isinstance(payload, bytes) else str(payload).encode('utf-8', 'replace')


def _leaves(msg) -> List[Tuple[str, Any]]:
    """Every leaf part with its PartID ('1', '2.1', ...: the position in
    the MIME tree, as IMAP numbers sections, RFC 3501 section 6.4.5).  An
    attached message is one leaf.  Depth and count are bounded."""
    out: List[Tuple[str, Any]] = []

    def walk(part, path, depth):
        if len(out) >= _MAX_PARTS:
            return
        payload = part.get_payload()
        if part.get_content_maintype() == 'multipart' and isinstance(payload, list):
            if depth >= _MAX_DEPTH:
                return
            for i, sub in enumerate(payload, 1):
                walk(sub, '%s.%d' % (path, i) if path else str(i), depth + 1)
        else:
            out.append((path or '1', part))

    walk(msg, '', 0)
    return out


def _body(msg, subtype: str):
    try:
        return msg.get_body(preferencelist=(subtype,))
    except Exception:
        return None


class _TextOfHTML(HTMLParser):
    """Readable text from HTML: no script/style, line breaks at blocks."""

    _SKIP = {'script', 'style', 'head', 'title', 'template'}
    _BLOCK = {'p', 'div', 'br', 'tr', 'li', 'h1', 'h2', 'h3', 'h4', 'h5',
              'h6', 'table', 'ul', 'ol', 'blockquote', 'pre', 'hr'}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag == 'body':
            # An unclosed <head> ends here, as browsers parse it.
            self._skipping = 0
        elif tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append('\n')

    def handle_endtag(self, tag):
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BLOCK:
            self.parts.append('\n')

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """The text of an HTML document (for search, snippets and Text when a
    message has no plain part, as Mailpit does)."""
    parser = _TextOfHTML()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:
        pass
    text = ''.join(parser.parts)
    text = re.sub(r'[ \t\r\f\v]+', ' ', text)
    return re.sub(r'\s*\n\s*', '\n', text).strip()


def _details(stored: StoredMessage, msg) -> Dict[str, Any]:
    """Mailpit's Message object (without ID and Read) plus, under the
    private key '_parts', PartID -> part for the part route."""
    text_part = _body(msg, 'plain')
    html_part = _body(msg, 'html')
    text = _part_text(text_part) if text_part is not None else ''
    markup = _part_text(html_part) if html_part is not None else ''
    too_large = getattr(msg, 'too_large', None)
    if too_large:
        text = ('(This message is %d bytes, over the %d bytes the inbox '
                'shows; download the raw source to read it.)'
                % (stored.size, too_large))
    elif text_part is None and markup:
        text = html_to_text(markup)
    inline, attachments, parts = [], [], {}
    for part_id, part in _leaves(msg):
        if part is text_part or part is html_part:
            continue
        try:
            disposition = part.get_content_disposition()
        except Exception:
            disposition = None
        content_id = _header_value(_raw_headers(part), 'Content-ID').strip('<> ')
        try:
            filename = part.get_filename() or ''
        except Exception:
            filename = ''
        info = {
            'PartID': part_id,
            'FileName': _header_text(filename),
            'ContentType': part.get_content_type(),
            'ContentID': content_id,
            'Size': len(_part_bytes(part)),
        }
        parts[part_id] = part
        (inline if content_id and disposition != 'attachment'
         else attachments).append(info)
    headers = _raw_headers(msg)
    to = _addresses(headers, 'To')
    cc = _addresses(headers, 'Cc')
    bcc = _addresses(headers, 'Bcc')
    # Envelope recipients named in no header were Bcc'd (Mailpit lists
    # them so too).
    named = {a['Address'].lower() for a in to + cc + bcc}
    for rcpt in stored.rcpttos:
        if rcpt.lower() not in named:
            named.add(rcpt.lower())
            bcc.append({'Name': '', 'Address': rcpt})
    senders = _addresses(headers, 'From')
    return_path = _addresses(headers, 'Return-Path')
    return {
        'MessageID': _header_value(headers, 'Message-ID').strip('<> '),
        'From': senders[0] if senders else None,
        'To': to,
        'Cc': cc,
        'Bcc': bcc,
        'ReplyTo': _addresses(headers, 'Reply-To'),
        'ReturnPath': (return_path[0]['Address'] if return_path
                       else stored.mailfrom),
        'Subject': _header_value(headers, 'Subject'),
        'Date': _date(headers, stored.received),
        'Tags': [],
        'Text': text,
        'HTML': markup,
        'Size': stored.size,
        'Inline': inline,
        'Attachments': attachments,
        '_parts': parts,
    }


def _fallback_details(stored: StoredMessage) -> Dict[str, Any]:
    return {'MessageID': '', 'From': None, 'To': [], 'Cc': [],
            'Bcc': [{'Name': '', 'Address': r} for r in stored.rcpttos],
            'ReplyTo': [], 'ReturnPath': stored.mailfrom, 'Subject': '',
            'Date': _iso(stored.received), 'Tags': [], 'Text': '', 'HTML': '',
            'Size': stored.size, 'Inline': [], 'Attachments': [], '_parts': {}}


class _Parsed:
    """A parsed message and its details (computed once).  Never raises: a
    message the parser cannot read gets the details known without it."""

    __slots__ = ('stored', 'msg', '_details')

    def __init__(self, stored: StoredMessage, max_parse_bytes: int) -> None:
        self.stored = stored
        try:
            self.msg = _parse(stored.raw, max_parse_bytes)
        except Exception:   # RecursionError and parser bugs included
            log.debug('web inbox: cannot parse %s', stored.id, exc_info=True)
            import email.message
            self.msg = email.message.EmailMessage()
        self._details: Optional[Dict[str, Any]] = None

    @property
    def details(self) -> Dict[str, Any]:
        """Mailpit's Message fields (without ID and Read), plus '_parts'.
        Shared: callers copy before changing it."""
        details = self._details
        if details is None:
            try:
                details = _details(self.stored, self.msg)
            except Exception:
                log.debug('web inbox: cannot summarise %s', self.stored.id,
                          exc_info=True)
                details = _fallback_details(self.stored)
            self._details = details
        return details


def _summarise(stored: StoredMessage, d: Dict[str, Any]) -> Dict[str, Any]:
    """The list fields of a message and its search keys, from its
    details."""
    text = d['Text'] or html_to_text(d['HTML'])
    snippet = ' '.join(text.split())[:_SNIPPET]

    def flat(addresses):
        return ' '.join('%s <%s>' % (a['Name'], a['Address'])
                        for a in addresses if a).lower()

    sender = flat([d['From']]) or stored.mailfrom.lower()
    summary = {
        'MessageID': d['MessageID'],
        'From': d['From'],
        'To': d['To'],
        'Cc': d['Cc'],
        'Bcc': d['Bcc'],
        'ReplyTo': d['ReplyTo'],
        'Subject': d['Subject'],
        'Created': _iso(stored.received),
        'Tags': [],
        'Size': stored.size,
        'Attachments': len(d['Attachments']),
        'Snippet': snippet,
    }
    summary['_search'] = {
        'from': sender + ' ' + stored.mailfrom.lower(),
        'to': flat(d['To']) + ' ' + ' '.join(stored.rcpttos).lower(),
        'cc': flat(d['Cc']),
        'bcc': flat(d['Bcc']),
        'reply-to': flat(d['ReplyTo']),
        'subject': d['Subject'].lower(),
        'message-id': d['MessageID'].lower(),
        'filename': ' '.join(a['FileName'] for a in d['Attachments']).lower(),
        'text': text.lower(),
    }
    return summary


# ---------------------------------------------------------------------------
# Search (Mailpit's syntax: terms ANDed, "quoted phrases", field:value,
# a leading - or ! negates; is:read, is:unread, has:attachment)

_QUERY_TOKEN = re.compile(
    r'(?P<neg>[-!])?(?:(?P<key>[A-Za-z-]+):)?(?:"(?P<quoted>[^"]*)"?|(?P<word>\S+))')
_FIELDS = ('from', 'to', 'cc', 'bcc', 'reply-to', 'subject', 'message-id',
           'is', 'has', 'tag', 'addressed')


def _parse_query(query: str) -> List[Tuple[bool, Optional[str], str]]:
    """``[(negated, field or None, lower-cased value)]``."""
    terms = []
    for m in _QUERY_TOKEN.finditer(query or ''):
        if not m.group(0).strip():
            continue
        key = (m.group('key') or '').lower()
        value = m.group('quoted') if m.group('quoted') is not None else m.group('word')
        if key and key not in _FIELDS:
            # Not a filter (e.g. "http://..."): the whole token is a word.
            value, key = m.group(0)[1 if m.group('neg') else 0:].strip('"'), ''
        value = (value or '').lower()
        if not value:
            continue
        terms.append((bool(m.group('neg')), key or None, value))
    return terms


def _matches(message: StoredMessage, summary: Dict[str, Any], terms) -> bool:
    keys = summary['_search']
    for negated, field, value in terms:
        if field is None:
            hit = any(value in keys[k] for k in
                      ('from', 'to', 'cc', 'bcc', 'subject', 'filename', 'text'))
        elif field == 'is':
            hit = message.read if value == 'read' else (
                not message.read if value == 'unread' else False)
        elif field == 'has':
            hit = value.startswith('attachment') and summary['Attachments'] > 0
        elif field == 'tag':
            hit = False
        elif field == 'addressed':
            hit = any(value in keys[k] for k in ('to', 'cc', 'bcc'))
        else:
            hit = value in keys[field]
        if hit == negated:
            return False
    return True


# ---------------------------------------------------------------------------
# HTTP

# The page: scripts and styles only from this origin, no inline code, no
# remote loads; message HTML only in frames from this origin.
_PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
             "img-src 'self' data:; connect-src 'self'; frame-src 'self'; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# A message's HTML: no script at all (the CSP sandbox also applies when the
# URL is opened directly, not only inside the page's sandboxed iframe), no
# remote loads; images inline (data:) or from this inbox (cid: rewritten).
# Links open in a new tab (allow-popups) that leaves the sandbox, so a link
# to a web app works there; javascript: URLs cannot run (no script source).
_MESSAGE_CSP = ("default-src 'none'; img-src 'self' data: cid:; "
                "style-src 'unsafe-inline'; font-src data:; "
                "frame-ancestors 'self'; "
                "sandbox allow-popups allow-popups-to-escape-sandbox")
# Raw source and parts: never rendered as a document of this origin.
_DATA_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"

_LOOPBACK_HOSTS = re.compile(
    r'^(localhost|[^:]+\.localhost|127(\.\d{1,3}){3}|\[::1\]|::1)(:\d+)?$', re.I)


class _NotFound(Exception):
    pass


class _BadRequest(Exception):
    pass


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(',', ':')).encode('ascii')


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


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = 'smtpd_compat-web/' + VERSION
    # A client that stops sending is dropped after this many seconds.
    timeout = 60

    inbox: Inbox        # set on the subclass made per WebServer

    # -- plumbing -------------------------------------------------------------

    def log_message(self, format, *args):
        log.debug('web inbox: %s %s', self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str,
              csp: str = _DATA_CSP, headers: Iterable[Tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Content-Security-Policy', csp)
        self.send_header('X-Content-Type-Options', 'nosniff')
        self.send_header('Referrer-Policy', 'no-referrer')
        self.send_header('Cache-Control', 'no-store')
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _send_json(self, value: Any) -> None:
        self._send(200, _json(value), 'application/json; charset=utf-8')

    def _send_text(self, status: int, text: str) -> None:
        self._send(status, text.encode('utf-8'), 'text/plain; charset=utf-8')

    def _host_allowed(self) -> bool:
        # DNS rebinding: a web site whose name resolves to 127.0.0.1 could
        # otherwise read a loopback-only inbox.  Only when bound to a
        # loopback address, every Host must be a loopback name.
        if not self.server.loopback_only:
            return True
        host = self.headers.get('Host', '')
        return bool(_LOOPBACK_HOSTS.match(host))

    def _dispatch(self) -> None:
        try:
            if not self._host_allowed():
                self._send_text(403, 'Forbidden: unexpected Host header')
                return
            url = urllib.parse.urlsplit(self.path)
            self.query = urllib.parse.parse_qs(url.query)
            path = urllib.parse.unquote(url.path)
            for method, pattern, handler in _ROUTES:
                if method != self.command and not (
                        method == 'GET' and self.command == 'HEAD'):
                    continue
                m = pattern.match(path)
                if m:
                    handler(self, *m.groups())
                    return
            self._send_text(404, 'Not found')
        except _NotFound as e:
            self._send_text(404, str(e) or 'Not found')
        except _BadRequest as e:
            self._send_text(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception('web inbox: error serving %s %r', self.command, self.path)
            try:
                self._send_text(500, 'Internal error')
            except OSError:
                pass

    do_GET = do_HEAD = do_DELETE = do_PUT = _dispatch

    def _param(self, name: str, default: str = '') -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def _int_param(self, name: str, default: int) -> int:
        text = self._param(name, '')
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise _BadRequest('invalid %s: %s' % (name, text)) from None
        if value < 0:
            raise _BadRequest('invalid %s: %s' % (name, text))
        return value

    def _body(self) -> Dict[str, Any]:
        """The request body as a dict: JSON (Mailpit's form; keys matched
        without regard to case, as Go's JSON decoder does) or a form
        (what some clients send)."""
        try:
            length = int(self.headers.get('Content-Length') or 0)
        except ValueError:
            raise _BadRequest('invalid Content-Length') from None
        if length > _MAX_REQUEST_BODY:
            raise _BadRequest('request body too large')
        data = self.rfile.read(length) if length > 0 else b''
        if not data.strip():
            return {}
        ctype = self.headers.get('Content-Type', '')
        if 'application/x-www-form-urlencoded' in ctype:
            form = urllib.parse.parse_qs(data.decode('utf-8', 'replace'))
            return {k.lower(): v for k, v in form.items()}
        try:
            value = json.loads(data)
        except ValueError:
            raise _BadRequest('invalid JSON body') from None
        if not isinstance(value, dict):
            raise _BadRequest('the body must be a JSON object')
        return {str(k).lower(): v for k, v in value.items()}

    def _message(self, id: str) -> StoredMessage:
        message = self.inbox.get(id)
        if message is None:
            raise _NotFound('Message not found')
        return message

    # -- Mailpit API ------------------------------------------------------------

    def _list(self, messages: List[StoredMessage]) -> None:
        start = self._int_param('start', 0)
        limit = self._int_param('limit', 50)
        page = messages[start:start + limit]
        stats = self.inbox.stats()
        items = []
        for m in page:
            item = {'ID': m.id, 'MessageID': '', 'Read': m.read}
            item.update(_public(self.inbox.summary(m)))
            items.append(item)
        self._send_json({
            'total': stats['total'],
            'unread': stats['unread'],
            'count': len(items),
            'messages_count': len(messages),
            'start': start,
            'tags': [],
            'messages': items,
        })

    def get_messages(self) -> None:
        self._list(self.inbox.newest_first())

    def get_search(self) -> None:
        query = self._param('query')
        if not query.strip():
            raise _BadRequest('no search query')
        self._list(self.inbox.search(query))

    def delete_search(self) -> None:
        query = self._param('query')
        if not query.strip():
            raise _BadRequest('no search query')
        self.inbox.delete([m.id for m in self.inbox.search(query)])
        self._send_text(200, 'ok')

    def delete_messages(self) -> None:
        ids = self._body().get('ids')
        if ids is None or ids == []:
            self.inbox.delete(None)
        elif isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            self.inbox.delete(ids)
        else:
            raise _BadRequest('IDs must be a list of strings')
        self._send_text(200, 'ok')

    def put_messages(self) -> None:
        body = self._body()
        ids = body.get('ids')
        read = body.get('read', False)
        if isinstance(read, list):      # a form
            read = read[-1].lower() in ('1', 'true', 'yes')
        if ids is not None and not (
                isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise _BadRequest('IDs must be a list of strings')
        self.inbox.set_read(ids or None, bool(read))
        self._send_text(200, 'ok')

    def get_message(self, id: str) -> None:
        message = self._message(id)
        details = dict(self.inbox.parsed(message).details)
        del details['_parts']
        if not message.read:
            self.inbox.set_read([message.id], True)
        result = {'ID': message.id, 'Read': True}
        result.update(details)
        self._send_json(result)

    def get_headers(self, id: str) -> None:
        msg = self.inbox.parsed(self._message(id)).msg
        headers: Dict[str, List[str]] = {}
        for name, value in msg.raw_items():
            text = _decode_words(_unfold(value))
            # Go's canonical form (textproto.CanonicalMIMEHeaderKey), as
            # Mailpit returns the keys: Message-Id, Content-Type.
            key = '-'.join(w[:1].upper() + w[1:].lower() for w in name.split('-'))
            headers.setdefault(key, []).append(text)
        self._send_json(dict(sorted(headers.items())))

    def get_raw(self, id: str) -> None:
        message = self._message(id)
        headers = []
        if self._param('dl'):
            headers.append(('Content-Disposition', _content_disposition(
                'attachment', message.id + '.eml')))
            ctype = 'message/rfc822'
        else:
            ctype = 'text/plain; charset=utf-8'
        self._send(200, message.raw, ctype, headers=headers)

    def get_part(self, id: str, part_id: str) -> None:
        message = self._message(id)
        parts = self.inbox.parsed(message).details['_parts']
        part = parts.get(part_id)
        if part is None:
            raise _NotFound('Part not found')
        ctype = part.get_content_type()
        charset = part.get_content_charset()
        if charset and ctype.startswith('text/') and re.match(r'^[\w.:-]+$', charset):
            ctype += '; charset=' + charset
        try:
            filename = _header_text(part.get_filename() or '')
        except Exception:
            filename = ''
        kind = 'attachment' if self._param('dl') else 'inline'
        headers = [('Content-Disposition', _content_disposition(
            kind, filename or 'part-' + part_id))]
        self._send(200, _part_bytes(part), ctype, headers=headers)

    def get_info(self) -> None:
        stats = self.inbox.stats()
        inbox = self.inbox
        self._send_json({
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

    def get_tags(self) -> None:
        self._send_json([])

    def get_view_html(self, id: str) -> None:
        message = self._message(id)
        details = self.inbox.parsed(message).details
        markup = details['HTML']
        if not markup:
            raise _NotFound('Message has no HTML part')
        # cid: references become this inbox's part URLs, so inline images
        # load from the same origin (and nothing from elsewhere).
        by_cid = {a['ContentID']: a['PartID']
                  for a in details['Inline'] + details['Attachments']
                  if a['ContentID']}

        def rewrite(m):
            cid = urllib.parse.unquote(m.group(1))
            part_id = by_cid.get(cid)
            if part_id is None:
                return m.group(0)
            return '/api/v1/message/%s/part/%s' % (message.id, part_id)

        markup = re.sub(r'cid:([^"\'\s>)]+)', rewrite, markup, flags=re.I)
        if self._param('embed'):
            markup = _inject_base(markup)
        self._send(200, markup.encode('utf-8', 'replace'),
                   'text/html; charset=utf-8', csp=_MESSAGE_CSP)

    def get_view_text(self, id: str) -> None:
        message = self._message(id)
        text = self.inbox.parsed(message).details['Text']
        self._send_text(200, text)

    # -- the page -----------------------------------------------------------------

    def get_page(self, id: Optional[str] = None) -> None:
        self._send(200, _PAGE_HTML.encode('utf-8'), 'text/html; charset=utf-8',
                   csp=_PAGE_CSP, headers=[('X-Frame-Options', 'DENY')])

    def get_script(self) -> None:
        self._send(200, _PAGE_JS.encode('utf-8'),
                   'text/javascript; charset=utf-8', csp=_PAGE_CSP)

    def get_style(self) -> None:
        self._send(200, _PAGE_CSS.encode('utf-8'), 'text/css; charset=utf-8',
                   csp=_PAGE_CSP)

    def get_state(self) -> None:
        # What the page polls: cheap, and changes whenever the list does.
        stats = self.inbox.stats()
        self._send_json({'version': stats['version'], 'total': stats['total'],
                         'unread': stats['unread']})

    def get_livez(self) -> None:
        self._send_text(200, 'ok')


_ID = r'([A-Za-z0-9]+)'
_ROUTES = [(method, re.compile('^' + pattern + '$'), handler) for method, pattern, handler in (
    ('GET', r'/', _Handler.get_page),
    ('GET', r'/view/' + _ID, _Handler.get_page),
    ('GET', r'/view/' + _ID + r'\.html', _Handler.get_view_html),
    ('GET', r'/view/' + _ID + r'\.txt', _Handler.get_view_text),
    ('GET', r'/app\.js', _Handler.get_script),
    ('GET', r'/app\.css', _Handler.get_style),
    ('GET', r'/livez', _Handler.get_livez),
    ('GET', r'/readyz', _Handler.get_livez),
    ('GET', r'/api/web/state', _Handler.get_state),
    ('GET', r'/api/v1/info', _Handler.get_info),
    ('GET', r'/api/v1/tags', _Handler.get_tags),
    ('GET', r'/api/v1/messages', _Handler.get_messages),
    ('PUT', r'/api/v1/messages', _Handler.put_messages),
    ('DELETE', r'/api/v1/messages', _Handler.delete_messages),
    ('GET', r'/api/v1/search', _Handler.get_search),
    ('DELETE', r'/api/v1/search', _Handler.delete_search),
    ('GET', r'/api/v1/message/' + _ID, _Handler.get_message),
    ('GET', r'/api/v1/message/' + _ID + r'/headers', _Handler.get_headers),
    ('GET', r'/api/v1/message/' + _ID + r'/raw', _Handler.get_raw),
    ('GET', r'/api/v1/message/' + _ID + r'/part/([0-9.]+)', _Handler.get_part),
)]


def _is_loopback(host: str) -> bool:
    import ipaddress
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebServer(http.server.ThreadingHTTPServer):
    """The inbox's HTTP server, serving ``inbox`` on ``address`` from a
    daemon thread once :meth:`start` is called.  :attr:`url` is where a
    browser finds it (the real port when 0 was asked for)."""

    daemon_threads = True

    def __init__(self, address: Address, inbox: Inbox) -> None:
        host, port = address
        handler = type('Handler', (_Handler,), {'inbox': inbox})
        if ':' in host:
            import socket
            self.address_family = socket.AF_INET6
        super().__init__((host, port), handler)
        self.inbox = inbox
        self.loopback_only = _is_loopback(host)
        self._thread: Optional[threading.Thread] = None
        shown = self.server_address[0]
        if shown in ('', '0.0.0.0'):
            shown = '127.0.0.1'
        elif shown == '::':
            shown = '::1'
        if ':' in shown:
            shown = '[%s]' % shown
        #: The inbox page's URL, e.g. ``http://127.0.0.1:8025/``.
        self.url = 'http://%s:%d/' % (shown, self.server_address[1])

    def start(self) -> 'WebServer':
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={'poll_interval': 0.2},
            name='smtpd_compat web inbox %s' % self.url, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (requests under way finish
        in their own daemon threads)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        # socketserver prints tracebacks to stderr; log them instead.
        log.debug('web inbox: error with %s', client_address, exc_info=True)


# ---------------------------------------------------------------------------
# The server mixin

def parse_address(text: Union[str, int, Tuple[str, int], None]) -> Address:
    """``'8025'``, ``':8025'``, ``'0.0.0.0:8025'``, ``'[::1]:8025'``, an int
    port or a ``(host, port)`` tuple -> ``(host, port)``; the host defaults
    to 127.0.0.1 (loopback only unless a host is named)."""
    if text is None:
        return DEFAULT_ADDRESS
    if isinstance(text, tuple):
        host, port = text
        return (host or DEFAULT_ADDRESS[0], int(port))
    if isinstance(text, int) and not isinstance(text, bool):
        return (DEFAULT_ADDRESS[0], text)
    if not isinstance(text, str):
        raise TypeError('web address must be "[HOST:]PORT" or (host, port), '
                        'not %r' % (text,))
    host, sep, port = text.rpartition(':')
    host = host.strip('[]')
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError('invalid web address %r: expected [HOST:]PORT' % (text,))
    return (host or DEFAULT_ADDRESS[0], number)


def _accepted(status: Any) -> bool:
    """Did process_message accept the message?  None or a 2xx reply; for
    LMTP (one result per recipient) when any recipient accepted it."""
    if isinstance(status, (list, tuple)):
        return any(_accepted(s) for s in status)
    return not status or str(status)[:1] == '2'


class WebInboxServerMixin:
    """Keep every message the server accepts in an :class:`Inbox` and show
    it on a web page with a Mailpit-compatible API.

    Put it in front of any server class (``class S(WebInboxServerMixin,
    DebuggingServer)``) or use :class:`WebInboxServer`.  Keywords:

    ``web``
        where the page listens: ``(host, port)``, ``'[HOST:]PORT'`` or a
        port; default the class attribute ``web_address`` if the class
        has one, else ``('127.0.0.1', 8025)``; port 0 picks a free one.
    ``inbox``
        an :class:`Inbox` to record into (e.g. shared by two servers);
        default a new one with ``web_max_messages`` (1,000) and
        ``web_max_bytes`` (256 MiB), keywords or class attributes.

    After construction: ``inbox``, ``web_server`` and
    ``web_url``.  A message is recorded after the server's own
    ``process_message`` accepted it (returned None or a 2xx reply), so
    DebuggingServer still prints and MaildirServer still stores first;
    this holds wherever it sits among the other capability mixins and
    whether or not a subclass's ``process_message`` calls ``super()``.
    Closing the server stops the web page.  It adds no channel layer.
    """

    # The prefix of composed class names (smtpd_compat._compose).
    capability_name = 'WebInbox'

    def __init__(self, *args: Any, web: Any = UNSET, inbox: Optional[Inbox] = None,
                 web_max_messages: Any = UNSET, web_max_bytes: Any = UNSET,
                 **kwargs: Any) -> None:
        # A keyword not given: the user's class attribute, else the default.
        values = settings(
            self,
            {'web_address': web, 'web_max_messages': web_max_messages,
             'web_max_bytes': web_max_bytes},
            {'web_address': DEFAULT_ADDRESS, 'web_max_messages': _MAX_MESSAGES,
             'web_max_bytes': _MAX_BYTES})
        address = parse_address(values['web_address'])
        if inbox is None:
            inbox = Inbox(max_messages=values['web_max_messages'],
                          max_bytes=values['web_max_bytes'])
        self.inbox = inbox
        super().__init__(*args, **kwargs)
        try:
            self.web_server = WebServer(address, inbox)
        except OSError as e:
            self.close()
            raise OSError(e.errno, 'cannot serve the web inbox on %s port %s: %s'
                          % (address[0], address[1], e.strerror or e)) from e
        self.web_url = self.web_server.url
        # Wrap whatever process_message the MRO resolved to (a subclass's
        # own included, which need not call super()): an instance
        # attribute is found first, for every caller.
        inner = self.process_message

        def process_message(peer, mailfrom, rcpttos, data, **kw):
            status = inner(peer, mailfrom, rcpttos, data, **kw)
            if _accepted(status):
                try:
                    self.inbox.add(data, mailfrom, rcpttos, peer)
                except Exception:
                    # The message is delivered already: a fault in the
                    # inbox must not turn that into an error for the client.
                    log.exception('web inbox: cannot record a message')
            return status

        process_message.__doc__ = inner.__doc__
        self.process_message = process_message
        self.web_server.start()
        log.info('web inbox at %s', self.web_url)

    def close(self) -> None:
        super().close()
        web_server = self.__dict__.pop('web_server', None)
        if web_server is not None:
            web_server.stop()


class WebInboxServer(WebInboxServerMixin, _smtpd.SMTPServer):
    """An SMTP server that accepts every message and keeps it for the web
    inbox only (``-c WebInboxServer``; nothing printed, nothing relayed)."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None


# ---------------------------------------------------------------------------
# Command line

CLI_OPTIONS = (
    ('web=', '[HOST:]PORT',
     'Also show every accepted message in a web inbox on this address '
     '(host default 127.0.0.1), with a Mailpit-compatible API.'),
)


def cli_configure(cli) -> None:
    """``--web [HOST:]PORT``: put the inbox in front of the -c class (the
    command line's start line says where the page is)."""
    has_inbox = isinstance(cli.server_class, type) and issubclass(
        cli.server_class, WebInboxServerMixin)
    if 'web' in cli.given:
        try:
            address = parse_address(cli.given['web'])
        except (TypeError, ValueError) as e:
            cli.error('Invalid --web: %s' % (e,))
        if 'workers' in cli.given:
            # Each forked worker would keep its own inbox, invisible to the
            # one page the parent serves.
            cli.error('--web cannot be combined with --workers')
        if not has_inbox:
            cli.mixins.append(WebInboxServerMixin)
        cli.server_kwargs['web'] = address


# ---------------------------------------------------------------------------
# The page (one HTML shell, one script, one style sheet; no external assets)

_PAGE_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Inbox - smtpd_compat</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body>
<header class="bar">
  <a class="brand" href="/" id="home">Inbox</a>
  <span class="count" id="count" aria-live="polite"></span>
  <form class="search" id="search-form" role="search">
    <input type="search" id="search" placeholder="Search: words, from:, to:, subject:, is:unread, has:attachment"
           aria-label="Search messages" autocomplete="off">
  </form>
  <button type="button" id="delete-all" class="danger">Delete all</button>
</header>
<main id="main" class="main">
  <section id="list-pane" class="list-pane" aria-label="Messages">
    <div id="list" class="list" role="list"></div>
    <p id="empty" class="empty" hidden>No messages yet. Send mail to the SMTP server and it shows here.</p>
    <button type="button" id="more" class="more" hidden>Show more</button>
  </section>
  <section id="view-pane" class="view-pane" aria-label="Message" hidden>
    <div class="view-actions">
      <a href="/" id="back" class="button">&larr; Back</a>
      <a id="download" class="button" href="#">Download .eml</a>
      <button type="button" id="delete" class="danger">Delete</button>
    </div>
    <p id="gone" class="empty" hidden>This message is not in the inbox (deleted, or dropped as the inbox filled up).</p>
    <div id="message" hidden>
      <h1 id="subject" class="subject"></h1>
      <dl id="meta" class="meta"></dl>
      <ul id="attachments" class="attachments" aria-label="Attachments"></ul>
      <div class="tabs" role="tablist">
        <button type="button" role="tab" data-tab="html" id="tab-html">HTML</button>
        <button type="button" role="tab" data-tab="text" id="tab-text">Text</button>
        <button type="button" role="tab" data-tab="headers" id="tab-headers">Headers</button>
        <button type="button" role="tab" data-tab="raw" id="tab-raw">Raw</button>
      </div>
      <div class="panel" data-panel="html" role="tabpanel">
        <iframe id="html-frame" title="HTML part of the message"
                sandbox="allow-popups allow-popups-to-escape-sandbox"
                referrerpolicy="no-referrer"></iframe>
        <p id="no-html" class="empty" hidden>This message has no HTML part.</p>
      </div>
      <div class="panel" data-panel="text" role="tabpanel"><pre id="text" class="pre"></pre></div>
      <div class="panel" data-panel="headers" role="tabpanel"><table id="headers" class="headers"></table></div>
      <div class="panel" data-panel="raw" role="tabpanel"><pre id="raw" class="pre"></pre></div>
    </div>
  </section>
</main>
</body>
</html>
"""

_PAGE_CSS = """
*{box-sizing:border-box}
[hidden]{display:none !important}
html,body{margin:0;height:100%}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#f4f5f8;display:flex;flex-direction:column}
a{color:#2450b2}
.bar{display:flex;flex-wrap:wrap;align-items:center;gap:8px;padding:8px 12px;background:#23324f;color:#fff}
.brand{color:#fff;font-weight:700;font-size:16px;text-decoration:none}
.count{color:#c8d2ea;font-size:13px;min-width:5em}
.search{flex:1 1 240px;display:flex}
.search input{flex:1;padding:6px 10px;border-radius:6px;border:1px solid #8794b3;font:inherit}
button,.button{font:inherit;padding:6px 12px;border-radius:6px;border:1px solid #b5bdd0;background:#fff;color:#1d2330;cursor:pointer;text-decoration:none;display:inline-block}
button:focus-visible,a:focus-visible,input:focus-visible,iframe:focus-visible{outline:3px solid #f0a500;outline-offset:1px}
.danger{border-color:#c0392b;color:#c0392b}
.bar .danger{background:#23324f;color:#ffb3aa;border-color:#ffb3aa}
.danger.confirm{background:#c0392b;color:#fff}
.main{flex:1;display:flex;min-height:0}
.list-pane{flex:0 0 42%;max-width:560px;overflow:auto;border-right:1px solid #d9dde7;background:#fff}
.view-pane{flex:1;overflow:auto;padding:12px 16px;min-width:0}
.row{display:grid;grid-template-columns:1fr auto;gap:2px 8px;padding:8px 12px;border-bottom:1px solid #eceef3;color:inherit;text-decoration:none}
.row:hover{background:#f2f5fb}
.row.selected{background:#e1e9fb}
.row.unread .from,.row.unread .subj{font-weight:700}
.from,.to,.subj,.snippet{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;min-width:0}
.to,.snippet,.when,.size{color:#5d6679;font-size:12px}
.when,.size{text-align:right}
.to,.snippet{grid-column:1/-1}
.att{margin-left:6px;font-size:11px;color:#4a5670;padding-left:14px;background:url("data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24'%3E%3Cpath fill='none' stroke='%234a5670' stroke-width='2' d='M21 11l-8.5 8.5a5 5 0 01-7-7L14 4a3.5 3.5 0 015 5l-8.5 8.5a2 2 0 01-3-3L15 7'/%3E%3C/svg%3E") no-repeat left center/12px 12px}
.empty{color:#5d6679;padding:16px}
.more{margin:8px 12px}
.view-actions{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:8px}
#back{display:none}
.subject{font-size:20px;margin:4px 0 8px;overflow-wrap:anywhere}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0 0 8px}
.meta dt{color:#5d6679}
.meta dd{margin:0;overflow-wrap:anywhere}
.attachments{list-style:none;padding:0;margin:0 0 8px;display:flex;flex-wrap:wrap;gap:6px}
.attachments a{display:inline-block;padding:3px 8px;border:1px solid #b5bdd0;border-radius:12px;background:#fff;text-decoration:none;overflow-wrap:anywhere}
.tabs{display:flex;gap:4px;border-bottom:1px solid #d9dde7;margin-bottom:8px;flex-wrap:wrap}
.tabs button{border-radius:6px 6px 0 0;border-bottom:none}
.tabs button[aria-selected=true]{background:#23324f;color:#fff;border-color:#23324f}
.panel{display:none}
.panel.active{display:block}
#html-frame{width:100%;height:70vh;border:1px solid #d9dde7;background:#fff}
.pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#fff;border:1px solid #d9dde7;padding:10px;margin:0;font:12px/1.45 ui-monospace,Menlo,Consolas,monospace}
.headers{border-collapse:collapse;background:#fff;width:100%;table-layout:fixed}
.headers th,.headers td{border:1px solid #e2e5ed;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
.headers th{width:28%;color:#5d6679;font-weight:600}
@media (max-width:760px){
  .list-pane{flex:1 1 100%;max-width:none;border-right:none}
  .main.viewing .list-pane{display:none}
  .main:not(.viewing) .view-pane{display:none}
  #back{display:inline-block}
  #html-frame{height:60vh}
}
"""

_PAGE_JS = r"""'use strict';
// The inbox page.  Everything from a message is set with textContent or as
// an attribute value; no message data is ever parsed as HTML here (the HTML
// part only appears inside the sandboxed iframe, served under its own CSP).
(function () {
  var PAGE = 100;
  var state = {version: -1, query: '', limit: PAGE, ids: [], current: null,
               tab: 'html', message: null};
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function api(path, options) {
    return fetch(path, options).then(function (r) {
      if (r.status === 404) { var err = new Error('not found'); err.notFound = true; throw err; }
      if (!r.ok) throw new Error(r.status + ' ' + r.statusText);
      var type = r.headers.get('Content-Type') || '';
      return type.indexOf('json') >= 0 ? r.json() : r.text();
    });
  }
  function addr(a) {
    if (!a) return '';
    return a.Name ? a.Name + ' <' + a.Address + '>' : a.Address;
  }
  function addrs(list) { return (list || []).map(addr).join(', '); }
  function size(n) {
    if (n < 1024) return n + ' B';
    if (n < 1048576) return (n / 1024).toFixed(1) + ' kB';
    return (n / 1048576).toFixed(1) + ' MB';
  }
  function when(iso) {
    var d = new Date(iso);
    if (isNaN(d)) return '';
    var now = new Date();
    if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString();
    return d.toLocaleDateString() + ' ' + d.toLocaleTimeString();
  }

  // -- the list ---------------------------------------------------------------
  function listUrl() {
    var q = '?start=0&limit=' + state.limit;
    if (state.query) return '/api/v1/search' + q + '&query=' + encodeURIComponent(state.query);
    return '/api/v1/messages' + q;
  }
  function loadList() {
    return api(listUrl()).then(renderList).catch(function () {});
  }
  function renderList(data) {
    var list = $('list');
    var focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.id : null;
    var frag = document.createDocumentFragment();
    state.ids = [];
    data.messages.forEach(function (m) {
      state.ids.push(m.ID);
      var row = el('a', 'row' + (m.Read ? '' : ' unread') + (m.ID === state.current ? ' selected' : ''));
      row.href = '/view/' + encodeURIComponent(m.ID);
      row.dataset.id = m.ID;
      row.setAttribute('role', 'listitem');
      var from = el('span', 'from', addr(m.From) || '(no sender)');
      var whenEl = el('span', 'when', when(m.Created));
      var subj = el('span', 'subj', m.Subject || '(no subject)');
      var right = el('span', 'size', size(m.Size));
      if (m.Attachments) {
        var att = el('span', 'att', String(m.Attachments));
        att.title = m.Attachments + ' attachment(s)';
        att.setAttribute('aria-label', m.Attachments + ' attachments');
        right.appendChild(att);
      }
      var to = el('span', 'to', 'To: ' + addrs(m.To));
      var snip = el('span', 'snippet', m.Snippet);
      [from, whenEl, subj, right, to, snip].forEach(function (c) { row.appendChild(c); });
      frag.appendChild(row);
    });
    list.replaceChildren(frag);
    if (focusedId) {
      var again = list.querySelector('[data-id="' + CSS.escape(focusedId) + '"]');
      if (again) again.focus();
    }
    $('empty').hidden = data.messages.length > 0;
    $('empty').textContent = state.query ? 'No messages match this search.'
      : 'No messages yet. Send mail to the SMTP server and it shows here.';
    $('more').hidden = data.messages_count <= data.messages.length;
    // The whole inbox is listed: a message shown but no longer listed was
    // deleted (here or elsewhere).
    state.complete = !state.query && $('more').hidden;
    $('count').textContent = (state.query ? data.messages_count + ' of ' : '') +
      data.total + ' message' + (data.total === 1 ? '' : 's') +
      (data.unread ? ', ' + data.unread + ' unread' : '');
    document.title = (data.unread ? '(' + data.unread + ') ' : '') + 'Inbox - smtpd_compat';
  }

  // Live updates: poll the inbox's version twice a second; reload the list
  // only when it changed.
  function poll() {
    api('/api/web/state').then(function (s) {
      if (s.version !== state.version) {
        state.version = s.version;
        return loadList().then(function () {
          if (!state.current) return;
          if (state.message === null) showMessage(state.current);
          else if (state.complete && state.ids.indexOf(state.current) < 0) {
            state.message = false;
            $('message').hidden = true;
            $('gone').hidden = false;
          }
        });
      }
    }).catch(function () {}).then(function () {
      setTimeout(poll, document.hidden ? 2000 : 500);
    });
  }

  // -- one message ------------------------------------------------------------
  function route() {
    var m = /^\/view\/([A-Za-z0-9]+)$/.exec(location.pathname);
    if (m) showMessage(m[1]); else showList();
  }
  function go(path) {
    if (location.pathname !== path) history.pushState(null, '', path);
    route();
  }
  function showList() {
    state.current = null;
    state.message = null;
    $('main').classList.remove('viewing');
    $('view-pane').hidden = true;
    markSelected();
  }
  function markSelected() {
    Array.prototype.forEach.call($('list').children, function (row) {
      row.classList.toggle('selected', row.dataset.id === state.current);
    });
  }
  function showMessage(id) {
    state.current = id;
    state.message = null;
    $('main').classList.add('viewing');
    $('view-pane').hidden = false;
    markSelected();
    api('/api/v1/message/' + encodeURIComponent(id)).then(function (m) {
      if (state.current !== id) return;
      state.message = m;
      $('gone').hidden = true;
      $('message').hidden = false;
      render(m);
    }).catch(function (err) {
      if (state.current !== id) return;
      state.message = false;
      $('message').hidden = true;
      $('gone').hidden = false;
    });
  }
  function render(m) {
    var id = encodeURIComponent(m.ID);
    $('subject').textContent = m.Subject || '(no subject)';
    var meta = $('meta');
    meta.replaceChildren();
    [['From', addr(m.From)], ['To', addrs(m.To)], ['Cc', addrs(m.Cc)],
     ['Bcc', addrs(m.Bcc)], ['Reply-To', addrs(m.ReplyTo)],
     ['Date', new Date(m.Date).toLocaleString()], ['Size', size(m.Size)]].forEach(function (f) {
      if (!f[1]) return;
      meta.appendChild(el('dt', null, f[0]));
      meta.appendChild(el('dd', null, f[1]));
    });
    var list = $('attachments');
    list.replaceChildren();
    (m.Attachments || []).concat(m.Inline || []).forEach(function (a) {
      var li = el('li');
      var name = a.FileName || (a.ContentID ? 'inline ' : 'part ') + a.ContentType;
      var link = el('a', null, name + ' (' + size(a.Size) + ')');
      link.href = '/api/v1/message/' + id + '/part/' + encodeURIComponent(a.PartID) + '?dl=1';
      link.title = a.ContentType;
      li.appendChild(link);
      list.appendChild(li);
    });
    $('download').href = '/api/v1/message/' + id + '/raw?dl=1';
    $('text').textContent = m.Text;
    $('headers').replaceChildren();
    $('raw').textContent = '';
    var frame = $('html-frame');
    if (m.HTML) {
      frame.hidden = false;
      $('no-html').hidden = true;
      frame.src = '/view/' + id + '.html?embed=1';
    } else {
      frame.hidden = true;
      frame.removeAttribute('src');
      $('no-html').hidden = false;
    }
    selectTab(m.HTML ? (state.tab === 'text' && m.Text ? 'text' : state.tab) : (state.tab === 'html' ? 'text' : state.tab), false);
  }
  function selectTab(name, remember) {
    if (remember) state.tab = name;
    document.querySelectorAll('.tabs button').forEach(function (b) {
      var on = b.dataset.tab === name;
      b.setAttribute('aria-selected', on ? 'true' : 'false');
      b.tabIndex = on ? 0 : -1;
    });
    document.querySelectorAll('.panel').forEach(function (p) {
      p.classList.toggle('active', p.dataset.panel === name);
    });
    var m = state.message;
    if (!m) return;
    var id = encodeURIComponent(m.ID);
    if (name === 'headers' && !$('headers').firstChild) {
      api('/api/v1/message/' + id + '/headers').then(function (h) {
        var table = $('headers');
        Object.keys(h).forEach(function (k) {
          h[k].forEach(function (v) {
            var tr = el('tr');
            tr.appendChild(el('th', null, k));
            tr.appendChild(el('td', null, v));
            table.appendChild(tr);
          });
        });
      }).catch(function () {});
    }
    if (name === 'raw' && !$('raw').textContent) {
      if (m.Size > 2097152) {
        $('raw').textContent = 'The source is ' + size(m.Size) + '; use "Download .eml" to read it.';
      } else {
        api('/api/v1/message/' + id + '/raw').then(function (t) { $('raw').textContent = t; })
          .catch(function () {});
      }
    }
  }
  function deleteIds(ids) {
    return fetch('/api/v1/messages', {method: 'DELETE', headers: {'Content-Type': 'application/json'},
                                      body: JSON.stringify({IDs: ids})});
  }
  function deleteCurrent() {
    if (!state.current) return;
    var id = state.current, i = state.ids.indexOf(id);
    var next = i >= 0 ? (state.ids[i + 1] || state.ids[i - 1]) : null;
    deleteIds([id]).then(function () {
      go(next ? '/view/' + encodeURIComponent(next) : '/');
    });
  }
  var confirmTimer = null;
  function deleteAll() {
    var b = $('delete-all');
    if (!b.classList.contains('confirm')) {
      // A second press within 4 s confirms (no modal dialog).
      b.classList.add('confirm');
      b.textContent = 'Really delete all?';
      confirmTimer = setTimeout(resetDeleteAll, 4000);
      return;
    }
    resetDeleteAll();
    fetch('/api/v1/messages', {method: 'DELETE'}).then(function () { go('/'); });
  }
  function resetDeleteAll() {
    clearTimeout(confirmTimer);
    $('delete-all').classList.remove('confirm');
    $('delete-all').textContent = 'Delete all';
  }

  // -- keyboard ---------------------------------------------------------------
  function moveSelection(step) {
    var rows = Array.prototype.slice.call($('list').children);
    if (!rows.length) return;
    var i = rows.indexOf(document.activeElement);
    if (i < 0) i = rows.findIndex(function (r) { return r.dataset.id === state.current; });
    var next = rows[Math.max(0, Math.min(rows.length - 1, i < 0 ? 0 : i + step))];
    next.focus();
    next.scrollIntoView({block: 'nearest'});
  }
  document.addEventListener('keydown', function (e) {
    var typing = e.target && (e.target.tagName === 'INPUT' || e.target.tagName === 'TEXTAREA');
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing) {
      if (e.key === 'Escape') { e.target.value = ''; search(''); e.target.blur(); }
      return;
    }
    if (e.key === '/') { e.preventDefault(); $('search').focus(); }
    else if (e.key === 'j' || e.key === 'ArrowDown') { e.preventDefault(); moveSelection(1); }
    else if (e.key === 'k' || e.key === 'ArrowUp') { e.preventDefault(); moveSelection(-1); }
    else if (e.key === 'Delete' || e.key === '#') { e.preventDefault(); deleteCurrent(); }
    else if (e.key === 'Escape' || e.key === 'u') { go('/'); }
  });

  // -- wiring -----------------------------------------------------------------
  var searchTimer = null;
  function search(q) {
    state.query = q.trim();
    state.limit = PAGE;
    loadList();
  }
  document.addEventListener('DOMContentLoaded', function () {
    $('list').addEventListener('click', function (e) {
      var row = e.target.closest('a.row');
      if (!row || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return;
      e.preventDefault();
      go('/view/' + encodeURIComponent(row.dataset.id));
    });
    $('home').addEventListener('click', function (e) { e.preventDefault(); go('/'); });
    $('back').addEventListener('click', function (e) { e.preventDefault(); go('/'); });
    $('delete').addEventListener('click', deleteCurrent);
    $('delete-all').addEventListener('click', deleteAll);
    $('more').addEventListener('click', function () { state.limit += PAGE; loadList(); });
    $('search-form').addEventListener('submit', function (e) {
      e.preventDefault(); search($('search').value);
    });
    $('search').addEventListener('input', function () {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(function () { search($('search').value); }, 200);
    });
    document.querySelectorAll('.tabs button').forEach(function (b) {
      b.addEventListener('click', function () { selectTab(b.dataset.tab, true); });
      b.addEventListener('keydown', function (e) {
        if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
        var tabs = Array.prototype.slice.call(document.querySelectorAll('.tabs button'));
        var i = tabs.indexOf(b) + (e.key === 'ArrowRight' ? 1 : -1);
        var t = tabs[(i + tabs.length) % tabs.length];
        t.focus(); selectTab(t.dataset.tab, true);
      });
    });
    window.addEventListener('popstate', route);
    route();
    poll();
  });
})();
"""

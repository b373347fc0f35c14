"""What a stored message says: parsing, details, summaries, parts, and HTML
turned into text.

Everything here runs in the HTTP server's threads, never on the SMTP loop,
and never raises on what a client sent: a message the parser cannot read
gets the details known without it.  It knows nothing of the store beyond
the few attributes of :class:`RawMessage`.

Header values are decoded from their raw form with ``email.header`` and
``email.utils``: the same result as ``policy.default``'s header objects for
mail as it is sent, several times faster (listing 1,000 messages parses
1,000 header sections), and a value they cannot decode is shown as
received.
"""
from __future__ import annotations

import datetime
import email
import hashlib
import email.header
import email.utils
import logging
import re
from html.parser import HTMLParser
from email.message import EmailMessage, Message
from typing import Any, Dict, List, Optional, Protocol, Tuple

__all__ = [
    'RawMessage', 'Parsed', 'summarise', 'html_to_text', 'header_text',
    'decode_header', 'part_bytes', 'iso_time', 'clean', 'clean_tag',
    'list_unsubscribe', 'MAX_TAGS',
]

log = logging.getLogger(__name__)

# A MIME tree deeper or wider than this is cut: a hostile message must not
# cost unbounded time or recursion to summarise.
_MAX_DEPTH = 32
_MAX_PARTS = 500
_SNIPPET = 250

# Types in the annotations below: a part of a parsed message is a
# Message[Any, Any] (policy.default makes EmailMessage objects; typeshed
# types the parts as plain Messages); raw headers are a Dict[str, List[str]]
# (lower-cased name -> its raw values, in order); Mailpit's Address object
# is a Dict[str, str] ({"Name": ..., "Address": ...}).


class RawMessage(Protocol):
    """What this module reads of a stored message
    (:class:`smtpd_compat.web.store.StoredMessage` is one)."""

    id: str
    raw: bytes
    mailfrom: str
    rcpttos: List[str]
    received: float

    @property
    def size(self) -> int: ...


# ---------------------------------------------------------------------------
# Parsing

def _parse(raw: bytes, max_parse_bytes: int) -> Tuple[EmailMessage, bool]:
    """The parsed message, and whether it was too large to parse whole."""
    # Imported here, not above: email.policy (headerregistry and friends)
    # costs more than the rest of this package to import, and a server
    # whose inbox is never read never needs it.
    import email.parser
    import email.policy

    # What email.message_from_bytes(policy=default) does, typed as such by
    # every typeshed (mypy 1.14's, for Python 3.8, says Message).
    parser = email.parser.BytesParser(EmailMessage,
                                      policy=email.policy.default)
    if len(raw) <= max_parse_bytes:
        return parser.parsebytes(raw), False
    # Too large to show: parse the header section only (it ends at the
    # first empty line, RFC 5322 section 2.1) and keep no body.
    end = len(raw)
    for sep in (b'\r\n\r\n', b'\n\n'):
        at = raw.find(sep, 0, max_parse_bytes)
        if at != -1:
            end = min(end, at)
    head = raw[:min(end, max_parse_bytes)]
    parsed = parser.parsebytes(head + b'\n\n')
    parsed.set_payload('')
    return parsed, True


class Parsed:
    """A parsed message and its details (computed once).  Never raises: a
    message the parser cannot read gets the details known without it."""

    __slots__ = ('stored', 'msg', 'too_large', 'max_parse_bytes', '_details')

    def __init__(self, stored: RawMessage, max_parse_bytes: int) -> None:
        self.stored = stored
        self.max_parse_bytes = max_parse_bytes
        #: True when only the header section was parsed (the message is
        #: over ``max_parse_bytes``).
        self.too_large = False
        try:
            self.msg, self.too_large = _parse(stored.raw, max_parse_bytes)
        except Exception:   # RecursionError and parser bugs included
            log.debug('web inbox: cannot parse %s', stored.id, exc_info=True)
            self.msg = EmailMessage()
        self._details: Optional[Dict[str, Any]] = None

    @property
    def details(self) -> Dict[str, Any]:
        """Mailpit's Message fields (without ID and Read), plus, under the
        private key '_parts', PartID -> part for the part route.  Shared:
        callers copy before changing it."""
        details = self._details
        if details is None:
            try:
                details = _details(self)
            except Exception:
                log.debug('web inbox: cannot summarise %s', self.stored.id,
                          exc_info=True)
                details = _fallback_details(self.stored)
            self._details = details
        return details


# ---------------------------------------------------------------------------
# Header values

def header_text(value: object) -> str:
    """A value as one line of text: line breaks never survive (they would
    be new header lines wherever the value is written)."""
    try:
        text = str(value)
    except Exception:
        text = ''
    return re.sub(r'[\r\n]+[ \t]*', ' ', text)


def _raw_headers(msg: Message[Any, Any]) -> Dict[str, List[str]]:
    """Lower-cased header name -> its raw values, in order."""
    headers: Dict[str, List[str]] = {}
    for name, value in msg.raw_items():
        headers.setdefault(name.lower(), []).append(value)
    return headers


def _unfold(value: object) -> str:
    if not isinstance(value, str):
        value = str(value)
    if any('\udc80' <= c <= '\udcff' for c in value):
        # 8-bit bytes in a header (RFC 6532 allows UTF-8 there): the
        # parser kept them as surrogate escapes.
        value = value.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')
    # RFC 5322 section 2.2.3: unfolding removes the line breaks.
    return header_text(value).strip()


def _decode_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded words decoded."""
    if '=?' not in text:
        return text
    try:
        return header_text(email.header.make_header(
            email.header.decode_header(text)))
    except Exception:
        return text


def decode_header(value: object) -> str:
    """A raw header value unfolded, on one line, its encoded words
    decoded."""
    return _decode_words(_unfold(value))


def _header_value(headers: Dict[str, List[str]], name: str) -> str:
    """The first ``name`` header, decoded; '' when there is none."""
    values = headers.get(name.lower())
    return decode_header(values[0]) if values else ''


def _addresses(headers: Dict[str, List[str]], name: str) -> List[Dict[str, str]]:
    """Every address in every ``name`` header, as Mailpit's Address."""
    found: List[Dict[str, str]] = []
    for value in headers.get(name.lower(), ()):
        value = _unfold(value)
        if _ENCODED_WORDS_ONLY.match(value):
            found.extend(_encoded_mailboxes(_decode_words(value)))
            continue
        try:
            pairs = email.utils.getaddresses([value])
        except Exception:
            pairs = []
        for display, address in pairs:
            if '=?' in address and '@' not in address:
                # One address of the list was a lone encoded word.
                found.extend(_encoded_mailboxes(_decode_words(address)))
            elif display or address:
                found.append({'Name': _decode_words(display), 'Address': address})
    return found


# A header value that is nothing but encoded words (unfolded).
_ENCODED_WORDS_ONLY = re.compile(r'(?:\s*=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)+\s*$')


def _encoded_mailboxes(text: str) -> List[Dict[str, str]]:
    """The mailboxes in ``text``, decoded from an address header (or one
    address of it) that was nothing but encoded words.

    email.header.Header(name_and_address) writes a whole mailbox so
    ("From: =?utf-8?b?...?="), which parses as one address with no domain:
    the page showed the raw word, and an envelope recipient named so in To
    was listed as Bcc.  RFC 2047 section 5 allows no encoded word in an
    address, but the meaning is plain once decoded: mailboxes, one
    "Name <addr>" (whose name may hold a comma), or only a name (Mailpit,
    whose parser fails on all of these, shows the decoded header as the
    name)."""
    try:
        pairs = email.utils.getaddresses([text])
    except Exception:
        pairs = []
    if pairs and all('@' in address for _, address in pairs):
        return [{'Name': display, 'Address': address} for display, address in pairs]
    name, _, rest = text.rpartition('<')
    if rest.endswith('>') and '@' in rest:
        return [{'Name': name.strip().strip('"').strip(), 'Address': rest[:-1].strip()}]
    return [{'Name': text, 'Address': ''}] if text else []


def iso_time(timestamp: float) -> str:
    """A POSIX time as RFC 3339 in UTC, with milliseconds (as Mailpit's
    ``Created``)."""
    return datetime.datetime.fromtimestamp(
        timestamp, datetime.timezone.utc).isoformat(timespec='milliseconds')


def _date(headers: Dict[str, List[str]], received: float) -> str:
    value = _header_value(headers, 'Date')
    try:
        dt: Optional[datetime.datetime] = email.utils.parsedate_to_datetime(value)
    except Exception:
        dt = None
    if dt is None:
        return iso_time(received)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.isoformat()


# ---------------------------------------------------------------------------
# Parts

def _part_text(part: Message[Any, Any]) -> str:
    """A text part's content as str, whatever its declared charset."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
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
    return bytes(payload).decode('utf-8', 'replace')


def part_bytes(part: Message[Any, Any]) -> bytes:
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
    return bytes(payload) if isinstance(payload, (bytes, bytearray)) else (
        str(payload).encode('utf-8', 'replace'))


def _leaves(msg: Message[Any, Any]) -> List[Tuple[str, Message[Any, Any]]]:
    """Every leaf part with its PartID ('1', '2.1', ...: the position in
    the MIME tree, as IMAP numbers sections, RFC 3501 section 6.4.5).  An
    attached message is one leaf.  Depth and count are bounded."""
    out: List[Tuple[str, Message[Any, Any]]] = []

    def walk(part: Message[Any, Any], path: str, depth: int) -> None:
        if len(out) >= _MAX_PARTS:
            return
        payload = part.get_payload()
        if part.get_content_maintype() == 'multipart' and isinstance(payload, list):
            if depth >= _MAX_DEPTH:
                return
            for i, sub in enumerate(payload, 1):
                if isinstance(sub, Message):
                    walk(sub, '%s.%d' % (path, i) if path else str(i), depth + 1)
        else:
            out.append((path or '1', part))

    walk(msg, '', 0)
    return out


def _body(msg: EmailMessage, subtype: str) -> Optional[Message[Any, Any]]:
    try:
        return msg.get_body(preferencelist=(subtype,))
    except Exception:
        return None


# ---------------------------------------------------------------------------
# HTML as text

class _TextOfHTML(HTMLParser):
    """Readable text from HTML: no script/style, line breaks at blocks."""

    _SKIP = {'script', 'style', 'head', 'title', 'template'}
    _BLOCK = {'p', 'div', 'br', 'tr', 'li', 'h1', 'h2', 'h3', 'h4', 'h5',
              'h6', 'table', 'ul', 'ol', 'blockquote', 'pre', 'hr'}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str,
                        attrs: List[Tuple[str, Optional[str]]]) -> None:
        if tag == 'body':
            # An unclosed <head> ends here, as browsers parse it.
            self._skipping = 0
        elif tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append('\n')

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BLOCK:
            self.parts.append('\n')

    def handle_data(self, data: str) -> None:
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


# ---------------------------------------------------------------------------
# Details and summaries

def _details(parsed: Parsed) -> Dict[str, Any]:
    """Mailpit's Message object (without ID and Read) plus, under the
    private key '_parts', PartID -> part for the part route."""
    stored, msg = parsed.stored, parsed.msg
    text_part = _body(msg, 'plain')
    html_part = _body(msg, 'html')
    text = _part_text(text_part) if text_part is not None else ''
    markup = _part_text(html_part) if html_part is not None else ''
    if parsed.too_large:
        text = ('(This message is %d bytes, over the %d bytes the inbox '
                'shows; download the raw source to read it.)'
                % (stored.size, parsed.max_parse_bytes))
    elif text_part is None and markup:
        text = html_to_text(markup)
    inline: List[Dict[str, Any]] = []
    attachments: List[Dict[str, Any]] = []
    parts: Dict[str, Message[Any, Any]] = {}
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
        content = part_bytes(part)
        info = {
            'PartID': part_id,
            'FileName': header_text(filename),
            'ContentType': part.get_content_type(),
            'ContentID': content_id,
            'Size': len(content),
            'Checksums': {'MD5': hashlib.md5(content).hexdigest(),
                          'SHA1': hashlib.sha1(content).hexdigest(),
                          'SHA256': hashlib.sha256(content).hexdigest()},
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
        'ListUnsubscribe': list_unsubscribe(
            _header_value(headers, 'List-Unsubscribe'),
            _header_value(headers, 'List-Unsubscribe-Post')),
        'Date': _date(headers, stored.received),
        'Tags': _auto_tags(headers, senders + to + cc + bcc),
        'Text': text,
        'HTML': markup,
        'Size': stored.size,
        'Inline': inline,
        'Attachments': attachments,
        '_parts': parts,
    }


def _fallback_details(stored: RawMessage) -> Dict[str, Any]:
    return {'MessageID': '', 'From': None, 'To': [], 'Cc': [],
            'Bcc': [{'Name': '', 'Address': r} for r in stored.rcpttos],
            'ReplyTo': [], 'ReturnPath': stored.mailfrom, 'Subject': '',
            'ListUnsubscribe': list_unsubscribe('', ''),
            'Date': iso_time(stored.received), 'Tags': [], 'Text': '',
            'HTML': '', 'Size': stored.size, 'Inline': [], 'Attachments': [],
            '_parts': {}}


def summarise(stored: RawMessage, d: Dict[str, Any]) -> Dict[str, Any]:
    """The list fields of a message (Mailpit's MessageSummary without ID
    and Read) from its details, plus under the private key '_search' the
    :func:`clean` text of each field search looks at, and under '_inline'
    the number of inline parts (:mod:`smtpd_compat.web.search`)."""
    text = d['Text'] or html_to_text(d['HTML'])
    snippet = ' '.join(text.split())[:_SNIPPET]

    def flat(addresses: List[Optional[Dict[str, str]]]) -> str:
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
        'Created': iso_time(stored.received),
        'Tags': d['Tags'],
        'Size': stored.size,
        'Attachments': len(d['Attachments']),
        'Snippet': snippet,
    }
    keys = {
        'from': clean(sender + ' ' + stored.mailfrom),
        'to': clean(flat(d['To'])),
        'cc': clean(flat(d['Cc'])),
        'bcc': clean(flat(d['Bcc'])),
        'reply-to': clean(flat(d['ReplyTo'])),
        'subject': d['Subject'].lower(),
        'message-id': clean(d['MessageID']),
    }
    # Mailpit's search text: the address headers, subject, Return-Path,
    # the body text and the attachments' names.
    keys['text'] = clean(' '.join((
        keys['from'], d['Subject'], keys['to'], keys['cc'], keys['bcc'],
        keys['reply-to'], d['ReturnPath'], text,
        ' '.join(a['FileName'] for a in d['Attachments']))))
    summary['_search'] = keys
    summary['_inline'] = len(d['Inline'])
    return summary


_UNCLEAN = re.compile(r'[\r\n\t<>",;()\ufeff]')


def clean(text: str) -> str:
    """Text as Mailpit compares it in a search: lower case, line breaks,
    tabs and ``<>",;()`` as spaces, runs of white space as one space."""
    return ' '.join(_UNCLEAN.sub(' ', text).split()).lower()


# ---------------------------------------------------------------------------
# Tags and List-Unsubscribe

# What Mailpit allows in a tag name (its documentation: letters, digits,
# '-', '.', '_', '@' and spaces, 1 to 100 characters).
_TAG_UNSAFE = re.compile(r'[^a-zA-Z0-9\-\ _.@]')
#: At most this many tags on a message (Mailpit has no bound).
MAX_TAGS = 100


def clean_tag(text: str) -> str:
    """A tag name as Mailpit keeps it: other characters than it allows
    as spaces, runs of spaces as one, at most 100 characters; '' when
    nothing is left."""
    return ' '.join(_TAG_UNSAFE.sub(' ', text).split())[:100].strip()


def _auto_tags(headers: Dict[str, List[str]],
               addresses: List[Dict[str, str]]) -> List[str]:
    """The tags Mailpit gives a message on arrival: the names in its
    ``X-Tags`` header (comma-separated) and the plus-address parts of
    its sender and recipients (``user+tag1+tag2@example.org``).  Unique
    without regard to case (the first spelling kept), sorted."""
    names = _header_value(headers, 'X-Tags').split(',')
    for address in addresses:
        # user+tag1+tag2@domain: from the first '+' to the '@' after it.
        text = address['Address']
        plus = text.find('+')
        at = text.find('@', plus + 1) if plus >= 0 else -1
        if at > plus:
            names.extend(text[plus + 1:at].split('+'))
    tags: Dict[str, str] = {}
    for name in names:
        tag = clean_tag(name)
        if tag and len(tags) < MAX_TAGS:
            tags.setdefault(tag.lower(), tag)
    return sorted(tags.values(), key=str.lower)


_LINKS = re.compile(r'<([^<>]*)>')


def _without_comments(text: str) -> str:
    # RFC 5322 comments, nested, in one pass (a regular expression over
    # many unclosed '(' would take quadratic time).
    out = []
    depth = 0
    for char in text:
        if char == '(':
            depth += 1
        elif char == ')' and depth:
            depth -= 1
        elif not depth:
            out.append(char)
    return ''.join(out)


def list_unsubscribe(header: str, post: str) -> Dict[str, Any]:
    """Mailpit's ListUnsubscribe object for a ``List-Unsubscribe`` header
    (and ``List-Unsubscribe-Post``): the header, its links, and what is
    wrong with it (RFC 2369 section 3.2, RFC 8058: angle brackets around
    each link, commas between, at most one ``mailto:`` and one HTTP(S)
    link, no spaces)."""
    result: Dict[str, Any] = {'Header': header, 'Links': [], 'Errors': '',
                              'HeaderPost': post if header else ''}
    if not header:
        return result
    value = _without_comments(header).strip()
    links = _LINKS.findall(value)
    errors: List[str] = []
    if not links:
        errors.append('"%s": no link in angle brackets' % value)
    elif not (value.startswith('<') and value.endswith('>')):
        errors.append('"%s": each link must be in angle brackets' % value)
    elif len(links) > 2:
        errors.append('"%s": at most one email and one HTTP link' % value)
    elif any(sep.strip() != ',' for sep in re.findall(r'>([^<>]*)<', value)):
        errors.append('"%s": links must be separated by a comma' % value)
    else:
        seen = set()
        for link in links:
            kind = ('mailto' if re.match(r'mailto:[a-zA-Z0-9]', link) else
                    'http' if re.match(r'(?i)https?://[a-zA-Z0-9]', link) else '')
            if re.search(r'\s', link):
                errors.append('"%s": a link must not contain spaces' % link)
            elif not kind:
                errors.append('"%s": a link must start with http(s):// or '
                              'mailto:' % link)
            elif kind in seen:
                errors.append('"%s": only one %s link is allowed' % (link, kind))
            else:
                seen.add(kind)
                result['Links'].append(link)
    result['Errors'] = ', '.join(errors)
    return result

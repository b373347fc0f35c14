"""What a stored message says: parsing, details, summaries, parts, and HTML
turned into text.

Everything here runs off the SMTP loop (in the inbox's ingest thread and
the HTTP server's workers) and never raises on what a client sent: a
message it cannot read gets the details known without it.  It knows
nothing of the store beyond the few attributes of :class:`RawMessage`.

Hostile mail costs bounded time and memory, and no single step holds the
interpreter long (another thread, the SMTP loop, waits for the GIL while a
C function runs):

* every pass over client data is linear: the MIME structure is found with
  ``bytes.find`` over the raw message, which is never copied (a part is a
  range of it); HTML becomes text through a tokenizer that never looks at
  a character twice; no regular expression here can backtrack over more
  than a bounded stretch;
* the work has caps: at most :data:`MAX_PARTS` parts and
  :data:`MAX_DEPTH` levels of nesting are followed, :data:`MAX_HEADERS`
  header fields read per part, :data:`MAX_PARAMS` parameters per
  Content-Type or Content-Disposition; a header value is cut to
  :data:`MAX_HEADER_VALUE` characters before any parser sees it (the
  standard library's header parsers recurse, or go quadratic, on some
  long values), and at most :data:`MAX_HTML_TEXT` characters of HTML are
  turned into text.  Where a cap bites, the details say so in ``Notes``
  ("59,500 more parts not shown");
* decoding (base64, quoted-printable, charsets) goes
  :data:`CHUNK` bytes at a time.

Header values are decoded with ``email.header`` and ``email.utils``: the
same result as ``policy.default``'s header objects for mail as it is sent,
several times faster, and a value they cannot decode is shown as received.
"""
from __future__ import annotations

import binascii
import codecs
import datetime
import email.header
import email.utils
import hashlib
import html
import logging
import re
import sys
from typing import Any, Dict, Iterator, List, Optional, Protocol, Tuple

__all__ = [
    'RawMessage', 'Part', 'Parsed', 'tree', 'summarise', 'html_to_text',
    'header_text', 'decode_header', 'part_bytes', 'iso_time', 'cost_of',
    'clean', 'clean_tag', 'list_unsubscribe', 'MAX_TAGS',
    'MAX_PARTS', 'MAX_DEPTH', 'MAX_HEADERS', 'MAX_PARAMS',
    'MAX_HEADER_VALUE', 'MAX_HEADER_SECTION', 'MAX_HEADER_LINES', 'MAX_HTML_TEXT', 'MAX_SEARCH_TEXT', 'CHUNK',
]

log = logging.getLogger(__name__)

#: Parts of a message followed (each entity counts: a multipart and its
#: children); the rest are counted, not shown.
MAX_PARTS = 500
#: Levels of multipart nesting followed; a deeper multipart is one part.
MAX_DEPTH = 32
#: Header fields read per part.
MAX_HEADERS = 1000
#: Parameters read per Content-Type or Content-Disposition value.
MAX_PARAMS = 64
#: Characters of a header value any parser sees (the rest is cut, and
#: shown as "N more bytes not shown").
MAX_HEADER_VALUE = 8 * 1024
#: Bytes of a header section read (a longer one is cut there).
MAX_HEADER_SECTION = 256 * 1024
#: Header lines read in all the parts of one message together.
MAX_HEADER_LINES = 20000
#: Characters of HTML turned into text (for a message without a text
#: part, its snippet and search text).
MAX_HTML_TEXT = 1024 * 1024
#: Characters of a message's text kept (lower-cased) for search.
MAX_SEARCH_TEXT = 64 * 1024
#: Bytes decoded at a time.
CHUNK = 256 * 1024

_SNIPPET = 250

# Types in the annotations below: raw headers are a Dict[str, List[str]]
# (lower-cased name -> its values, in order); Mailpit's Address object is
# a Dict[str, str] ({"Name": ..., "Address": ...}).


class RawMessage(Protocol):
    """What this module reads of a stored message
    (:class:`smtpd_compat.web.store.StoredMessage` is one)."""

    id: str
    mailfrom: str
    rcpttos: List[str]
    received: float

    @property
    def raw(self) -> bytes: ...

    @property
    def size(self) -> int: ...


def _count(n: int) -> str:
    return '{:,}'.format(n)


def _not_shown(n: int, what: str) -> str:
    return '%s more %s not shown' % (_count(n), what)


# ---------------------------------------------------------------------------
# Header sections

# RFC 5322 section 3.6.8: a field name is printable ASCII but the colon
# (white space before the colon is tolerated, as the stdlib does).
_FIELD_NAME = re.compile(rb'([\x21-\x39\x3b-\x7e]+)[ \t]*:')


_BLANK_LINE = re.compile(rb'\n\r?\n')


def _section_end(raw: bytes, start: int, end: int) -> Tuple[int, int]:
    """(where the header section at ``start`` ends, where the body
    starts): the first empty line (RFC 5322 section 2.1), else ``end``."""
    if raw.startswith(b'\n', start, end):
        return start, start + 1
    if raw.startswith(b'\r\n', start, end):
        return start, start + 2
    m = _BLANK_LINE.search(raw, start, end)
    if m is None:
        return end, end
    return m.start() + 1, m.end()


class _Budget:
    """What one parse may still read, and what it left out."""

    __slots__ = ('left', 'lines', 'skipped', 'too_deep', 'parts')

    def __init__(self) -> None:
        self.left = MAX_PARTS
        #: Header lines all the parts together may still have read.
        self.lines = MAX_HEADER_LINES
        self.skipped = 0
        self.too_deep = 0
        #: Every part made.
        self.parts: List[Part] = []


class _Fields:
    """The header fields of one part, read with the caps: (name, value
    unfolded and cut, bytes cut) in order; and what the caps left out."""

    __slots__ = ('items', 'index', 'notes')

    def __init__(self) -> None:
        self.items: List[Tuple[str, str, int]] = []
        self.index: Dict[str, List[int]] = {}
        self.notes: List[str] = []

    def add(self, name: bytes, value: bytes, cut: int) -> None:
        text = name.decode('ascii', 'replace')
        self.index.setdefault(text.lower(), []).append(len(self.items))
        # 8-bit bytes in a header (RFC 6532 allows UTF-8 there).
        self.items.append((text, value.decode('utf-8', 'replace'), cut))

    def get(self, name: str) -> Optional[str]:
        found = self.index.get(name.lower())
        return self.items[found[0]][1] if found else None

    def get_all(self, name: str) -> List[str]:
        return [self.items[i][1] for i in self.index.get(name.lower(), ())]

    def shown(self, name: str) -> List[str]:
        """The values of ``name`` as shown: a cut value says so."""
        return [_shown(*self.items[i][1:]) for i in self.index.get(name.lower(), ())]


def _shown(value: str, cut: int) -> str:
    return value + (' [%s]' % _not_shown(cut, 'bytes') if cut else '')


def _read_fields(raw: bytes, start: int, end: int, budget: _Budget,
                 root: bool = False) -> Tuple[_Fields, int]:
    """The header fields of the entity at ``raw[start:end]`` and where its
    body starts.  Linear: lines are found with ``bytes.find``, a value is
    never copied past its cap, and at most :data:`MAX_HEADER_SECTION`
    bytes and the budget's lines of the section are looked at."""
    fields = _Fields()
    head_end, body = _section_end(raw, start, end)
    limit = min(head_end, start + MAX_HEADER_SECTION)
    pos = start
    name: Optional[bytes] = None
    value = bytearray()
    cut = 0
    dropped = 0

    def flush() -> None:
        if name is None:
            return
        if len(fields.items) < MAX_HEADERS:
            fields.add(name, bytes(value), cut)
            if cut:
                fields.notes.append('%s: %s' % (
                    name.decode('ascii', 'replace'), _not_shown(cut, 'bytes')))
        else:
            nonlocal dropped
            dropped += 1

    first = root
    while pos < limit:
        if budget.lines <= 0:
            break
        budget.lines -= 1
        nl = raw.find(b'\n', pos, limit)
        line_end = limit if nl < 0 else nl
        next_pos = line_end + 1
        if line_end > pos and raw[line_end - 1] == 0x0D:
            line_end -= 1
        if first and raw.startswith(b'From ', pos, line_end):
            # An mbox "From " line before the headers is not a header.
            first = False
            pos = next_pos
            continue
        first = False
        if raw[pos:pos + 1] in (b' ', b'\t'):
            if name is not None:
                # Unfolded (RFC 5322 section 2.2.3), the fold's white space
                # as one space, as the values are shown.
                vstart = pos + 1
                while vstart < line_end and raw[vstart] in (0x20, 0x09):
                    vstart += 1
                room = MAX_HEADER_VALUE - len(value) - 1
                length = line_end - vstart
                if room > 0:
                    value += b' ' + raw[vstart:vstart + min(room, length)]
                cut += max(0, length - max(room, 0))
            pos = next_pos
            continue
        m = _FIELD_NAME.match(raw, pos, min(line_end, pos + 1000))
        if m is None:
            # Not a header line: the body starts here (the stdlib's
            # MissingHeaderBodySeparatorDefect).
            flush()
            return fields, pos
        flush()
        name = m.group(1)
        vstart = m.end()
        while vstart < line_end and raw[vstart] in (0x20, 0x09):
            vstart += 1
        length = line_end - vstart
        value = bytearray(raw[vstart:vstart + min(length, MAX_HEADER_VALUE)])
        cut = max(0, length - MAX_HEADER_VALUE)
        pos = next_pos
    flush()
    if dropped:
        fields.notes.append(_not_shown(dropped, 'header fields'))
    if pos < head_end:
        fields.notes.append('header section cut: %s' % _not_shown(
            head_end - pos, 'bytes'))
    return fields, body


# ---------------------------------------------------------------------------
# Parameters (Content-Type, Content-Disposition)

# A quoted string (its closing quote may be missing), a run of other
# characters, or a separator: every character belongs to one token, and
# no token can backtrack.
_PARAM_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[^";]+|;')


def _split_params(value: str) -> Tuple[str, Dict[str, str], int]:
    """(the value before the first ';' lower-cased, parameter name ->
    value with RFC 2231 decoded, how many parameters past
    :data:`MAX_PARAMS` were not read)."""
    segments: List[str] = []
    current: List[str] = []
    dropped = 0
    for m in _PARAM_TOKEN.finditer(value):
        token = m.group()
        if token != ';':
            if len(segments) <= MAX_PARAMS:
                current.append(token)
            continue
        if len(segments) <= MAX_PARAMS:
            segments.append(''.join(current))
            current = []
        else:
            dropped += 1
    if len(segments) <= MAX_PARAMS:
        segments.append(''.join(current))
    main = segments[0].strip().lower() if segments else ''
    pairs: List[Tuple[str, str]] = [('', main)]
    for segment in segments[1:]:
        name, sep, text = segment.partition('=')
        name = name.strip().lower()
        if name and sep:
            pairs.append((name, text.strip()))
    params: Dict[str, str] = {}
    try:
        decoded: List[Tuple[str, Any]] = email.utils.decode_params(pairs)[1:]
    except Exception:
        decoded = pairs[1:]
    for name, found in decoded:
        if isinstance(found, tuple):
            # (charset, language, value): the value is still quoted.
            found = (found[0], found[1], email.utils.unquote(found[2]))
        try:
            collapsed = email.utils.collapse_rfc2231_value(found)
        except Exception:
            collapsed = str(found)
        params.setdefault(name.rstrip('*'), collapsed)
    return main, params, dropped


# ---------------------------------------------------------------------------
# Parts

# Codecs that are pure Python loops over their input, quadratic on some
# (punycode, idna): a part that names one is decoded as UTF-8.
_SLOW_CODECS = {'punycode', 'idna'}


def _text_codec(charset: Optional[str], default: Any = 'utf-8') -> Any:
    """The codec to decode text in ``charset`` with: ``default`` when
    none is named, or one that is not a text encoding we decode."""
    if not charset:
        return default
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        return default
    if not getattr(info, '_is_text_encoding', True) or info.name in _SLOW_CODECS:
        return default
    return info.name


_B64_DROP = bytes(c for c in range(256) if c not in (
    b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'))


class Part:
    """One entity of a message: its header fields and where its body is in
    the raw message (a range of it: nothing is copied until asked for).
    It answers the few questions of :class:`email.message.Message` the
    inbox asks (content type, charset, file name, disposition), from
    header values already cut to their cap."""

    __slots__ = ('raw', 'fields', 'head', 'start', 'end', 'children', 'default_type',
                 '_params', '_size', 'notes')

    def __init__(self, raw: bytes, fields: _Fields, start: int, end: int,
                 default_type: str = 'text/plain', head: int = 0) -> None:
        self.raw = raw
        self.fields = fields
        #: Where the entity (its header section) starts in ``raw``.
        self.head = head
        #: The body: ``raw[start:end]``, before transfer decoding.
        self.start = start
        self.end = end
        #: The parts of a multipart, in order (None for a leaf).
        self.children: Optional[List[Part]] = None
        self.default_type = default_type
        self._params: Dict[str, Tuple[str, Dict[str, str], int]] = {}
        self._size: Optional[int] = None
        self.notes = fields.notes

    # -- headers -----------------------------------------------------------

    def get(self, name: str) -> Optional[str]:
        """The first ``name`` header's value (unfolded, cut to its cap)."""
        return self.fields.get(name)

    def raw_items(self) -> List[Tuple[str, str]]:
        """Every header field as ``(name, value)``, in order; a value that
        was cut ends with "[N more bytes not shown]"."""
        return [(name, _shown(value, cut)) for name, value, cut in self.fields.items]

    def _header_params(self, header: str) -> Tuple[str, Dict[str, str], int]:
        key = header.lower()
        found = self._params.get(key)
        if found is None:
            value = self.get(header)
            found = _split_params(value) if value is not None else ('', {}, 0)
            if found[2]:
                self.notes.append('%s: %s' % (header, _not_shown(found[2], 'parameters')))
            self._params[key] = found
        return found

    def get_param(self, name: str, header: str = 'content-type') -> Optional[str]:
        """A parameter of a header (RFC 2231 decoded), or None."""
        return self._header_params(header)[1].get(name.lower())

    def get_content_type(self) -> str:
        """``maintype/subtype``, lower case: the default (text/plain, or
        message/rfc822 in a multipart/digest) when there is no
        Content-Type, text/plain when it is not of that form."""
        if self.get('Content-Type') is None:
            return self.default_type
        ctype = ''.join(self._header_params('Content-Type')[0].split())
        return ctype if ctype.count('/') == 1 else 'text/plain'


    def get_content_maintype(self) -> str:
        return self.get_content_type().partition('/')[0]

    def get_content_charset(self) -> Optional[str]:
        charset = self.get_param('charset')
        return charset.strip().lower() if charset else None

    def get_content_disposition(self) -> Optional[str]:
        return self._header_params('Content-Disposition')[0] or None

    def is_attachment(self) -> bool:
        return self.get_content_disposition() == 'attachment'

    def get_filename(self) -> Optional[str]:
        """The file name (Content-Disposition ``filename``, else
        Content-Type ``name``), RFC 2231 and RFC 2047 decoded."""
        name = self.get_param('filename', 'content-disposition')
        if name is None:
            name = self.get_param('name')
        if name is None:
            return None
        return _decode_words(header_text(name)).strip()

    # -- the body -----------------------------------------------------------

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The body, transfer-decoded (base64, quoted-printable), a chunk
        of at most about ``size`` bytes at a time."""
        raw, start, end = self.raw, self.start, self.end
        cte = (self.get('Content-Transfer-Encoding') or '').strip().lower()
        if cte == 'base64':
            carry = b''
            for pos in range(start, end, size):
                data = carry + raw[pos:min(end, pos + size)].translate(None, _B64_DROP)
                usable = len(data) - len(data) % 4
                carry = data[usable:]
                if usable:
                    yield binascii.a2b_base64(data[:usable])
            if len(carry) > 1:
                yield binascii.a2b_base64(carry + b'=' * (4 - len(carry)))
        elif cte == 'quoted-printable':
            pos = start
            while pos < end:
                # Whole lines: a soft line break stays with its line.
                stop = raw.rfind(b'\n', pos, min(end, pos + size)) + 1
                if stop <= pos:
                    stop = min(end, pos + size)
                yield binascii.a2b_qp(raw[pos:stop])
                pos = stop
        else:
            for pos in range(start, end, size):
                yield raw[pos:min(end, pos + size)]

    def decoded_size(self) -> int:
        """The length of the transfer-decoded body (decoded once)."""
        if self._size is None:
            self._size = sum(len(chunk) for chunk in self.chunks())
        return self._size

    def text(self) -> str:
        """A text part's content as str, in its declared charset (UTF-8
        when none or an unknown one is declared); undecodable bytes
        become U+FFFD."""
        decoder = codecs.getincrementaldecoder(_text_codec(
            self.get_content_charset()))('replace')
        pieces = [decoder.decode(chunk) for chunk in self.chunks()]
        pieces.append(decoder.decode(b'', True))
        return ''.join(pieces)


def _size_and_checksums(part: Part) -> Dict[str, Any]:
    """A leaf's decoded ``Size`` and Mailpit's ``Checksums``, in one pass
    over its chunks (never the whole content at once)."""
    md5, sha1, sha256 = hashlib.md5(), hashlib.sha1(), hashlib.sha256()
    size = 0
    for chunk in part.chunks():
        size += len(chunk)
        md5.update(chunk)
        sha1.update(chunk)
        sha256.update(chunk)
    part._size = size
    return {'Size': size, 'Checksums': {'MD5': md5.hexdigest(), 'SHA1': sha1.hexdigest(),
                                        'SHA256': sha256.hexdigest()}}


def part_bytes(part: Part) -> bytes:
    """A leaf part's decoded content (an attached message: its source)."""
    return b''.join(part.chunks())


# RFC 2046 section 5.1.1: a boundary is 1 to 70 characters.  (A longer
# one would make bytes.find quadratic on Python < 3.10.)
_MAX_BOUNDARY = 200


def _delimiters(raw: bytes, start: int, end: int,
                boundary: bytes) -> Iterator[Tuple[int, int, bool]]:
    """The delimiter lines of a multipart body (RFC 2046 section 5.1.1):
    ``(start of the line, start of the next line, is the close
    delimiter)``.  A delimiter is ``--boundary`` at the start of a line,
    ``--`` after it for the last one, then only white space."""
    marker = b'--' + boundary
    pos = start
    while True:
        at = raw.find(marker, pos, end)
        if at < 0:
            return
        after = at + len(marker)
        if at > start and raw[at - 1] != 0x0A:
            pos = after
            continue
        nl = raw.find(b'\n', after, end)
        line_end = end if nl < 0 else nl
        closing = raw.startswith(b'--', after, line_end)
        rest = after + 2 if closing else after
        if raw[rest:line_end].strip(b' \t\r'):
            pos = line_end      # a longer boundary that starts the same
            continue
        yield at, min(end, line_end + 1), closing
        if closing:
            return
        pos = line_end + 1


def _content_end(raw: bytes, start: int, at: int) -> int:
    # The line break before a delimiter belongs to the delimiter.
    if at > start and raw[at - 1] == 0x0A:
        at -= 1
        if at > start and raw[at - 1] == 0x0D:
            at -= 1
    return at


def _split(part: Part, budget: _Budget, depth: int) -> None:
    """Find the children of a multipart ``part`` (and theirs), within the
    budget."""
    boundary = part.get_param('boundary')
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        # No boundary (the stdlib's NoBoundaryInMultipartDefect), or one
        # far longer than RFC 2046 allows: one part.
        return
    if depth >= MAX_DEPTH:
        budget.too_deep += 1
        return
    raw = part.raw
    marker = boundary.encode('utf-8', 'replace')
    default = ('message/rfc822' if part.get_content_type() == 'multipart/digest'
               else 'text/plain')
    children: List[Part] = []
    previous: Optional[int] = None
    for at, next_line, closing in _delimiters(raw, part.start, part.end, marker):
        if previous is not None:
            if budget.left <= 0:
                # Count what is left at this level without reading it.
                closed = raw.find(b'\n--' + marker + b'--', at - 1, part.end) >= 0
                budget.skipped += (1 + raw.count(b'\n--' + marker, at, part.end)
                                   + (0 if closed else 1))
                previous = None
                break
            budget.left -= 1
            children.append(_entity(raw, previous, _content_end(raw, previous, at),
                                    default, budget, depth + 1))
        previous = next_line
        if closing:
            previous = None
            break
    if previous is not None and previous < part.end:
        # No close delimiter: the last part runs to the end.
        if budget.left > 0:
            budget.left -= 1
            children.append(_entity(raw, previous, part.end, default, budget,
                                    depth + 1))
        else:
            budget.skipped += 1
    if children:
        part.children = children


def _entity(raw: bytes, start: int, end: int, default_type: str,
            budget: _Budget, depth: int, root: bool = False) -> Part:
    fields, body = _read_fields(raw, start, end, budget, root)
    part = Part(raw, fields, body, end, default_type, start)
    budget.parts.append(part)
    if part.get_content_maintype() == 'multipart':
        _split(part, budget, depth)
    return part


def _leaves(root: Part) -> List[Tuple[str, Part]]:
    """Every leaf part with its PartID ('1', '2.1', ...: the position in
    the MIME tree, as IMAP numbers sections, RFC 3501 section 6.4.5).  An
    attached message is one leaf."""
    out: List[Tuple[str, Part]] = []
    stack: List[Tuple[str, Part]] = [('', root)]
    while stack:
        path, part = stack.pop()
        if part.children is None:
            out.append((path or '1', part))
            continue
        prefix = path + '.' if path else ''
        stack.extend(reversed([('%s%d' % (prefix, i), child)
                               for i, child in enumerate(part.children, 1)]))
    return out


def _body(part: Part, subtype: str) -> Optional[Part]:
    """The part a reader sees as the ``text/<subtype>`` body, as
    :meth:`email.message.EmailMessage.get_body` picks it for one
    preferred type: the first such part that is not an attachment,
    looking into every part of a multipart but only into the start part
    (or the first) of a multipart/related."""
    stack = [part]
    while stack:
        part = stack.pop()
        if part.is_attachment():
            continue
        maintype, _, sub = part.get_content_type().partition('/')
        if maintype == 'text':
            if sub == subtype:
                return part
            continue
        if maintype != 'multipart' or not part.children:
            continue
        children = part.children
        if sub == 'related':
            start = part.get_param('start')
            chosen = [c for c in children if start and c.get('Content-ID') == start]
            children = chosen[:1] or children[:1]
        stack.extend(reversed(children))
    return None


# ---------------------------------------------------------------------------
# Parsing

def _tree(raw: bytes, max_parse_bytes: int, budget: _Budget) -> Part:
    """The root entity of ``raw`` with its parts; past ``max_parse_bytes``
    the header section only (an empty body that starts where the real
    one does)."""
    if len(raw) > max_parse_bytes:
        fields, body = _read_fields(raw, 0, min(len(raw), max_parse_bytes), budget, True)
        part = Part(raw, fields, body, body)
        budget.parts.append(part)
        return part
    return _entity(raw, 0, len(raw), 'text/plain', budget, 0, True)


def tree(stored: RawMessage, max_parse_bytes: int) -> Part:
    """A message's MIME structure (its root :class:`Part`), with the caps
    of a parse, without the details :class:`Parsed` works out (the text,
    the HTML, checksums): what an API that shows the source's structure
    needs (MailHog's).  Never raises: an entity without headers or parts
    when the parser fails."""
    try:
        return _tree(stored.raw, max_parse_bytes, _Budget())
    except Exception:   # a bug here must not cost the answer
        log.debug('web inbox: cannot parse %s', stored.id, exc_info=True)
        return Part(b'', _Fields(), 0, 0)


class Parsed:
    """A parsed message (:attr:`msg`, its root :class:`Part`) and its
    details, computed at once.  Never raises: a message the parser cannot
    read gets the details known without it.  Holds the raw message (its
    parts are ranges of it)."""

    __slots__ = ('stored', 'msg', 'too_large', 'max_parse_bytes', 'details',
                 'cost', '__weakref__')

    def __init__(self, stored: RawMessage, max_parse_bytes: int) -> None:
        self.stored = stored
        self.max_parse_bytes = max_parse_bytes
        raw = stored.raw
        #: True when only the header section was parsed (the message is
        #: over ``max_parse_bytes``).
        self.too_large = len(raw) > max_parse_bytes
        budget = _Budget()
        try:
            self.msg = _tree(raw, max_parse_bytes, budget)
        except Exception:   # a bug here must not cost the message
            log.debug('web inbox: cannot parse %s', stored.id, exc_info=True)
            self.msg = Part(b'', _Fields(), 0, 0)
        try:
            details = _details(self, budget)
        except Exception:
            log.debug('web inbox: cannot summarise %s', stored.id, exc_info=True)
            details = _fallback_details(stored)
        #: Mailpit's Message fields (without ID and Read), plus, under the
        #: private key '_parts', PartID -> part for the part route.
        #: Shared: callers copy before changing it.
        self.details = details
        #: What keeping this costs, in bytes (the raw message not
        #: included: see :func:`cost_of`).
        self.cost = (cost_of(details['Text']) + cost_of(details['HTML'])
                     + cost_of(details['Attachments']) + cost_of(details['Inline'])
                     + sum(cost_of(p.fields.items) for p in budget.parts))


def cost_of(value: Any) -> int:
    """About how many bytes ``value`` (str, bytes, numbers, None, and
    dicts and lists of them) takes in memory."""
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        return size + sum(cost_of(k) + cost_of(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return size + sum(cost_of(v) for v in value)
    return size


# ---------------------------------------------------------------------------
# Header values

_LINE_BREAKS = re.compile(r'[\r\n]+[ \t]*')


def header_text(value: object) -> str:
    """A value as one line of text: line breaks never survive (they would
    be new header lines wherever the value is written)."""
    try:
        text = str(value)
    except Exception:
        text = ''
    return _LINE_BREAKS.sub(' ', text)


def _unfold(value: object) -> str:
    if not isinstance(value, str):
        value = str(value)
    # RFC 5322 section 2.2.3: unfolding removes the line breaks.
    return header_text(value).strip()


def _decode_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded words decoded, joined as they
    stand (``=?utf-8?q?na=C3=AFve?=.txt`` is ``naïve.txt``); as received
    when a word names a charset that is not a known text encoding."""
    if '=?' not in text:
        return text
    try:
        pieces = email.header.decode_header(text[:MAX_HEADER_VALUE])
    except Exception:
        return text
    out = []
    for data, charset in pieces:
        if isinstance(data, str):
            out.append(data)
            continue
        if charset is None:
            # The text between the words, as decode_header encoded it.
            out.append(data.decode('raw-unicode-escape', 'replace'))
            continue
        codec = _text_codec(charset.partition('*')[0], None)
        if codec is None:
            return text
        out.append(data.decode(codec, 'replace'))
    return header_text(''.join(out))


def decode_header(value: object) -> str:
    """A raw header value unfolded, on one line, its encoded words
    decoded."""
    return _decode_words(_unfold(value))


def _header_value(fields: _Fields, name: str) -> str:
    """The first ``name`` header as shown, decoded; '' when there is
    none."""
    values = fields.shown(name)
    return decode_header(values[0]) if values else ''


def _addresses(fields: _Fields, name: str) -> List[Dict[str, str]]:
    """Every address in every ``name`` header, as Mailpit's Address."""
    found: List[Dict[str, str]] = []
    for value in fields.get_all(name):
        value = _unfold(value)
        if _ENCODED_WORDS_ONLY.match(value):
            found.extend(_encoded_mailboxes(_decode_words(value)))
            continue
        try:
            pairs = email.utils.getaddresses([value])
        except Exception:   # RecursionError on nested comments included
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


def _date(fields: _Fields, received: float) -> str:
    value = decode_header(fields.get('Date') or '')
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
# HTML as text
#
# A tokenizer that reads each character once: text up to the next '<';
# then a comment (to '-->'), a tag (its name, then its attributes, quoted
# values skipped whole, to '>'), or a '<' that starts nothing (text).  A
# tag or comment that never ends takes the rest of the document, as a
# browser reads it; so no search starts again over what one already read.

_SKIP = frozenset(('head', 'template'))
_RAW_TEXT = frozenset(('script', 'style', 'title', 'textarea', 'xmp'))
_BLOCK = frozenset(('p', 'div', 'br', 'tr', 'li', 'h1', 'h2', 'h3', 'h4', 'h5',
                    'h6', 'table', 'ul', 'ol', 'blockquote', 'pre', 'hr'))
_TAG_NAME = re.compile(r'(/?)([A-Za-z][^\s/>]*)')
# The rest of a tag: other characters one at a time, quoted values whole.
_TAG_REST = re.compile(r'''(?:[^>"']|"[^"]*"|'[^']*')*>''')
_RAW_TEXT_END = {name: re.compile(r'</%s[\s/>]' % name, re.I) for name in _RAW_TEXT}
_SPACES = re.compile(r'[ \t\r\f\v]+')


def html_to_text(markup: str) -> str:
    """The text of an HTML document (for search, snippets and Text when a
    message has no plain part, as Mailpit does): no script, style or
    head, line breaks at blocks, entities decoded.  Linear in the first
    ``MAX_HTML_TEXT`` characters (1 MiB), which are all it reads."""
    markup = markup[:MAX_HTML_TEXT]
    n = len(markup)
    out: List[str] = []
    skipping = 0
    pos = 0
    while pos < n:
        lt = markup.find('<', pos)
        if lt < 0:
            lt = n
        if lt > pos and not skipping:
            out.append(html.unescape(markup[pos:lt]))
        if lt >= n:
            break
        if markup.startswith('<!--', lt):
            end = markup.find('-->', lt + 4)
            pos = n if end < 0 else end + 3
            continue
        if markup.startswith(('<!', '<?'), lt) or markup.startswith('</', lt) and (
                _TAG_NAME.match(markup, lt + 1) is None):
            # A declaration, processing instruction or bogus comment.
            end = markup.find('>', lt + 2)
            pos = n if end < 0 else end + 1
            continue
        m = _TAG_NAME.match(markup, lt + 1)
        if m is None:
            if not skipping:
                out.append('<')
            pos = lt + 1
            continue
        rest = _TAG_REST.match(markup, m.end())
        if rest is None:
            break       # a tag that never ends takes the rest
        pos = rest.end()
        closing, name = m.group(1), m.group(2).lower()
        if name == 'body':
            # An unclosed <head> ends here, as browsers parse it.
            skipping = 0
        elif name in _SKIP:
            skipping = max(0, skipping + (-1 if closing else 1))
        elif name in _BLOCK:
            out.append('\n')
        elif name in _RAW_TEXT and not closing:
            # Its content is text up to its end tag, never markup.
            end_tag = _RAW_TEXT_END[name].search(markup, pos)
            if end_tag is None:
                break
            if name in ('textarea', 'xmp') and not skipping:
                out.append(html.unescape(markup[pos:end_tag.start()]))
            gt = markup.find('>', end_tag.start())
            pos = n if gt < 0 else gt + 1
    lines = (_SPACES.sub(' ', line).strip() for line in ''.join(out).split('\n'))
    return '\n'.join(line for line in lines if line).strip()


# ---------------------------------------------------------------------------
# Details and summaries

def _details(parsed: Parsed, budget: _Budget) -> Dict[str, Any]:
    """Mailpit's Message object (without ID and Read) plus, under the
    private key '_parts', PartID -> part for the part route."""
    stored, msg = parsed.stored, parsed.msg
    notes: List[str] = []
    text_part = _body(msg, 'plain')
    html_part = _body(msg, 'html')
    text = text_part.text() if text_part is not None else ''
    markup = html_part.text() if html_part is not None else ''
    if parsed.too_large:
        text = ('(This message is %d bytes, over the %d bytes the inbox '
                'shows; download the raw source to read it.)'
                % (stored.size, parsed.max_parse_bytes))
    elif text_part is None and markup:
        text = html_to_text(markup)
        if len(markup) > MAX_HTML_TEXT:
            notes.append('text of the HTML: %s' % _not_shown(
                len(markup) - MAX_HTML_TEXT, 'characters'))
    inline: List[Dict[str, Any]] = []
    attachments: List[Dict[str, Any]] = []
    parts: Dict[str, Part] = {}
    leaves = _leaves(msg)
    for part_id, part in leaves:
        if part is text_part or part is html_part:
            continue
        content_id = decode_header(part.get('Content-ID') or '').strip('<> ')
        info = {
            'PartID': part_id,
            'FileName': header_text(part.get_filename() or ''),
            'ContentType': part.get_content_type(),
            'ContentID': content_id,
        }
        info.update(_size_and_checksums(part))
        parts[part_id] = part
        (inline if content_id and part.get_content_disposition() != 'attachment'
         else attachments).append(info)
    if budget.skipped:
        notes.append(_not_shown(budget.skipped, 'parts'))
    if budget.too_deep:
        notes.append('multiparts nested deeper than %d levels are shown as '
                     'one part' % MAX_DEPTH)
    for _, part in [('', msg)] + leaves:
        notes.extend(part.notes)
    fields = msg.fields
    to = _addresses(fields, 'To')
    cc = _addresses(fields, 'Cc')
    bcc = _addresses(fields, 'Bcc')
    # Envelope recipients named in no header were Bcc'd (Mailpit lists
    # them so too).
    named = {a['Address'].lower() for a in to + cc + bcc}
    for rcpt in stored.rcpttos:
        if rcpt.lower() not in named:
            named.add(rcpt.lower())
            bcc.append({'Name': '', 'Address': rcpt})
    senders = _addresses(fields, 'From')
    return_path = _addresses(fields, 'Return-Path')
    details: Dict[str, Any] = {
        'MessageID': _header_value(fields, 'Message-ID').strip('<> '),
        'From': senders[0] if senders else None,
        'To': to,
        'Cc': cc,
        'Bcc': bcc,
        'ReplyTo': _addresses(fields, 'Reply-To'),
        'ReturnPath': (return_path[0]['Address'] if return_path
                       else stored.mailfrom),
        'Subject': _header_value(fields, 'Subject'),
        'ListUnsubscribe': list_unsubscribe(
            _header_value(fields, 'List-Unsubscribe'),
            _header_value(fields, 'List-Unsubscribe-Post')),
        'Date': _date(fields, stored.received),
        'Tags': _auto_tags(fields, senders + to + cc + bcc),
        'Text': text,
        'HTML': markup,
        'Size': stored.size,
        'Inline': inline,
        'Attachments': attachments,
        '_parts': parts,
    }
    if notes:
        # Not one of Mailpit's fields: only where a cap bit.
        details['Notes'] = list(dict.fromkeys(notes))
    return details


def _fallback_details(stored: RawMessage) -> Dict[str, Any]:
    return {'MessageID': '', 'From': None, 'To': [], 'Cc': [],
            'Bcc': [{'Name': '', 'Address': r} for r in stored.rcpttos],
            'ReplyTo': [], 'ReturnPath': stored.mailfrom, 'Subject': '',
            'ListUnsubscribe': list_unsubscribe('', ''),
            'Date': iso_time(stored.received), 'Tags': [], 'Text': '',
            'HTML': '', 'Size': stored.size, 'Inline': [], 'Attachments': [],
            'Notes': ['the message could not be read'], '_parts': {}}


_WORD = re.compile(r'\S+')


def _snippet(text: str) -> str:
    """The first words of ``text``, single-spaced, at most 250 characters:
    reads no further than it needs."""
    words: List[str] = []
    length = 0
    for m in _WORD.finditer(text):
        words.append(m.group())
        length += len(words[-1]) + 1
        if length > _SNIPPET:
            break
    return ' '.join(words)[:_SNIPPET]


def summarise(stored: RawMessage, d: Dict[str, Any]) -> Dict[str, Any]:
    """The list fields of a message (Mailpit's MessageSummary without ID
    and Read) from its details, plus under the private key '_search' the
    :func:`clean` text of each field search looks at (of the message's
    text, the first :data:`MAX_SEARCH_TEXT` characters), and under
    '_inline' the number of inline parts (:mod:`smtpd_compat.web.search`)."""
    text = d['Text']

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
        'Snippet': _snippet(text),
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
    # the body text (its start: the whole text is not kept twice) and the
    # attachments' names.
    keys['text'] = clean(' '.join((
        keys['from'], d['Subject'], keys['to'], keys['cc'], keys['bcc'],
        keys['reply-to'], d['ReturnPath'], text[:MAX_SEARCH_TEXT],
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


def _auto_tags(fields: _Fields, addresses: List[Dict[str, str]]) -> List[str]:
    """The tags Mailpit gives a message on arrival: the names in its
    ``X-Tags`` header (comma-separated) and the plus-address parts of
    its sender and recipients (``user+tag1+tag2@example.org``).  Unique
    without regard to case (the first spelling kept), sorted."""
    names = _header_value(fields, 'X-Tags').split(',')
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

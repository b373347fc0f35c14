"""Mailpit's search syntax over message summaries.

A query is split at spaces outside double quotes (the quotes are dropped),
and every term must match (AND); a term that starts with ``-`` or ``!`` must
not.  What a term means, as Mailpit's documentation and search code say:

* ``from:``, ``to:``, ``cc:``, ``bcc:``, ``reply-to:``: a substring of that
  header's names and addresses; ``addressed:`` of any of the five;
* ``subject:``, ``message-id:``: a substring of that header;
* ``tag:NAME``: the message has that tag (the whole name, any case);
* ``is:read``, ``is:unread``, ``is:tagged``, ``has:attachment(s)``,
  ``has:inline(s)``;
* ``larger:SIZE``, ``smaller:SIZE``: bigger or smaller than a size in bytes,
  with an optional ``k``/``kb`` or ``m``/``mb`` unit (1024-based, decimals
  allowed);
* ``before:DATE``, ``after:DATE``: received at or before, at or after a
  date (:func:`parse_date`), read in the ``tz`` time zone when the date has
  no offset of its own; a date that cannot be read is ignored (Mailpit logs
  and ignores it);
* anything else, also a filter this module does not know (``foo:bar``,
  ``is:starred``, ``larger:lots``), is text: a substring of the message's
  search text (sender, subject, recipients, Return-Path, body text and
  attachment names), as Mailpit searches it.

Values are compared as Mailpit cleans them (:func:`clean`): lower case, line
breaks, tabs and ``<>",;()`` as spaces, runs of spaces as one; the value of
``subject:`` is only lower-cased.  A summary's searchable fields are its
``'_search'`` entry, made by :func:`smtpd_compat.web.mime.summarise`.
"""
import datetime
import email.utils
import logging
import operator
import re
import sys
from typing import Any, List, Mapping, NamedTuple, Optional, Protocol, Sequence, Union

from smtpd_compat.web.mime import clean

if sys.version_info >= (3, 9):
    import zoneinfo

__all__ = ['Term', 'Searchable', 'split_query', 'parse_query', 'parse_date',
           'parse_size', 'matches', 'clean']

log = logging.getLogger(__name__)


class Term(NamedTuple):
    """One term of a query: ``kind`` is a field name (``'text'``,
    ``'from'``, ..., ``'tag'``), a flag (``'is:read'``, ``'has:inline'``,
    ...), or a comparison (``'larger'``, ``'smaller'``: ``value`` in bytes;
    ``'before'``, ``'after'``: ``value`` in milliseconds since the epoch)."""

    negated: bool
    kind: str
    value: Union[str, int]


class Searchable(Protocol):
    """What a term looks at besides the summary
    (:class:`smtpd_compat.web.store.StoredMessage` is one)."""

    read: bool
    received: float

    @property
    def size(self) -> int: ...

    @property
    def tags(self) -> Sequence[str]: ...


# The fields a filter names, as Mailpit writes them, and the summary's
# '_search' keys each one looks in.
_FIELDS = {
    'to': ('to',), 'from': ('from',), 'cc': ('cc',), 'bcc': ('bcc',),
    'reply-to': ('reply-to',),
    'addressed': ('to', 'from', 'cc', 'bcc', 'reply-to'),
    'message-id': ('message-id',),
}
_FLAGS = {
    'is:read': 'is:read', 'is:unread': 'is:unread', 'is:tagged': 'is:tagged',
    'has:attachment': 'has:attachment', 'has:attachments': 'has:attachment',
    'has:inline': 'has:inline', 'has:inlines': 'has:inline',
}
_COMPARE = {
    ('larger', False): operator.gt, ('larger', True): operator.lt,
    ('smaller', False): operator.lt, ('smaller', True): operator.gt,
    ('before', False): operator.le, ('before', True): operator.ge,
    ('after', False): operator.ge, ('after', True): operator.le,
}
_SIZE = re.compile(r'^(\d+)(\.\d+)?\s?([a-z]{1,2})?$')
_UNITS = {'': 1, 'k': 1024, 'kb': 1024, 'm': 1024 * 1024, 'mb': 1024 * 1024}


def split_query(query: str) -> List[str]:
    """The words of a query: split at spaces outside double quotes, the
    quotes dropped (``to:"Ann Example"`` is one word, ``to:Ann Example``)."""
    words: List[str] = []
    current: List[str] = []
    quoted = False
    for char in query or '':
        if char == '"':
            quoted = not quoted
        elif char == ' ' and not quoted:
            words.append(''.join(current))
            current = []
            continue
        current.append(char)
    words.append(''.join(current))
    return [w for w in (w.replace('"', '').strip() for w in words) if w]


def parse_size(text: str) -> int:
    """``'2M'``, ``'1.5mb'``, ``'10k'``, ``'500'`` -> bytes; 0 when the text
    is not a size (then the term is searched as text, as in Mailpit)."""
    m = _SIZE.match(text.lower())
    if m is None or (m.group(3) or '') not in _UNITS:
        return 0
    return int(float(m.group(1) + (m.group(2) or '')) * _UNITS[m.group(3) or ''])


_MONTHS = {name: i for i, name in enumerate(
    ('JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT',
     'NOV', 'DEC'), 1)}
_TIME = r'(?:[T ]+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?'
_OFFSET = r'\s*(Z|UTC|GMT|[+-]\d{2}:?\d{2})?'
_DATE_FORMS = [
    # 2024/04/01, 2024-04-01 13:45, 2024.04.01T13:45:05Z
    (re.compile(r'^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})' + _TIME + _OFFSET + '$'),
     ('y', 'm', 'd')),
    # 04/01/2024 (US order, as Mailpit reads it), 4-1-2024 13:45
    (re.compile(r'^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})' + _TIME + _OFFSET + '$'),
     ('m', 'd', 'y')),
    # 1 APRIL 2024, 01-APR-2024
    (re.compile(r'^(\d{1,2})[- ]([A-Z]{3})[A-Z]*\.?[- ,]*(\d{4})' + _TIME + _OFFSET + '$'),
     ('d', 'b', 'y')),
    # APRIL 1, 2024; APR 1 2024
    (re.compile(r'^([A-Z]{3})[A-Z]*\.? (\d{1,2})(?:ST|ND|RD|TH)?,? (\d{4})' + _TIME + _OFFSET + '$'),
     ('b', 'd', 'y')),
]


def _zone(tz: str) -> Optional[datetime.tzinfo]:
    """The time zone named by Mailpit's ``tz`` parameter (an IANA name such
    as ``Pacific/Auckland``); None for the server's local time."""
    if not tz:
        return None
    if tz.upper() in ('UTC', 'GMT', 'Z'):
        return datetime.timezone.utc
    if sys.version_info >= (3, 9):
        try:
            return zoneinfo.ZoneInfo(tz)
        except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
            log.warning('web inbox: ignoring invalid time zone %r', tz)
            return None
    log.warning('web inbox: ignoring time zone %r (Python 3.8 has no zoneinfo)', tz)
    return None


def _offset(text: Optional[str]) -> Optional[datetime.tzinfo]:
    if not text:
        return None
    if text in ('Z', 'UTC', 'GMT'):
        return datetime.timezone.utc
    digits = text[1:].replace(':', '')
    minutes = int(digits[:2]) * 60 + int(digits[2:])
    return datetime.timezone(datetime.timedelta(
        minutes=-minutes if text[0] == '-' else minutes))


def parse_date(text: str, tz: str = '') -> Optional[float]:
    """A date, with an optional time and offset, as a POSIX time; None when
    it cannot be read.  Read as Mailpit reads ``before:``/``after:``: year
    first (``2024/04/01``, ``2024-04-01 13:45``, ISO 8601) or US order
    (``04/01/2024`` is 1 April), month names (``1 April 2024``, ``Apr 1,
    2024``), RFC 5322 dates, and Unix times in seconds or milliseconds.
    Without an offset the time is in the zone ``tz`` names (else the
    server's)."""
    text = text.strip().upper()
    if text.isdigit():
        if len(text) == 8:      # 20240401
            text = '%s-%s-%s' % (text[:4], text[4:6], text[6:])
        elif len(text) in (9, 10):
            return float(text)
        elif len(text) == 13:
            return int(text) / 1000
        else:
            return None
    for pattern, order in _DATE_FORMS:
        m = pattern.match(text)
        if m is None:
            continue
        parts = dict(zip(order, m.groups()[:3]))
        month = _MONTHS.get(parts['b'][:3]) if 'b' in parts else int(parts['m'])
        hour, minute, second, offset = m.groups()[3:]
        try:
            dt = datetime.datetime(int(parts['y']), month or 0, int(parts['d']),
                                   int(hour or 0), int(minute or 0), int(second or 0))
        except ValueError:
            return None
        zone = _offset(offset) or _zone(tz)
        if zone is not None:
            dt = dt.replace(tzinfo=zone)
        try:
            return dt.timestamp()
        except (OverflowError, OSError, ValueError):
            return None
    try:
        return email.utils.mktime_tz(email.utils.parsedate_tz(text))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def parse_query(query: str, tz: str = '') -> List[Term]:
    """The terms of a search query, in order (``tz``: the zone of dates
    without an offset, Mailpit's ``tz`` parameter)."""
    terms: List[Term] = []
    for word in split_query(query):
        if not clean(word):
            continue
        negated = len(word) > 1 and word[0] in '-!'
        if negated:
            word = word[1:]
        lower = word.lower()
        key, sep, rest = lower.partition(':')
        term: Optional[Term] = None
        if sep and key in _FIELDS:
            value = clean(word[len(key) + 1:])
            if not value:
                continue
            term = Term(negated, key, value)
        elif sep and key == 'subject':
            if not rest:
                continue
            term = Term(negated, 'subject', rest)
        elif sep and key == 'tag':
            value = clean(word[4:])
            if not value:
                continue
            term = Term(negated, 'tag', value)
        elif lower in _FLAGS:
            term = Term(negated, _FLAGS[lower], '')
        elif sep and key in ('before', 'after'):
            value = clean(word[len(key) + 1:])
            if not value:
                continue
            when = parse_date(value, tz)
            if when is None:
                log.warning('web inbox: ignoring invalid %s: date %r', key, value)
                continue
            term = Term(negated, key, int(when * 1000))
        elif sep and key in ('larger', 'smaller') and parse_size(clean(rest)) > 0:
            term = Term(negated, key, parse_size(clean(rest)))
        if term is None:
            term = Term(negated, 'text', clean(lower))
        terms.append(term)
    return terms


def matches(summary: Mapping[str, Any], message: Searchable,
            terms: Sequence[Term]) -> bool:
    """Does the message with this summary match every term?"""
    keys = summary['_search']
    for negated, kind, value in terms:
        if kind == 'text':
            hit = value in keys['text']
        elif kind in _FIELDS:
            hit = any(value in keys[k] for k in _FIELDS[kind])
        elif kind == 'subject':
            hit = value in keys['subject']
        elif kind == 'tag':
            hit = any(value == clean(t) for t in message.tags)
        elif kind == 'is:read':
            hit = message.read
        elif kind == 'is:unread':
            hit = not message.read
        elif kind == 'is:tagged':
            hit = bool(message.tags)
        elif kind == 'has:attachment':
            hit = summary['Attachments'] > 0
        elif kind == 'has:inline':
            hit = summary['_inline'] > 0
        else:
            # Mailpit's comparisons; a negated one is the opposite
            # comparison, equality included or not as Mailpit has it
            # (-larger:10k is Size < 10k, -before:D is Created >= D).
            assert isinstance(value, int)
            mine = message.size if kind in ('larger', 'smaller') else int(
                message.received * 1000)
            if not _COMPARE[kind, negated](mine, value):
                return False
            continue
        if hit == negated:
            return False
    return True

"""Mailpit's search syntax over message summaries.

Terms are ANDed, case-insensitive substrings; ``"quoted phrases"`` keep
their spaces; ``field:value`` looks at one field (``from:``, ``to:``,
``subject:``, ...); ``is:read``, ``is:unread``, ``has:attachment``; a
leading ``-`` or ``!`` negates.  A summary's searchable text is the
``'_search'`` entry that :func:`smtpd_compat.web.mime.summarise` makes.
"""
import re
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['Term', 'parse_query', 'matches']

#: ``(negated, field or None, lower-cased value)``.
Term = Tuple[bool, Optional[str], str]

_QUERY_TOKEN = re.compile(
    r'(?P<neg>[-!])?(?:(?P<key>[A-Za-z-]+):)?(?:"(?P<quoted>[^"]*)"?|(?P<word>\S+))')
_FIELDS = ('from', 'to', 'cc', 'bcc', 'reply-to', 'subject', 'message-id',
           'is', 'has', 'tag', 'addressed')


def parse_query(query: str) -> List[Term]:
    """The terms of a search query, in order."""
    terms: List[Term] = []
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


def matches(summary: Dict[str, Any], read: bool, terms: List[Term]) -> bool:
    """Does a message with this summary and read status match every
    term?"""
    keys = summary['_search']
    for negated, field, value in terms:
        if field is None:
            hit = any(value in keys[k] for k in
                      ('from', 'to', 'cc', 'bcc', 'subject', 'filename', 'text'))
        elif field == 'is':
            hit = read if value == 'read' else (
                not read if value == 'unread' else False)
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

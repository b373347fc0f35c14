"""The inbox's store: the messages a server accepted, in memory, bounded.

The SMTP side only appends ``(raw bytes, envelope, time)``, under a lock
held for a few dictionary operations: no parsing happens there.  Readers
(the HTTP threads) take snapshots under the same lock, and pay for parsing
outside it: a message's summary is computed on first need and cached on the
message; a few whole parses are kept in a small LRU.  Deleting or dropping
a message drops what was cached for it.

Listeners (:meth:`Inbox.subscribe`) hear of every change: the live events
of :mod:`smtpd_compat.web.events` come from them, never from polling.
"""
import logging
import secrets
import threading
import time
from collections import OrderedDict
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence,
                    Union)

from smtpd_compat.web.mime import MAX_TAGS, Parsed, clean_tag, summarise
from smtpd_compat.web.search import matches, parse_query

__all__ = [
    'StoredMessage', 'Inbox', 'DEFAULT_MAX_MESSAGES', 'DEFAULT_MAX_BYTES',
    'DEFAULT_MAX_PARSE_BYTES', 'Listener',
]

# A listener (Inbox.subscribe): called with (kind, data) after each change.
Listener = Callable[[str, Any], None]

log = logging.getLogger(__name__)

#: The bounds of an :class:`Inbox` made without arguments: the newest 1,000
#: messages within 256 MiB; a message over 32 MiB (the stdlib's default
#: size limit) is shown by its headers only.
DEFAULT_MAX_MESSAGES = 1000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_PARSE_BYTES = 32 * 1024 * 1024

# Whole parses kept for the message view and part downloads.
_PARSE_CACHE = 4

_ID_ALPHABET = ('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ'
                'abcdefghijklmnopqrstuvwxyz')


def _new_id() -> str:
    # 22 base-62 characters, the shape of Mailpit's IDs.
    return ''.join(secrets.choice(_ID_ALPHABET) for _ in range(22))


class StoredMessage:
    """One message in the inbox: the raw bytes and envelope as received.

    Its summary (the decoded fields the list and the search need) is
    computed by :meth:`Inbox.summary` on first use, in the reading thread,
    and cached here.
    """

    __slots__ = ('id', 'raw', 'mailfrom', 'rcpttos', 'peer', 'received',
                 'read', 'username', '_tags', '_summary')

    def __init__(self, raw: bytes, mailfrom: str, rcpttos: List[str],
                 peer: Any = None, received: Optional[float] = None,
                 username: str = '') -> None:
        self.id = _new_id()
        self.raw = raw
        self.mailfrom = mailfrom
        self.rcpttos = list(rcpttos)
        self.peer = peer
        self.received = time.time() if received is None else received
        self.read = False
        #: The SMTP (or send API) login that delivered it, as Mailpit's
        #: ``Username``; '' without one.
        self.username = username
        # The tags: None until set, or until the summary gave the ones the
        # message came with (X-Tags, plus addresses).
        self._tags: Optional[List[str]] = None
        self._summary: Optional[Dict[str, Any]] = None

    @property
    def tags(self) -> List[str]:
        """The message's tags, sorted without regard to case."""
        return list(self._tags or ())

    @property
    def size(self) -> int:
        """The raw message's length in bytes."""
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

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_parse_bytes: int = DEFAULT_MAX_PARSE_BYTES) -> None:
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
        self._parsed: 'OrderedDict[str, Parsed]' = OrderedDict()
        self.version = 0
        self.started = time.time()
        #: Counters for /api/v1/info.
        self.accepted = 0
        self.accepted_bytes = 0
        self.deleted = 0
        self.ignored = 0
        self._listeners: List[Listener] = []

    # -- listeners -------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(kind, data)`` after every change, under the
        inbox's lock: it must return at once and not call the inbox.
        Kinds: ``'new'`` (the StoredMessage), ``'delete'`` (a list of IDs),
        ``'truncate'`` (None), ``'read'`` (a list of ``(ID, read)`` that
        changed), ``'tags'`` (a list of ``(ID, tags)``), ``'prune'`` (None:
        tag names changed)."""
        with self._lock:
            self._listeners = self._listeners + [listener]

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        with self._lock:
            self._listeners = [f for f in self._listeners if f is not listener]

    def _notify(self, kind: str, data: Any) -> None:
        # Under the lock.  A faulty listener must not fail the change.
        for listener in self._listeners:
            try:
                listener(kind, data)
            except Exception:
                log.exception('web inbox: a listener failed')

    # -- writing (any thread; the SMTP loop calls add) -----------------------

    def add(self, data: Union[bytes, str], mailfrom: str = '',
            rcpttos: Iterable[str] = (), peer: Any = None,
            username: Optional[str] = None) -> Optional[StoredMessage]:
        """Store a message; returns it, or None when it alone is over
        ``max_bytes``.  Only bookkeeping happens here: no parsing.
        ``username``: the login that sent it (Mailpit's ``Username``)."""
        if isinstance(data, str):
            # decode_data=True servers hand over text; keep what came in.
            data = data.encode('utf-8', 'surrogateescape')
        message = StoredMessage(bytes(data), mailfrom, list(rcpttos), peer,
                                username=username or '')
        return message if self.append(message) else None

    def append(self, message: StoredMessage) -> bool:
        """Store a message made elsewhere (its ID kept), newest; False when
        it alone is over ``max_bytes`` and so is not kept."""
        size = len(message.raw)
        with self._lock:
            self.accepted += 1
            self.accepted_bytes += size
            if size > self.max_bytes:
                self.ignored += 1
                log.warning('web inbox: a message of %d bytes is over the '
                            'inbox byte cap (%d) and is not shown',
                            size, self.max_bytes)
                return False
            self._messages[message.id] = message
            self._bytes += size
            dropped = []
            while (len(self._messages) > self.max_messages
                   or self._bytes > self.max_bytes):
                _, old = self._messages.popitem(last=False)
                self._bytes -= len(old.raw)
                self._parsed.pop(old.id, None)
                dropped.append(old.id)
            self.version += 1
            self._notify('new', message)
            if dropped:
                self._notify('delete', dropped)
        return True

    def delete(self, ids: Optional[Iterable[str]] = None) -> int:
        """Delete the messages with these IDs (all when None); returns how
        many were deleted.  Unknown IDs are ignored."""
        with self._lock:
            if ids is None:
                count = len(self._messages)
                self._messages.clear()
                self._parsed.clear()
                self._bytes = 0
                self._notify('truncate', None)
            else:
                gone = []
                for id in ids:
                    message = self._messages.pop(self._resolve(id), None)
                    if message is not None:
                        gone.append(message.id)
                        self._bytes -= len(message.raw)
                        self._parsed.pop(message.id, None)
                count = len(gone)
                if gone:
                    self._notify('delete', gone)
            self.deleted += count
            self.version += 1
        return count

    def clear(self) -> None:
        """Delete every message."""
        self.delete(None)

    def set_read(self, ids: Optional[Iterable[str]], read: bool = True) -> List[str]:
        """Mark messages read or unread (all when ``ids`` is None);
        returns the IDs of those whose status changed."""
        with self._lock:
            targets: Sequence[Optional[StoredMessage]] = (
                list(self._messages.values()) if ids is None else
                [self._messages.get(self._resolve(i)) for i in ids])
            changed = []
            for message in targets:
                if message is not None and message.read != bool(read):
                    message.read = bool(read)
                    changed.append(message.id)
            self.version += 1
            if changed:
                self._notify('read', [(id, bool(read)) for id in changed])
        return changed

    # -- tags ----------------------------------------------------------------

    def _tag_names(self) -> Dict[str, str]:
        # Under the lock: lower-cased tag -> its spelling in the inbox.
        names: Dict[str, str] = {}
        for message in self._messages.values():
            for tag in message._tags or ():
                names.setdefault(tag.lower(), tag)
        return names

    def set_tags(self, ids: Iterable[str], tags: Iterable[str]) -> None:
        """Give these messages exactly these tags, as Mailpit does: names
        cleaned (other characters than letters, digits, spaces and
        ``-._@`` as spaces, at most 100), empty ones
        dropped, one per name without regard to case (at most 100), and a
        name the inbox already has keeps its spelling there.  Unknown IDs
        are ignored."""
        wanted: Dict[str, str] = {}
        for tag in tags:
            tag = clean_tag(tag)
            if tag and len(wanted) < MAX_TAGS:
                wanted.setdefault(tag.lower(), tag)
        with self._lock:
            known = self._tag_names()
            names = sorted((known.get(k, v) for k, v in wanted.items()), key=str.lower)
            changed = []
            for id in ids:
                message = self._messages.get(self._resolve(id))
                if message is not None:
                    message._tags = list(names)
                    changed.append((message.id, list(names)))
            self.version += 1
            if changed:
                self._notify('tags', changed)

    def tags(self) -> List[str]:
        """Every tag in use, sorted without regard to case."""
        return sorted(self.tag_counts(), key=str.lower)

    def tag_counts(self) -> Dict[str, int]:
        """Each tag in use -> how many messages have it."""
        for message in self.newest_first():
            if message._tags is None:
                self.summary(message)      # the tags it came with
        counts: Dict[str, int] = {}
        with self._lock:
            names = self._tag_names()
            for message in self._messages.values():
                for tag in message._tags or ():
                    name = names[tag.lower()]
                    counts[name] = counts.get(name, 0) + 1
        return counts

    def rename_tag(self, old: str, new: str) -> None:
        """Rename a tag on every message that has it (``old`` matched
        without regard to case); ValueError when there is no such tag, the
        new name is empty once cleaned, or another tag has it."""
        self.tag_counts()
        name = clean_tag(new)
        with self._lock:
            names = self._tag_names()
            if old.lower() not in names:
                raise ValueError('tag not found: %s' % old)
            if not name:
                raise ValueError('invalid tag name: %s' % new)
            if name.lower() != old.lower() and name.lower() in names:
                raise ValueError('tag already exists: %s' % name)
            if name == names[old.lower()]:
                return
            self._retag(lambda tag: name if tag.lower() == old.lower() else tag)

    def delete_tag(self, name: str) -> None:
        """Take a tag off every message (``name`` matched without regard
        to case); ValueError when there is no such tag."""
        self.tag_counts()
        with self._lock:
            if name.lower() not in self._tag_names():
                raise ValueError('tag not found: %s' % name)
            self._retag(lambda tag: '' if tag.lower() == name.lower() else tag)

    def _retag(self, change: Callable[[str], str]) -> None:
        # Under the lock: every message's tags through ``change`` ('' drops).
        for message in self._messages.values():
            if message._tags:
                message._tags = sorted(
                    (t for t in map(change, message._tags) if t), key=str.lower)
        self.version += 1
        self._notify('prune', None)

    # -- reading -------------------------------------------------------------

    def _resolve(self, id: str) -> str:
        # Under the lock.  'latest' is Mailpit's name for the newest.
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

    def search(self, query: str, tz: str = '') -> List[StoredMessage]:
        """The messages matching a Mailpit search, newest first (see
        :mod:`smtpd_compat.web.search`; ``tz``: the time zone of dates
        without an offset)."""
        terms = parse_query(query, tz)
        return [m for m in self.newest_first()
                if matches(self.summary(m), m, terms)]

    def summary(self, message: StoredMessage) -> Dict[str, Any]:
        """The decoded list fields of ``message`` (Mailpit's MessageSummary
        without ID and Read) plus private search keys, computed once.  Two
        threads may compute it at once; both get the same result, and the
        assignment is atomic."""
        summary = message._summary
        if summary is None:
            details = self.parsed(message).details
            summary = message._summary = summarise(message, details)
            with self._lock:
                if message._tags is None:
                    # The tags it came with (X-Tags, plus addresses).
                    message._tags = list(summary['Tags'])
        return summary

    def parsed(self, message: StoredMessage) -> Parsed:
        """The parsed message (headers only past ``max_parse_bytes``) and
        its details, from a small cache of recent parses."""
        with self._lock:
            parsed = self._parsed.get(message.id)
            if parsed is not None:
                self._parsed.move_to_end(message.id)
                return parsed
        parsed = Parsed(message, self.max_parse_bytes)
        with self._lock:
            if message.id in self._messages:
                self._parsed[message.id] = parsed
                while len(self._parsed) > _PARSE_CACHE:
                    self._parsed.popitem(last=False)
        return parsed

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def __iter__(self) -> Iterator[StoredMessage]:
        """The messages, oldest first (a snapshot)."""
        with self._lock:
            return iter(list(self._messages.values()))

    def __repr__(self) -> str:
        stats = self.stats()
        return '<Inbox %d messages, %d bytes>' % (stats['total'], stats['bytes'])

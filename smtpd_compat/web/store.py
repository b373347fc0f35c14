"""The inbox's store: the messages a server accepted, bounded, in memory
and (optionally) in an SQLite file.

Who does what:

* The SMTP loop only calls :meth:`Inbox.add` (or, for a capturing
  server, :meth:`Inbox.append`): a few dictionary operations under a
  lock, and a message queued for the inbox's one background thread.  No
  parsing, no database work, no waiting.
* The background thread (started when there is work, gone when there is
  none for a while) does, in this order of priority: the database writes,
  in the order of the changes (one transaction for all that are queued);
  then the work a message costs, once: it parses it, caches its summary
  (what the list, the live events and the search read) on the message,
  and keeps the parse in a small cache.  So listing reads what is cached.
  (Without ingest, a store for tests, this happens when first asked.)
* Readers (the HTTP workers) read snapshots taken under the lock.
  Whatever is computed on demand (a message not ingested yet, a parse
  that left the cache) is computed once however many ask at the same time
  (single flight), and shared while anyone uses it.

The budget (``max_bytes``) counts everything the inbox keeps: each raw
message, its cached summary and search text, and the cached parses
(their text, HTML and headers); a message's summary is estimated with
:func:`~smtpd_compat.web.mime.cost_of`.  Over it, cached parses go first,
then the oldest messages.

Listeners (:meth:`Inbox.subscribe`) hear of every change: the live events
of :mod:`smtpd_compat.web.events` come from them, never from polling.

It is also the store of the test helpers' captured mail
(:class:`smtpd_compat.controller.Mailbox` is an Inbox without bounds and
without ingest): a sequence, oldest first, with :meth:`Inbox.wait_for`,
indexing and list equality, so that a test reads the same store the page
shows.
"""
from __future__ import annotations

import itertools
import logging
import operator
import secrets
import threading
import time
import weakref
from collections import OrderedDict, deque
from typing import (
    TYPE_CHECKING, Any, Callable, Deque, Dict, Generic, Iterable, Iterator, List, Optional,
    Sequence, Tuple, Union, cast, overload)

from smtpd_compat.web.db import Database
from smtpd_compat.web.mime import MAX_TAGS, Parsed, Part, clean_tag, cost_of, summarise
from smtpd_compat.web.mime import tree as _tree
from smtpd_compat.web.search import matches, parse_query

if TYPE_CHECKING:
    # A type parameter with a default (PEP 696): a bare ``Inbox`` is an
    # ``Inbox[StoredMessage]``.
    from typing_extensions import TypeVar
else:
    from typing import TypeVar

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

# Whole parses kept for the message view and part downloads (within the
# budget).
_PARSE_CACHE = 4
# Seconds the background thread waits for more work before it ends.
_IDLE = 5.0

_ID_ALPHABET = ('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ'
                'abcdefghijklmnopqrstuvwxyz')
# A random byte -> a character of the alphabet (byte % 62: 8 characters
# a little likelier than the others, about 130 bits in 22 characters).
_ID_TABLE = bytes(ord(_ID_ALPHABET[i % 62]) for i in range(256))


def _new_id() -> str:
    # 22 base-62 characters, the shape of Mailpit's IDs.  One draw from the
    # system's generator and a translate: it runs on the SMTP loop for
    # every message, in well under a microsecond.
    return secrets.token_bytes(22).translate(_ID_TABLE).decode('ascii')


class StoredMessage:
    """One message in the inbox: the raw bytes and envelope as received.

    Its summary (the decoded fields the list and the search need) is
    computed once, off the SMTP loop, and cached here.
    """

    __slots__ = ('id', 'raw', 'mailfrom', 'rcpttos', 'peer', 'received',
                 'read', 'username', 'cost', '_tags', '_summary')

    def __init__(self, raw: bytes, mailfrom: str, rcpttos: List[str],
                 peer: Any = None, received: Optional[float] = None,
                 username: str = '', id: Optional[str] = None) -> None:
        self.id = id or _new_id()
        self.raw = raw
        self.mailfrom = mailfrom
        self.rcpttos = list(rcpttos)
        self.peer = peer
        self.received = time.time() if received is None else received
        self.read = False
        #: The SMTP (or send API) login that delivered it, as Mailpit's
        #: ``Username``; '' without one.
        self.username = username
        #: What the inbox counts for it: the raw message, then its summary.
        self.cost = len(raw)
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

    def state(self) -> Dict[str, Any]:
        """What is saved with the message besides its source and envelope,
        and may change after arrival: the read flag, the tags, the login."""
        return {'read': self.read, 'tags': self._tags, 'username': self.username}

    def restore(self, state: Dict[str, Any]) -> None:
        """Take back what :meth:`state` gave (from the database)."""
        self.read = bool(state.get('read', False))
        tags = state.get('tags')
        self._tags = [str(t) for t in tags] if isinstance(tags, list) else None
        self.username = str(state.get('username') or '')

    def __repr__(self) -> str:
        return '<StoredMessage %s from %r, %d bytes>' % (
            self.id, self.mailfrom, len(self.raw))


class _Flight:
    """One parse under way; others that want it wait for it."""

    __slots__ = ('done', 'result')

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Optional[Parsed] = None


class _Then:
    """A call the inbox's thread makes in its ingest queue: once the
    messages queued before it are ingested and, when given, ``message``
    has its summary.  A closed inbox makes the call alone, at once."""

    __slots__ = ('message', 'callback')

    def __init__(self, message: Optional[StoredMessage],
                 callback: Callable[[], object]) -> None:
        self.message = message
        self.callback = callback

    def __call__(self, inbox: Optional[Inbox[Any]]) -> None:
        try:
            if inbox is not None and self.message is not None:
                inbox.summary(self.message)
        finally:
            try:
                self.callback()
            except Exception:   # the caller's fault: the inbox's thread goes on
                log.exception('web inbox: an error in %r', self.callback)


class _Worker:
    """The inbox's background thread: database writes first, in order,
    each batch one transaction; then messages to ingest (and the calls
    queued among them).  Started when work is queued, ended after
    :data:`_IDLE` seconds without any."""

    def __init__(self, inbox: Inbox[Any]) -> None:
        self._inbox = weakref.ref(inbox)
        self._cond = threading.Condition(threading.Lock())
        self._writes: Deque[Union[Callable[[Database], None], threading.Event]] = deque()
        self._ingest: Deque[Union[StoredMessage, _Then]] = deque()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.name = 'smtpd_compat web inbox'

    def write(self, op: Union[Callable[[Database], None], threading.Event]) -> None:
        with self._cond:
            self._writes.append(op)
            self._wake()

    def ingest(self, message: Union[StoredMessage, _Then]) -> None:
        with self._cond:
            closed = self._closed
            if not closed:
                self._ingest.append(message)
                self._wake()
        if closed and isinstance(message, _Then):
            message(None)

    def _wake(self) -> None:
        # Under the condition's lock.  (Closed, a thread still comes for
        # writes queued late: it applies them, then ends.)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name,
                                            daemon=True)
            self._thread.start()
        else:
            self._cond.notify()

    def close(self, timeout: float) -> None:
        """Finish the queued writes (not the ingests), then end."""
        with self._cond:
            self._closed = True
            calls = [item for item in self._ingest if isinstance(item, _Then)]
            self._ingest.clear()
            thread = self._thread
            self._cond.notify()
        for call in calls:
            call(None)
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        db: Optional[Database] = None
        try:
            while True:
                with self._cond:
                    while not self._writes and not (self._ingest and not self._closed):
                        if self._closed or (not self._cond.wait(_IDLE) and not (
                                self._writes or self._ingest)):
                            self._thread = None
                            return
                    writes = list(self._writes)
                    self._writes.clear()
                    message = (self._ingest.popleft() if not writes and self._ingest
                               else None)
                inbox = self._inbox()
                if inbox is None:
                    return
                if writes:
                    db = self._apply(inbox, db, writes)
                elif isinstance(message, _Then):
                    message(inbox)
                elif message is not None:
                    inbox._ingest(message)
                del inbox
                # Let the SMTP loop have the interpreter between messages.
                time.sleep(0)
        finally:
            if db is not None:
                db.close()

    def _apply(self, inbox: Inbox[Any], db: Optional[Database],
               writes: List[Union[Callable[[Database], None], threading.Event]]
               ) -> Optional[Database]:
        ops = [op for op in writes if not isinstance(op, threading.Event)]
        if ops and inbox.database is not None:
            try:
                if db is None:
                    db = inbox.database.writer()
                db.begin()
                for op in ops:
                    op(db)
                db.commit()
            except Exception:
                log.exception('web inbox: cannot write to %s', inbox.database.path)
                if db is not None:
                    db.rollback()
        for item in writes:
            if isinstance(item, threading.Event):
                item.set()
        return db


# The kind of message an inbox is read as (see :class:`Inbox`).
if TYPE_CHECKING:
    _M = TypeVar('_M', bound=StoredMessage, default=StoredMessage)
else:
    # (A default only for the checker: typing's TypeVar takes one from
    # Python 3.13.)
    _M = TypeVar('_M', bound=StoredMessage)


class Inbox(Generic[_M]):
    """A thread-safe store of received messages, oldest first, bounded by
    default.

    Keeps the newest ``max_messages`` messages within ``max_bytes``, which
    counts everything kept for them (raw bytes, summaries, search text,
    cached parses); adding drops the oldest beyond either bound.  A single
    message whose raw size is over ``max_bytes`` is not kept (and counted
    in ``ignored``).  None for a bound: no bound (the test helpers'
    :class:`~smtpd_compat.controller.Mailbox`).  ``version`` changes on
    every add, delete and read change, so a page without the live
    events can poll it cheaply.

    ``ingest``: parse and summarise each message in the inbox's thread as
    it arrives, so that a page reads what is cached (the default); False
    computes that only when asked, and starts no thread for it (a store
    that tests read).

    ``path``: an SQLite file that keeps the messages too, so they survive
    a restart (:mod:`smtpd_compat.web.db`); the messages in it are read
    back here.  Call :meth:`close` when done with a persistent inbox.

    It is also a sequence for tests: ``len()``, iteration (a snapshot),
    indexing oldest first (``inbox[0]``, ``inbox[-1]``, slices), equality
    with a list of the same messages (``assert inbox == []``), and
    :meth:`wait_for`.  Reading a message that has not arrived raises
    IndexError saying so.  The type parameter is the kind of message it
    is read as: ``Inbox[CapturedMessage]`` for a capturing server's store
    (:class:`StoredMessage` unless said).
    """

    def __init__(self, max_messages: Optional[int] = DEFAULT_MAX_MESSAGES,
                 max_bytes: Optional[int] = DEFAULT_MAX_BYTES,
                 max_parse_bytes: int = DEFAULT_MAX_PARSE_BYTES,
                 path: Optional[str] = None, ingest: bool = True) -> None:
        for name, value, optional in (('max_messages', max_messages, True),
                                      ('max_bytes', max_bytes, True),
                                      ('max_parse_bytes', max_parse_bytes, False)):
            if value is None and optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError('%s must be a positive integer%s, not %r'
                                 % (name, ' or None' if optional else '', value))
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_parse_bytes = max_parse_bytes
        #: Whether messages are parsed and summarised as they arrive.
        self.ingest = ingest
        self._messages: OrderedDict[str, _M] = OrderedDict()
        self._bytes = 0
        # The lock of every change and read, and the condition wait_for()
        # waits on (notified by each message added).
        self._lock = threading.Condition(threading.Lock())
        self._parsed: OrderedDict[str, Parsed] = OrderedDict()
        self._parsed_bytes = 0
        # Parses someone still holds (a response being written), shared.
        self._live: weakref.WeakValueDictionary[str, Parsed] = (
            weakref.WeakValueDictionary())
        self._flights: Dict[str, _Flight] = {}
        self._worker = _Worker(self)
        self.version = 0
        self.started = time.time()
        #: Counters for /api/v1/info.
        self.accepted = 0
        self.accepted_bytes = 0
        self.deleted = 0
        self.ignored = 0
        self._listeners: List[Listener] = []
        #: The database that keeps the messages, or None (memory only).
        self.database: Optional[Database] = None
        if path is not None:
            self.database = Database(path)
            self._load()

    # -- listeners -------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(kind, data)`` after every change, under the
        inbox's lock: it must return at once and not call the inbox.
        Kinds: ``'new'`` (the StoredMessage), ``'delete'`` (a list of IDs:
        deleted, or dropped by the bounds), ``'truncate'`` (None),
        ``'read'`` (a list of ``(ID, read)`` that changed), ``'tags'`` (a
        list of ``(ID, tags)``), ``'prune'`` (None: tag names changed)."""
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

    def _save(self, messages: Sequence[StoredMessage]) -> None:
        """Write the state of these messages to the database (if any) and
        wait until it is there."""
        if self.database is None or not messages:
            return
        changed = [(m.id, m.state()) for m in messages]

        def save(db: Database) -> None:
            for id, state in changed:
                db.set_state(id, state)
        self._worker.write(save)
        self.flush()

    @property
    def durable(self) -> bool:
        """True when the messages are kept in a database too."""
        return self.database is not None

    def _load(self) -> None:
        # Once, from the thread making the inbox (before it serves).
        assert self.database is not None
        loaded = 0
        dropped: List[str] = []
        for row in self.database.rows():
            message = StoredMessage(row.raw, row.mailfrom, row.rcpttos, row.peer,
                                    row.received, id=row.id)
            # (The state first: a summary read back keeps the tags set.)
            message.restore(row.state)
            with self._lock:
                # (Read back as the web keeps it, whatever the inbox is
                # read as.)
                self._messages[message.id] = cast(_M, message)
                self._bytes += message.cost
                if row.summary is not None:
                    dropped += self._account(message, row.summary)
                dropped += self._trim()
            loaded += 1
        self.database.close()
        if dropped:
            # Over the bounds (smaller now than when they were written).
            self._worker.write(lambda db: db.delete(dropped))
        if self.ingest:
            pending = [m for m in self.newest_first() if m._summary is None]
            for message in reversed(pending):
                self._worker.ingest(message)
        log.info('web inbox: %d messages read back from %s', loaded, self.database.path)

    # -- writing (any thread; the SMTP loop calls add) -----------------------

    def add(self, data: Union[bytes, str], mailfrom: str = '',
            rcpttos: Iterable[str] = (), peer: Any = None,
            username: Optional[str] = None) -> Optional[StoredMessage]:
        """Store a message; returns it, or None when it alone is over
        ``max_bytes``.  Only bookkeeping happens here: the parsing and the
        database write are queued for the inbox's thread (see
        :meth:`flush`).  ``username``: the login that sent it (Mailpit's
        ``Username``)."""
        if isinstance(data, str):
            # decode_data=True servers hand over text; keep what came in.
            data = data.encode('utf-8', 'surrogateescape')
        message = StoredMessage(bytes(data), mailfrom, list(rcpttos), peer,
                                username=username or '')
        # (A StoredMessage, also in an inbox read as a subclass of it: one
        # the send API puts in a capturing server's store.)
        return message if self.append(cast(_M, message)) else None

    def append(self, message: _M) -> bool:
        """Store a message made elsewhere (its ID kept), newest, and wake
        every :meth:`wait_for`; False when it alone is over ``max_bytes``
        and so is not kept.  A few dictionary operations under the lock:
        the SMTP loop (a capturing server's ``process_message``) calls it,
        and the message is here when the client gets its reply.  A message
        (an ID) is kept once: ValueError for one that is here already."""
        size = len(message.raw)
        with self._lock:
            if message.id in self._messages:
                raise ValueError('message %s is in the inbox already' % message.id)
            self.accepted += 1
            self.accepted_bytes += size
            if self.max_bytes is not None and size > self.max_bytes:
                self.ignored += 1
                log.warning('web inbox: a message of %d bytes is over the '
                            'inbox byte cap (%d) and is not shown',
                            size, self.max_bytes)
                return False
            self._messages[message.id] = message
            self._bytes += message.cost
            dropped = self._trim()
            self.version += 1
            self._notify('new', message)
            if dropped:
                self._notify('delete', dropped)
            self._lock.notify_all()
        if self.database is not None:
            state = message.state()
            self._worker.write(lambda db: db.insert(
                message.id, message.received, message.mailfrom, message.rcpttos,
                message.peer, state, message.raw))
            if dropped:
                self._worker.write(lambda db: db.delete(dropped))
        if self.ingest and message._summary is None:
            self._worker.ingest(message)
        return True

    def flush(self, timeout: Optional[float] = None, ingested: bool = False) -> bool:
        """Wait until every change made so far is in the database (at
        once without one) and, with ``ingested``, every message added so
        far is parsed and summarised; False on timeout.  Not on the SMTP
        loop: it waits for the disk."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.database is not None:
            done = threading.Event()
            self._worker.write(done)
            if not done.wait(timeout):
                return False
        if ingested:
            done = threading.Event()
            self._worker.ingest(_Then(None, done.set))
            return done.wait(None if deadline is None
                             else max(0.0, deadline - time.monotonic()))
        return True

    def delete(self, ids: Optional[Iterable[str]] = None) -> int:
        """Delete the messages with these IDs (all when None); returns how
        many were deleted.  Unknown IDs are ignored.  With a database,
        returns once the change is written there (so not on the SMTP
        loop)."""
        with self._lock:
            if ids is None:
                gone = list(self._messages)
                self._messages.clear()
                self._parsed.clear()
                self._bytes = self._parsed_bytes = 0
                self._notify('truncate', None)
            else:
                gone = []
                for id in ids:
                    message = self._messages.get(self._resolve(id))
                    if message is not None:
                        self._drop(message.id)
                        gone.append(message.id)
                if gone:
                    self._notify('delete', gone)
            self.deleted += len(gone)
            self.version += 1
        if self.database is not None and gone:
            def save(db: Database) -> None:
                if ids is None:
                    db.clear()
                else:
                    db.delete(gone)
            self._worker.write(save)
            self.flush()
        return len(gone)

    def clear(self) -> None:
        """Delete every message."""
        self.delete(None)

    def set_read(self, ids: Optional[Iterable[str]], read: bool = True) -> List[str]:
        """Mark messages read or unread (all when ``ids`` is None);
        returns the IDs of those whose status changed.  With a database,
        returns once the change is written there."""
        with self._lock:
            targets: Sequence[Optional[StoredMessage]] = (
                list(self._messages.values()) if ids is None else
                [self._messages.get(self._resolve(i)) for i in ids])
            changed = []
            for message in targets:
                if message is not None and message.read != bool(read):
                    message.read = bool(read)
                    changed.append(message)
            self.version += 1
            if changed:
                self._notify('read', [(m.id, bool(read)) for m in changed])
        self._save(changed)
        return [m.id for m in changed]

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
                    changed.append(message)
            self.version += 1
            if changed:
                self._notify('tags', [(m.id, list(names)) for m in changed])
        self._save(changed)

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
            changed = self._retag(lambda tag: name if tag.lower() == old.lower() else tag)
        self._save(changed)

    def delete_tag(self, name: str) -> None:
        """Take a tag off every message (``name`` matched without regard
        to case); ValueError when there is no such tag."""
        self.tag_counts()
        with self._lock:
            if name.lower() not in self._tag_names():
                raise ValueError('tag not found: %s' % name)
            changed = self._retag(lambda tag: '' if tag.lower() == name.lower() else tag)
        self._save(changed)

    def _retag(self, change: Callable[[str], str]) -> List[StoredMessage]:
        # Under the lock: every message's tags through ``change`` ('' drops);
        # returns the messages whose tags changed.
        changed: List[StoredMessage] = []
        for message in self._messages.values():
            if message._tags:
                tags = sorted((t for t in map(change, message._tags) if t), key=str.lower)
                if tags != message._tags:
                    message._tags = tags
                    changed.append(message)
        self.version += 1
        self._notify('prune', None)
        return changed

    def close(self, timeout: float = 30.0) -> None:
        """Finish writing to the database (if any) and stop the inbox's
        thread.  The messages stay readable."""
        self._worker.close(timeout)

    # -- the budget (under the lock) -----------------------------------------

    def _drop(self, id: str) -> None:
        message = self._messages.pop(id)
        self._bytes -= message.cost
        self._uncache(id)

    def _uncache(self, id: str) -> None:
        parsed = self._parsed.pop(id, None)
        if parsed is not None:
            self._parsed_bytes -= parsed.cost

    def _trim(self) -> List[str]:
        """Drop what is over the bounds: cached parses first, then the
        oldest messages (never the newest); returns the IDs dropped."""
        dropped: List[str] = []
        max_messages, max_bytes = self.max_messages, self.max_bytes
        while max_messages is not None and len(self._messages) > max_messages:
            dropped.append(next(iter(self._messages)))
            self._drop(dropped[-1])
        if max_bytes is None:
            return dropped
        while self._bytes + self._parsed_bytes > max_bytes:
            if self._parsed:
                self._uncache(next(iter(self._parsed)))
            elif len(self._messages) > 1:
                dropped.append(next(iter(self._messages)))
                self._drop(dropped[-1])
            else:
                break
        return dropped

    def _account(self, message: StoredMessage, summary: Dict[str, Any]) -> List[str]:
        """Cache a summary computed for ``message`` (once) and count it;
        returns the IDs the budget then dropped."""
        if message._summary is not None:
            return []
        message._summary = summary
        if message._tags is None:
            # The tags it came with (X-Tags, plus addresses).
            message._tags = list(summary['Tags'])
        if message.id not in self._messages:
            return []
        extra = cost_of(summary)
        message.cost += extra
        self._bytes += extra
        return self._trim()

    def _cache(self, message: StoredMessage, parsed: Parsed) -> None:
        """Keep a parse in the small cache, if it fits the budget."""
        if (message.id not in self._messages or message.id in self._parsed
                or (self.max_bytes is not None
                    and parsed.cost > self.max_bytes - self._bytes)):
            return
        self._parsed[message.id] = parsed
        self._parsed_bytes += parsed.cost
        while len(self._parsed) > _PARSE_CACHE:
            self._uncache(next(iter(self._parsed)))
        self._trim()

    # -- reading -------------------------------------------------------------

    def _resolve(self, id: str) -> str:
        # Under the lock.  'latest' is Mailpit's name for the newest.
        if id == 'latest' and self._messages:
            return next(reversed(self._messages))
        return id

    def get(self, id: str) -> Optional[_M]:
        """The message with this ID (or the newest for ``'latest'``)."""
        with self._lock:
            return self._messages.get(self._resolve(id))

    def newest_first(self) -> List[_M]:
        """A snapshot of every message, newest first."""
        with self._lock:
            return list(reversed(self._messages.values()))

    def stats(self) -> Dict[str, int]:
        """total, unread, bytes (all the inbox keeps, as its budget counts
        it) and version, read together."""
        with self._lock:
            return {
                'total': len(self._messages),
                'unread': sum(1 for m in self._messages.values() if not m.read),
                'bytes': self._bytes + self._parsed_bytes,
                'version': self.version,
            }

    def search(self, query: str, tz: str = '') -> List[_M]:
        """The messages matching a Mailpit search, newest first (see
        :mod:`smtpd_compat.web.search`; ``tz``: the time zone of dates
        without an offset)."""
        terms = parse_query(query, tz)
        return [m for m in self.newest_first()
                if matches(self.summary(m), m, terms)]

    def summary(self, message: StoredMessage) -> Dict[str, Any]:
        """The decoded list fields of ``message`` (Mailpit's MessageSummary
        without ID and Read) plus private search keys: computed once (at
        ingest, or here if asked first) and cached on the message."""
        summary = message._summary
        if summary is None:
            summary = summarise(message, self.parsed(message).details)
            with self._lock:
                dropped = self._account(message, summary)
                summary = message._summary or summary
                if dropped:
                    self._notify('delete', dropped)
            if dropped and self.database is not None:
                self._worker.write(lambda db: db.delete(dropped))
            if self.database is not None:
                self._worker.write(lambda db: db.set_summary(message.id, summary))
        return summary

    def parsed(self, message: StoredMessage) -> Parsed:
        """The parsed message (headers only past ``max_parse_bytes``) and
        its details: from the cache, or shared with whoever parses or
        holds it now, or parsed here (once, however many ask)."""
        with self._lock:
            parsed = self._parsed.get(message.id)
            if parsed is not None:
                self._parsed.move_to_end(message.id)
                return parsed
            parsed = self._live.get(message.id)
            if parsed is not None:
                return parsed
            flight = self._flights.get(message.id)
            owner = flight is None
            if flight is None:
                flight = self._flights[message.id] = _Flight()
        if not owner:
            flight.done.wait()
            if flight.result is not None:
                return flight.result
            return self.parsed(message)
        try:
            parsed = flight.result = Parsed(message, self.max_parse_bytes)
            with self._lock:
                self._live[message.id] = parsed
                self._cache(message, parsed)
        finally:
            with self._lock:
                del self._flights[message.id]
            flight.done.set()
        return parsed

    def tree(self, message: StoredMessage) -> Part:
        """The MIME structure of ``message`` (its root part): the parse's
        that is cached or being used, else parsed here, without what
        :meth:`parsed` works out besides (the text, the HTML, the
        checksums): cheaper, and not cached."""
        with self._lock:
            parsed = self._parsed.get(message.id) or self._live.get(message.id)
        if parsed is not None:
            return parsed.msg
        return _tree(message, self.max_parse_bytes)

    def when_summarised(self, message: StoredMessage, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once ``message`` has its summary: at once,
        here, when it has; else from the inbox's thread, which makes it
        (as at ingest; also for a message deleted meanwhile).  For a
        thread that must not parse: the one that serves the page's
        sockets.  A closed inbox calls back without a summary."""
        if message._summary is not None:
            callback()
        else:
            self._worker.ingest(_Then(message, callback))

    def _ingest(self, message: StoredMessage) -> None:
        # The background thread: what a message costs, paid once.
        if message._summary is None and self.get(message.id) is message:
            self.summary(message)

    # -- a sequence, for tests ------------------------------------------------

    def wait_for(self, n: int = 1, timeout: float = 5.0) -> List[_M]:
        """Block until at least ``n`` messages are here; return them all,
        oldest first.

        Raises :class:`TimeoutError` (naming how many did arrive) after
        ``timeout`` seconds.  Not needed after a synchronous send such as
        ``smtplib.SMTP.sendmail``: a capturing server records a message
        before it answers the end of DATA, so it is already here when
        sendmail returns.
        """
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= n, timeout):
                raise TimeoutError(
                    'expected %d message(s) within %s s, got %d'
                    % (n, timeout, len(self._messages)))
            return list(self._messages.values())

    @overload
    def __getitem__(self, index: int) -> _M: ...

    @overload
    def __getitem__(self, index: slice) -> List[_M]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[_M, List[_M]]:
        """The messages oldest first: ``inbox[0]`` the oldest,
        ``inbox[-1]`` the newest, a slice a list.  IndexError, for a
        message that has not arrived, says so and how to wait for it."""
        with self._lock:
            values = self._messages.values()
            count = len(values)
            if isinstance(index, slice):
                return list(values)[index]
            # (TypeError for what a list does not take as an index either.)
            try:
                index = operator.index(index)
            except TypeError:
                raise TypeError('%s indices must be integers or slices, not %s'
                                % (type(self).__name__, type(index).__name__)) from None
            if 0 <= index < count:
                return next(itertools.islice(values, index, None))
            if -count <= index < 0:
                return next(itertools.islice(reversed(values), -index - 1, None))
        if count == 0:
            arrived = 'no message has arrived (the %s is empty)' % (
                type(self).__name__.lower())
        else:
            arrived = 'message %r has not arrived: %d so far' % (index, count)
        wanted = index + 1 if index >= 0 else -index
        raise IndexError(
            '%s; for mail sent from another thread or process, wait for it: '
            'wait_for(%d, timeout=5)' % (arrived, wanted))

    def __eq__(self, other: object) -> bool:
        """Equal to a list (or another inbox) of the same messages, in
        order."""
        if isinstance(other, Inbox):
            other = list(other)
        if not isinstance(other, list):
            return NotImplemented
        return list(self) == other

    # Its contents change: not hashable, as a list is not.
    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def __iter__(self) -> Iterator[_M]:
        """The messages, oldest first (a snapshot)."""
        with self._lock:
            return iter(list(self._messages.values()))

    def __repr__(self) -> str:
        # What a failed ``assert inbox == [...]`` shows: the messages (the
        # newest 20 of more).
        with self._lock:
            count = len(self._messages)
            shown = list(itertools.islice(reversed(self._messages.values()), 20))
        shown.reverse()
        more = '%d older, ' % (count - len(shown)) if count > len(shown) else ''
        return '%s([%s%s])' % (type(self).__name__, more,
                               ', '.join(map(repr, shown)))

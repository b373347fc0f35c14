"""The inbox's database: an SQLite file (standard library :mod:`sqlite3`,
WAL mode) that keeps what the inbox holds, so the mail survives a restart.

The inbox stays in memory, within its bounds; the database is written
through: each change (a message added, deleted, read) is one operation
the inbox's background thread applies in order, and the SMTP reply to a
message waits (off the loop thread) until its row is committed.  So a
message a client was told ``250`` about is in the file even if the
process is killed right after.  The file is read back once, when the
inbox is made.

``synchronous=NORMAL`` in WAL mode: a commit survives the process being
killed (the operating system has the pages), not a power cut (the last
transactions may then be lost; the file stays consistent).

Only the thread that made a :class:`Database` uses it; the inbox's writer
thread makes its own with :meth:`Database.writer`.
"""
import json
import logging
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional

try:
    import sqlite3
except ImportError:
    # A Python built without SQLite (pyenv without libsqlite3-dev, some
    # minimal images): only a database needs it, not the inbox in memory
    # nor the test helpers, which import the store.
    sqlite3 = None  # type: ignore[assignment]

__all__ = ['Database', 'Row', 'SCHEMA_VERSION']

log = logging.getLogger(__name__)

#: ``PRAGMA user_version`` of the file this module writes.
SCHEMA_VERSION = 1

_SCHEMA = '''
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    received REAL NOT NULL,
    mailfrom TEXT NOT NULL,
    rcpttos TEXT NOT NULL,
    peer TEXT,
    state TEXT NOT NULL,
    summary TEXT,
    raw BLOB NOT NULL
)
'''


class Row(NamedTuple):
    """One stored message as read back."""

    id: str
    received: float
    mailfrom: str
    rcpttos: List[str]
    peer: Any
    #: Per-message state (``{"read": ...}``) as
    #: :meth:`~smtpd_compat.web.store.StoredMessage.state` gave it.
    state: Dict[str, Any]
    #: The cached summary, or None when it was not computed yet.
    summary: Optional[Dict[str, Any]]
    raw: bytes


def _peer(value: Any) -> Optional[str]:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return json.dumps(str(value))


def _unpeer(text: Optional[str]) -> Any:
    if text is None:
        return None
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value


class Database:
    """An open inbox database at ``path`` (made when missing).  A file
    that is not an inbox database of this version raises ValueError; one
    that cannot be opened, or any on a Python without :mod:`sqlite3`,
    raises OSError."""

    def __init__(self, path: str) -> None:
        self.path = path
        if sqlite3 is None:
            raise OSError('cannot open the inbox database %s: this Python has no '
                          'sqlite3 module (it was built without SQLite)' % (path,))
        try:
            # A writer waits this long for another one (a backup tool).
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            version = self.conn.execute('PRAGMA user_version').fetchone()[0]
            tables = {name for (name,) in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError as e:
            raise OSError('cannot open the inbox database %s: %s' % (path, e)) from None
        except sqlite3.DatabaseError as e:
            raise ValueError('%s is not an inbox database: %s' % (path, e)) from None
        if tables - {'messages', 'sqlite_sequence'} or (tables and version != SCHEMA_VERSION):
            self.conn.close()
            raise ValueError('%s is not an inbox database of this version '
                             '(user_version %d, tables %s)'
                             % (path, version, ', '.join(sorted(tables)) or 'none'))
        try:
            self.conn.execute('PRAGMA journal_mode=WAL')
            self.conn.execute('PRAGMA synchronous=NORMAL')
            self.conn.execute(_SCHEMA)
            self.conn.execute('PRAGMA user_version=%d' % SCHEMA_VERSION)
        except sqlite3.Error as e:
            self.conn.close()
            raise OSError('cannot use the inbox database %s: %s' % (path, e)) from None

    def writer(self) -> 'Database':
        """Another connection to the same file, for the thread that
        writes."""
        return Database(self.path)

    def rows(self) -> Iterator[Row]:
        """Every message, oldest first."""
        cursor = self.conn.execute(
            'SELECT id, received, mailfrom, rcpttos, peer, state, summary, raw '
            'FROM messages ORDER BY seq')
        for id, received, mailfrom, rcpttos, peer, state, summary, raw in cursor:
            try:
                yield Row(id, received, mailfrom, json.loads(rcpttos), _unpeer(peer),
                          json.loads(state), None if summary is None else json.loads(summary),
                          bytes(raw))
            except (TypeError, ValueError):
                log.warning('web inbox: skipping an unreadable row %r of %s', id, self.path)

    # -- writing (one transaction at a time: begin, operations, commit) --------

    def begin(self) -> None:
        self.conn.execute('BEGIN')

    def commit(self) -> None:
        self.conn.execute('COMMIT')

    def rollback(self) -> None:
        try:
            self.conn.execute('ROLLBACK')
        except sqlite3.Error:
            pass

    def insert(self, id: str, received: float, mailfrom: str, rcpttos: List[str],
               peer: Any, state: Dict[str, Any], raw: bytes) -> None:
        self.conn.execute(
            'INSERT OR REPLACE INTO messages (id, received, mailfrom, rcpttos, peer, '
            'state, raw) VALUES (?, ?, ?, ?, ?, ?, ?)',
            (id, received, mailfrom, json.dumps(rcpttos), _peer(peer),
             json.dumps(state), raw))

    def set_summary(self, id: str, summary: Dict[str, Any]) -> None:
        self.conn.execute('UPDATE messages SET summary = ? WHERE id = ?',
                          (json.dumps(summary), id))

    def set_state(self, id: str, state: Dict[str, Any]) -> None:
        self.conn.execute('UPDATE messages SET state = ? WHERE id = ?',
                          (json.dumps(state), id))

    def delete(self, ids: Iterable[str]) -> None:
        self.conn.executemany('DELETE FROM messages WHERE id = ?',
                              [(id,) for id in ids])

    def clear(self) -> None:
        self.conn.execute('DELETE FROM messages')

    def close(self) -> None:
        self.conn.close()

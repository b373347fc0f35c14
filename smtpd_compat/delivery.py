"""Safe local delivery: servers that store each accepted message in a
Maildir or an mbox and answer 250 only once it is durably on disk.

:class:`MaildirServer` writes the message under ``tmp/``, fsyncs it, renames
it into ``new/`` and fsyncs ``new/``, so ``new/`` only ever holds complete
messages (the Maildir protocol, https://cr.yp.to/proto/maildir.html).

:class:`MboxServer` appends an mboxrd entry to one file under an fcntl
lock (plus, optionally, a ``FILE.lock`` dot-lock), fsyncs it, and on any
error cuts the file back to its old length.

On any write error the client gets ``451 4.3.0`` (try again later) and no
partial message is left where a mail reader would see it.  Delivery runs
in the server's worker threads (:mod:`smtpd_compat.threads`): the session
waits for the disk (and, for mbox, the lock) to answer, the event loop and
the other sessions do not.  So ``process_message`` and ``store`` (and a
subclass's overrides of them) must be thread-safe.

Both add the trace headers a delivering server owes the message (RFC 5321
section 4.4): ``Return-Path:`` with the envelope sender and a ``Received:``
line saying who handed it over, how and when.  :func:`trace_headers` builds
them (the relay uses it for its ``Received:`` line); the channel supplies
what only it knows (HELO name, TLS, AUTH) as the ``session`` keyword of
process_message, a :class:`Session`.

Paths a server creates at start-up are listed in its ``created_paths``, so
that ``python -m smtpd_compat`` (running as root without ``-n``) can hand
them to ``nobody`` before it drops root.
"""
from __future__ import annotations

import email.utils
import errno
import ipaddress
import itertools
import logging
import os
import re
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List,
                    NamedTuple, Optional, Sequence, Tuple, Type, Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat.compose import REQUIRED, UNSET, Unset, setting
from smtpd_compat.session import LAYERS
from smtpd_compat.threads import OffloadServerMixin

if TYPE_CHECKING:
    # Typed as what it is composed into (a SessionStateMixin, and so an
    # SMTPChannel); at run time a plain mixin.
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

try:
    import fcntl
except ImportError:     # Windows: no POSIX locks, so no MboxServer there
    fcntl = None  # type: ignore[assignment]  # MboxServer refuses to start

__all__ = ['MaildirServer', 'MboxServer', 'mboxrd_quote', 'STORE_FAILED',
           'Session', 'TraceChannelMixin', 'trace_headers', 'line_end']

log = logging.getLogger(__name__)

#: The reply for a message that could not be stored; the sender retries.
STORE_FAILED = '451 4.3.0 Error: could not store the message'

Message = Union[bytes, str]


def _as_bytes(data: Message) -> bytes:
    return data.encode('utf-8') if isinstance(data, str) else bytes(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: str) -> None:
    # A rename is durable only once the directory holding it is synced.
    if os.name == 'nt':
        # Windows cannot open a directory as a file; NTFS journals the
        # rename itself.
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: str, mode: int) -> List[str]:
    """os.makedirs(path, mode, exist_ok=True); returns the directories it
    created, outermost first."""
    missing = []
    head = os.path.abspath(path)
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    os.makedirs(path, mode=mode, exist_ok=True)
    return missing[::-1]


def _record_created(server: object, paths: Sequence[str]) -> None:
    # An instance attribute, shared by every class in a composed server
    # (e.g. MaildirServer + LMTPServer's socket).
    vars(server).setdefault('created_paths', []).extend(paths)


# ---------------------------------------------------------------------------
# Trace headers (RFC 5321 section 4.4)

class Session(NamedTuple):
    """What the channel knew about the client when the message ended; the
    ``session`` keyword of process_message on the delivering servers."""

    #: The HELO/EHLO/LHLO argument as the client sent it ('' if none).
    helo: str
    #: ``channel.peer``: (address, port) for TCP, anything else for a
    #: UNIX socket.
    peer: Any
    #: The RFC 3848 transmission type: SMTP, ESMTP, ESMTPS, ESMTPA,
    #: ESMTPSA, LMTP, LMTPS, LMTPA or LMTPSA.
    protocol: str
    #: This server's host name (``channel.fqdn``).
    fqdn: str


class TraceChannelMixin(_ChannelBase):
    """Channel mixin: passes a :class:`Session` to process_message as
    ``session``.  Calls super() in ``_message_kwargs`` (so it composes
    with every other mixin that adds keywords)."""

    layer = LAYERS['trace']
    capability_name = 'Trace'

    def trace_session(self) -> Session:
        # RFC 3848: ESMTP/LMTP + S when TLS protects the session, + A when
        # the client authenticated.  A plain HELO session has no suffixes.
        base = getattr(self, 'transmission_type', None) or (
            'ESMTP' if self.extended_smtp else 'SMTP')
        if base != 'SMTP':
            if self.tls_active:
                base += 'S'
            if self.auth_user is not None:
                base += 'A'
        return Session(self.seen_greeting or '', self.peer, base, self.fqdn)

    def _message_kwargs(self) -> Dict[str, Any]:
        kwargs = super()._message_kwargs()
        kwargs['session'] = self.trace_session()
        return kwargs


_UNSAFE = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')


def _clean(text: object, limit: int) -> str:
    """A client-supplied value made safe for a header: every control
    character (CR, LF, TAB, NUL, C1, the Unicode line separators) becomes
    '?', so it can never start a new header line, and the length is
    bounded (RFC 5322 section 2.1.1: lines of at most 998 characters)."""
    if isinstance(text, bytes):
        text = text.decode('utf-8', 'replace')
    text = _UNSAFE.sub('?', str(text))
    if len(text) > limit:
        text = text[:limit] + '...'
    return text


def _tcp_info(peer: object) -> Optional[str]:
    """Postfix's ``unknown [192.0.2.1]`` (no reverse DNS lookup: it would
    block the loop) for a TCP peer, None for anything else."""
    if not (isinstance(peer, tuple) and peer):
        return None
    try:
        address = ipaddress.ip_address(str(peer[0]).split('%', 1)[0])
    except ValueError:
        return 'unknown [%s]' % _clean(peer[0], 64)
    if address.version == 6:
        # RFC 5321 section 4.1.3: an IPv6 address literal is tagged.
        return 'unknown [IPv6:%s]' % address.compressed
    return 'unknown [%s]' % address


def line_end(data: bytes) -> bytes:
    """The line end ``data`` uses: CRLF if its first line ends so, else a
    newline (what the core hands process_message)."""
    i = data.find(b'\n')
    return b'\r\n' if i > 0 and data[i - 1:i] == b'\r' else b'\n'


def trace_headers(mailfrom: Optional[str], rcpttos: Sequence[str],
                  session: Optional[Session], *, return_path: bool = True,
                  linesep: bytes = b'\n', message_id: Optional[str] = None,
                  date: Optional[str] = None) -> bytes:
    """The ``Return-Path:`` (unless ``return_path`` is false) and
    ``Received:`` headers to put in front of a message, as UTF-8 bytes
    with ``linesep`` line ends (RFC 5321 section 4.4)::

        Return-Path: <sender@example.com>
        Received: from HELO (unknown [192.0.2.1])
                by FQDN (smtpd-compat) with ESMTPS id 3F2A...
                for <rcpt@example.com>; Mon, 30 Nov 2026 03:30:00 +0000

    The recipient is named only for a single-recipient message (as
    Postfix does: naming them all would reveal Bcc recipients to each
    other).  Everything from the client is cleaned of control characters,
    so a HELO name or address can never add a header line.  ``session``
    None (process_message called without a channel) gives ``from
    unknown``."""
    if session is None:
        session = Session('', None, 'SMTP', _smtpd.socket.gethostname())
    lines: List[str] = []
    if return_path:
        sender = mailfrom or ''
        if sender == '<>':
            sender = ''
        lines.append('Return-Path: <%s>' % _clean(sender, 900))
    helo = _clean(session.helo, 500) or 'unknown'
    tcp = _tcp_info(session.peer)
    line = 'Received: from %s' % helo
    if tcp:
        line += ' (%s)' % tcp
    lines.append(line)
    lines.append('\tby %s (smtpd-compat) with %s id %s' % (
        _clean(session.fqdn, 255), _clean(session.protocol, 16),
        message_id or os.urandom(8).hex().upper()))
    stamp = date or email.utils.formatdate(localtime=True)
    if len(rcpttos) == 1:
        lines.append('\tfor <%s>; %s' % (_clean(rcpttos[0], 900), stamp))
    else:
        lines[-1] += ';'
        lines.append('\t' + stamp)
    text = '\n'.join(lines) + '\n'
    return text.encode('utf-8').replace(b'\n', linesep)


# ---------------------------------------------------------------------------
# The servers

class _StoringServer(OffloadServerMixin, _smtpd.SMTPServer):
    """process_message = trace headers + store(); any OSError becomes
    STORE_FAILED.  process_message runs in the server's worker threads
    (OffloadServerMixin): fsync and lock waits must not stop the loop."""

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = TraceChannelMixin

    #: Put Return-Path: and Received: in front of each stored message.
    add_trace_headers = True

    def process_message(self, peer: _smtpd._Address, mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        session: Optional[Session] = None,
                        **kwargs: Any) -> Optional[str]:
        """Store the message; None (250) once it is on disk, else the 451
        reply.  ``session`` (from :class:`TraceChannelMixin`) fills the
        Received: line.  Subclasses may filter, then call super() (passing
        ``**kwargs`` on)."""
        message = _as_bytes(data)
        if self.add_trace_headers:
            if session is None:     # called without a TraceChannelMixin
                session = Session('', peer, 'SMTP', _smtpd._server_fqdn(self))
            message = trace_headers(mailfrom, rcpttos, session,
                                    linesep=line_end(message)) + message
        try:
            self.store(mailfrom, message)
        except OSError:
            log.exception('%s: delivery failed', type(self).__name__)
            return STORE_FAILED
        return None

    def store(self, mailfrom: str, data: bytes) -> None:
        raise NotImplementedError


_Path = Union[str, 'os.PathLike[str]']


class MaildirServer(_StoringServer):
    """Deliver every message into the Maildir ``maildir`` (keyword-only;
    tmp/, new/ and cur/ are created if missing; ValueError when tmp/ and
    new/ are on different filesystems, where no message could be moved
    from one to the other).  The message is stored as received, after a
    Return-Path: and a Received: header."""

    maildir: str
    _host: str
    _deliveries: Iterator[int]

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any,
                 maildir: Union[_Path, Unset] = REQUIRED,
                 **kwargs: Any) -> None:
        # (cast: mypy infers the join of the union's members, object.)
        self.maildir = os.fspath(cast(_Path, setting(self, 'maildir', maildir,
                                                     REQUIRED)))
        for sub in ('tmp', 'new', 'cur'):
            _record_created(self, _make_dirs(
                os.path.join(self.maildir, sub), 0o700))
        _check_one_filesystem(self.maildir)
        host = _smtpd.socket.gethostname() or 'localhost'
        # The Maildir spec reserves "/" and ":" in file names.
        self._host = host.replace('/', r'\057').replace(':', r'\072')
        self._deliveries = itertools.count(1)
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    def unique_name(self) -> str:
        """A file name no other delivery uses: time, microseconds, pid,
        per-process counter and random bits, then the host name."""
        now = time.time()
        return '%d.M%06dP%dQ%dR%s.%s' % (
            now, (now % 1) * 1e6, os.getpid(), next(self._deliveries),
            os.urandom(8).hex(), self._host)

    def store(self, mailfrom: str, data: bytes) -> None:
        name = self.unique_name()
        tmp = os.path.join(self.maildir, 'tmp', name)
        newdir = os.path.join(self.maildir, 'new')
        new = os.path.join(newdir, name)
        # O_BINARY (Windows): no newline translation of the message.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, 'O_CLOEXEC', 0) | getattr(os, 'O_BINARY', 0),
                     0o600)
        moved = False
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, new)
            moved = True
            _fsync_dir(newdir)
        except BaseException:
            # Nothing half-done stays behind: the sender will retry, and a
            # message left in new/ would then arrive twice.
            try:
                os.unlink(new if moved else tmp)
            except OSError:
                pass
            raise


def _check_one_filesystem(maildir: str) -> None:
    # A delivery is a rename from tmp/ to new/ (atomic only within one
    # filesystem): across two, every rename fails with EXDEV.  Refused at
    # start (a configuration mistake), not answered 451 on every message.
    tmp, new = (os.path.join(maildir, sub) for sub in ('tmp', 'new'))
    if os.stat(tmp).st_dev != os.stat(new).st_dev:
        raise ValueError(
            'Maildir %r: tmp/ and new/ are on different filesystems; a '
            'delivery moves each message from tmp/ to new/ with rename(), '
            'which only works within one filesystem: put them on one (mount '
            'the whole Maildir, not its subdirectories)' % (maildir,))


_FROM_LINE = re.compile(rb'^(>*From )', re.M)


def mboxrd_quote(data: bytes) -> bytes:
    """mboxrd quoting: one more ">" before every line that starts with
    "From " after any number of ">", so that readers can undo it exactly."""
    return _FROM_LINE.sub(rb'>\1', data)


class MboxServer(_StoringServer):
    """Append every message to the mbox file ``mbox`` (keyword-only) in
    mboxrd format.

    ``dotlock``: also take ``mbox + '.lock'`` (for readers that use only
    dot-locks; the directory must be writable).  ``lock_timeout``: seconds
    to wait for the locks before answering 451."""

    stale_dotlock_age = 300.0
    mbox: str
    dotlock: bool
    lock_timeout: float

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any,
                 mbox: Union[_Path, Unset] = REQUIRED,
                 dotlock: Union[bool, Unset] = UNSET,
                 lock_timeout: Union[float, Unset] = UNSET,
                 **kwargs: Any) -> None:
        self.mbox = os.fspath(cast(_Path, setting(self, 'mbox', mbox, REQUIRED)))
        self.dotlock = setting(self, 'dotlock', dotlock, False)
        self.lock_timeout = setting(self, 'lock_timeout', lock_timeout, 5.0)
        if fcntl is None:
            # Appending without a lock could interleave with a mail reader
            # or another writer and corrupt the mbox; refuse to start.
            raise RuntimeError('MboxServer needs POSIX file locks (the fcntl '
                               'module), which this platform lacks; use '
                               'MaildirServer instead')
        # Fail at start-up, not at the first message, if it cannot be made.
        existed = os.path.exists(self.mbox)
        os.close(os.open(self.mbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                         0o600))
        if not existed:
            _record_created(self, [self.mbox])
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    def format_entry(self, mailfrom: Optional[str], data: bytes) -> bytes:
        """The mbox entry: "From " line, quoted message, blank line."""
        # The core gives a null reverse-path (MAIL FROM:<>) as '<>'.
        if mailfrom == '<>':
            mailfrom = ''
        sender = re.sub(r'[\s\x00-\x1f\x7f]', '_', mailfrom or '') or 'MAILER-DAEMON'
        head = 'From %s %s\n' % (sender, time.asctime(time.gmtime()))
        body = mboxrd_quote(data)
        if not body.endswith(b'\n'):
            body += b'\n'
        return head.encode('utf-8') + body + b'\n'

    def _wait(self, attempt: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            if attempt():
                return
            if time.monotonic() >= deadline:
                raise OSError(errno.ETIMEDOUT, 'timed out waiting for ' + what)
            time.sleep(0.02)

    def _take_dotlock(self) -> str:
        lock = self.mbox + '.lock'

        def attempt() -> bool:
            try:
                os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                 0o644))
                return True
            except FileExistsError:
                try:
                    if time.time() - os.stat(lock).st_mtime > self.stale_dotlock_age:
                        os.unlink(lock)    # its owner died long ago
                except OSError:
                    pass
                return False
        self._wait(attempt, lock)
        return lock

    def store(self, mailfrom: str, data: bytes) -> None:
        entry = self.format_entry(mailfrom, data)
        fd = os.open(self.mbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                     | getattr(os, 'O_CLOEXEC', 0), 0o600)
        try:
            dotlock = self._take_dotlock() if self.dotlock else None
            try:
                def attempt() -> bool:
                    try:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return True
                    except (BlockingIOError, PermissionError):
                        return False
                self._wait(attempt, 'the lock on ' + self.mbox)
                start = os.fstat(fd).st_size
                try:
                    _write_all(fd, entry)
                    os.fsync(fd)
                except BaseException:
                    # Cut the half-written entry off again.
                    try:
                        os.ftruncate(fd, start)
                        os.fsync(fd)
                    except OSError:
                        log.exception('could not truncate %s', self.mbox)
                    raise
            finally:
                if dotlock:
                    try:
                        os.unlink(dotlock)
                    except OSError:
                        pass
        finally:
            os.close(fd)    # also drops the fcntl lock

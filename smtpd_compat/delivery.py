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
"""
import errno
import fcntl
import itertools
import logging
import os
import re
import time
from typing import Optional, Union

import smtpd_compat as _smtpd
from smtpd_compat._compose import CapabilityServerMixin
from smtpd_compat.threads import OffloadChannelMixin

__all__ = ['MaildirServer', 'MboxServer', 'mboxrd_quote', 'STORE_FAILED']

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
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _StoringServer(CapabilityServerMixin, _smtpd.SMTPServer):
    """process_message = store(); any OSError becomes STORE_FAILED.
    process_message runs in the server's worker threads."""

    # fsync and lock waits must not stop the loop (smtpd_compat.threads).
    offload_process_message = True
    channel_mixin = OffloadChannelMixin

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        """Store the message; None (250) once it is on disk, else the 451
        reply.  Subclasses may filter, then call super()."""
        try:
            self.store(mailfrom, _as_bytes(data))
        except OSError:
            log.exception('%s: delivery failed', type(self).__name__)
            return STORE_FAILED
        return None

    def store(self, mailfrom: str, data: bytes) -> None:
        raise NotImplementedError


class MaildirServer(_StoringServer):
    """Deliver every message into the Maildir ``maildir`` (keyword-only;
    tmp/, new/ and cur/ are created if missing).  The message is stored
    as received: no header is added."""

    def __init__(self, *args, maildir: str, **kwargs):
        self.maildir = os.fspath(maildir)
        for sub in ('tmp', 'new', 'cur'):
            os.makedirs(os.path.join(self.maildir, sub), mode=0o700,
                        exist_ok=True)
        host = _smtpd.socket.gethostname() or 'localhost'
        # The Maildir spec reserves "/" and ":" in file names.
        self._host = host.replace('/', r'\057').replace(':', r'\072')
        self._deliveries = itertools.count(1)
        super().__init__(*args, **kwargs)

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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, 'O_CLOEXEC', 0), 0o600)
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

    def __init__(self, *args, mbox: str, dotlock: bool = False,
                 lock_timeout: float = 5.0, **kwargs):
        self.mbox = os.fspath(mbox)
        self.dotlock = dotlock
        self.lock_timeout = lock_timeout
        # Fail at start-up, not at the first message, if it cannot be made.
        os.close(os.open(self.mbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                         0o600))
        super().__init__(*args, **kwargs)

    def format_entry(self, mailfrom: Optional[str], data: bytes) -> bytes:
        """The mbox entry: "From " line, quoted message, blank line."""
        sender = re.sub(r'\s', '_', mailfrom or '') or 'MAILER-DAEMON'
        head = 'From %s %s\n' % (sender, time.asctime(time.gmtime()))
        body = mboxrd_quote(data)
        if not body.endswith(b'\n'):
            body += b'\n'
        return head.encode('utf-8') + body + b'\n'

    def _wait(self, attempt, what):
        deadline = time.monotonic() + self.lock_timeout
        while True:
            if attempt():
                return
            if time.monotonic() >= deadline:
                raise OSError(errno.ETIMEDOUT, 'timed out waiting for ' + what)
            time.sleep(0.02)

    def _take_dotlock(self):
        lock = self.mbox + '.lock'

        def attempt():
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
                def attempt():
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


# ---------------------------------------------------------------------------
# Command line

CLI_OPTIONS = (
    ('maildir=', 'DIR', 'With -c MaildirServer: the Maildir to deliver into (tmp/, new/, cur/ are created).'),
    ('mbox=', 'FILE', 'With -c MboxServer: the mbox file to append to (mboxrd, fcntl-locked).'),
    ('mbox-dotlock', '', 'With --mbox: also take the dot-lock FILE.lock while appending.'),
)


def cli_configure(cli):
    cls = cli.server_class
    for option, server_class, keyword in (('maildir', MaildirServer, 'maildir'),
                                          ('mbox', MboxServer, 'mbox')):
        value = cli.given.get(option)
        wanted = isinstance(cls, type) and issubclass(cls, server_class)
        if wanted and value is None:
            cli.error('-c %s needs --%s' % (cls.__name__, option))
        if value is not None and not wanted:
            cli.error('--%s needs -c %s' % (option, server_class.__name__))
        if value is not None:
            cli.server_kwargs[keyword] = value
    if 'mbox-dotlock' in cli.given:
        if 'mbox' not in cli.given:
            cli.error('--mbox-dotlock needs --mbox')
        cli.server_kwargs['dotlock'] = True

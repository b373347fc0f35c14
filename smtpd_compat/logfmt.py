"""Log helpers every module uses: one log field from client data
(:func:`safe`), a peer address (:func:`format_peer`), a rate limit for
lines a flood could repeat (:class:`LogEvery`), and the command line's log
handler (:func:`stream_handler`) with a shorter way to it for the lines
logged for every message (:func:`log_info`).

Every field that comes from a client (an EHLO name, an address, PROXY
data, an AUTH login, a reply echoing them) goes through :func:`safe`
before it reaches a log line, so that a line is always one line: a client
cannot forge another log line with CR, LF or an escape sequence of its
own.

A leaf: this module imports nothing from the package, so that every layer
(the session, the capabilities, the command line) can use it.
"""
import collections
import collections.abc
import logging
import os
import re
import sys
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

__all__ = ['safe', 'format_peer', 'LogEvery', 'LINE_FORMAT', 'stream_handler',
           'log_info']

# What safe() escapes: the C0 controls (CR, LF, TAB, ESC, ...), DEL, the
# C1 controls, the backslash itself (so that an escape in the log always
# means an escaped byte, never a client's literal "\n"), and any other
# character Python does not call printable (line and paragraph separators
# U+2028/U+2029, which some log viewers break lines at, format characters,
# unassigned code points).  The space stays as it is.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f\\]|[^\x00-\x7e]')


def _escape(match: 're.Match[str]') -> str:
    char = match.group()
    if char == '\\':
        return '\\\\'
    if char.isprintable():
        return char
    code = ord(char)
    if 0xdc80 <= code <= 0xdcff:
        # A byte that was not UTF-8 (see safe()): shown as that byte.
        return '\\x%02x' % (code - 0xdc00)
    if code <= 0xff:
        return '\\x%02x' % code
    if code <= 0xffff:
        return '\\u%04x' % code
    return '\\U%08x' % code


def safe(value: object) -> str:
    """``value`` as text for one log field: ``str(value)`` (bytes are
    decoded as UTF-8) with every control or non-printable character, and
    the backslash, written as a backslash escape (``\\n``, ``\\x1b``,
    ``\\u2028``, ``\\\\``; a byte that is not UTF-8 as ``\\xNN``).  The
    result is one line without control characters, whatever a client
    sent."""
    if type(value) is str:
        # Speed fix: the usual field, printable ASCII without a backslash,
        # is its own escape (isascii() looks at a flag, no scan).
        if value.isascii() and value.isprintable() and '\\' not in value:
            return value
    elif isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode('utf-8', 'surrogateescape')
    else:
        value = str(value)
    return _UNSAFE.sub(_escape, value)


class LogEvery:
    """Counts events that a flood could repeat and says when to log them: at
    most once per ``interval`` seconds, with how many happened since the
    last line, so that a flood never floods the log."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._count = 0
        self._last = -1e9

    def count(self) -> int:
        """Count one event.  Returns how many to report now (this one and
        those held back since the last report), or 0 inside the interval."""
        self._count += 1
        now = time.monotonic()
        if now < self._last + self.interval:
            return 0
        count, self._count, self._last = self._count, 0, now
        return count


def format_peer(peer: object) -> str:
    """``host:port`` for an address tuple (``[v6]:port`` for IPv6),
    escaped with :func:`safe` (an AF_UNIX peer is a path, a PROXY header
    may carry anything)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = safe(peer[0])
        if ':' in host:
            host = '[%s]' % host
        return '%s:%s' % (host, safe(peer[1]))
    return safe(peer)


# -- the command line's log lines ---------------------------------------------

#: The format of the command line's log lines (``python -m smtpd_compat``).
LINE_FORMAT = '%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s'
# LINE_FORMAT with its fields in order: asctime, name, process, levelname,
# message (what PercentStyle makes of it).
_LINE = '%s %s[%d] %s %s'
_HEAD = '%s %s[%d] %s '

# The handler stream_handler() made last: the one log_info() writes to
# directly (see _direct_handler).
_own_handler: Optional[logging.StreamHandler] = None  # type: ignore[type-arg]


def stream_handler(stream: Any = None) -> 'logging.StreamHandler[Any]':
    """A ``logging.StreamHandler`` on ``stream`` (stderr by default)
    writing :data:`LINE_FORMAT` lines: the command line's.  While it is the
    only handler a line of :func:`log_info` reaches and nothing of logging
    is changed, :func:`log_info` writes that line to it itself."""
    global _own_handler, _sizes
    handler = _LineHandler(stream)
    formatter = logging.Formatter(LINE_FORMAT)
    handler.setFormatter(formatter)
    _own_handler = handler
    _sizes = (len(vars(handler)), len(vars(formatter)), len(vars(formatter._style)))
    return handler


# Speed fix (issue 20): a session-log line through the logging machinery
# (Logger.info, findCaller, a LogRecord, Logger.handle, callHandlers,
# Handler.handle, emit, Formatter.format, formatTime) was ~12% of the
# instructions per message of the command line's TLS+AUTH stack.
# log_info() writes the very same line to the same stream with the same
# calls on it (write, then flush, under the handler's lock), while each
# piece of logging it stands in for is the original: checked on every
# call, by identity, so that a patch (mock.patch.object(logging.Logger,
# 'makeRecord', ...)), a filter, another handler anywhere up the chain (a
# user's, pytest's caplog), a changed format, level name or record
# factory all get the stdlib's path and see every record.
_L, _H, _F = logging.Logger, logging.StreamHandler, logging.Formatter
_P, _R = logging.PercentStyle, logging.LogRecord


# This process's id, kept up to date at fork instead of asked of the
# kernel each time (getpid() is a system call: one per logged line, and
# per loop wake-up check).  The loop and the thread pool use it too.
_GETPID = os.getpid
_pid = os.getpid()


def _process_id() -> int:
    """``os.getpid()``, without the system call while ``os.getpid`` is the
    original (a patched one is asked, as logging would ask it)."""
    if os.getpid is _GETPID:
        return _pid
    return os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, 'register_at_fork'):
    # (Registered before the loop's hook, which runs after it and reads it.)
    os.register_at_fork(after_in_child=_forked)


def _originals() -> Tuple[Any, ...]:
    # Every method the stdlib's path runs for an INFO line through a
    # StreamHandler with a '%'-style Formatter (those a version lacks are
    # None).
    return (_L.info, _L.isEnabledFor, _L._log, _L.findCaller, _L.makeRecord,
            _L.handle, _L.callHandlers, _L.filter, _R.__init__, _R.getMessage,
            _H.handle, _H.filter, _H.emit, _H.format, _H.flush, _H.acquire,
            _H.release, _F.format, _F.formatTime, _F.formatMessage, _F.usesTime,
            _P.format, getattr(_P, '_format', None), _P.usesTime,
            logging.getLevelName, logging.getLogRecordFactory())


_ORIGINALS = _originals()
# How many attributes a logger, and stream_handler()'s handler, formatter
# and style, have of their own: one more is a method patched on the
# instance (mock.patch.object(logger, 'handle')).  (getLogger() adds the
# manager to the attributes of the loggers it makes.)
_LOGGER_SIZE = len(vars(logging.Logger('smtpd_compat.logfmt')))
_sizes: Tuple[int, int, int] = (0, 0, 0)
# LogRecord takes the time from time.time_ns() from Python 3.13 on (the
# milliseconds are worked out differently), from time.time() before.
_NS_CLOCK = sys.version_info >= (3, 13)


def _direct_handler(logger: logging.Logger) -> 'Optional[logging.StreamHandler[Any]]':
    """stream_handler()'s handler when an INFO line of ``logger`` would
    reach that handler alone, through nothing but the originals of the
    logging machinery; None otherwise."""
    handler = _own_handler
    if handler is None or type(logger) is not _L or logger.filters \
            or logger.disabled or not logging.logProcesses \
            or len(logger.__dict__) - ('manager' in logger.__dict__) != _LOGGER_SIZE \
            or _originals() != _ORIGINALS:
        return None
    # The handlers Logger.callHandlers would call: exactly ours.
    found = None
    current: Optional[logging.Logger] = logger
    while current is not None:
        handlers = current.handlers
        if handlers:
            if found is not None or len(handlers) != 1:
                return None
            found = handlers[0]
        if not current.propagate:
            break
        current = current.parent
    if found is not handler or type(handler) is not _LineHandler or handler.filters \
            or handler.level > logging.INFO:
        return None
    formatter = handler.formatter
    if type(formatter) is not _F or formatter.datefmt:
        return None
    style = formatter._style
    if type(style) is not _P or style._fmt != LINE_FORMAT \
            or getattr(style, '_defaults', None) \
            or (len(handler.__dict__), len(formatter.__dict__),
                len(style.__dict__)) != _sizes:
        return None
    return handler


# Formatter.formatTime's text before the milliseconds is the same for
# every line of one second: kept for the second of the last line, while
# the converter is time's own localtime or gmtime and time.strftime is the
# original.  (The key holds time.tzname, which time.tzset() replaces, so a
# new time zone is seen at once.)
_CONVERTERS = (time.localtime, time.gmtime)
_STRFTIME = time.strftime
_last_asctime: Tuple[Any, str] = ((), '')
# The format of a whole line for each message format seen (a few
# constants): LINE_FORMAT's fields, the message, the terminator.
_line_formats: Dict[str, str] = {}


def _asctime(formatter: Any, created: float) -> str:
    global _last_asctime
    converter = formatter.converter
    fmt = formatter.default_time_format
    if time.strftime is not _STRFTIME or converter not in _CONVERTERS:
        return time.strftime(fmt, converter(created))
    key = (int(created), converter, fmt, time.tzname)
    last = _last_asctime
    if last[0] == key:
        return last[1]
    text = time.strftime(fmt, converter(created))
    _last_asctime = (key, text)
    return text


def log_info(logger: logging.Logger, msg: str, *args: Any) -> None:
    """``logger.info(msg, *args)``: the same line, written straight to the
    command line's handler (:func:`stream_handler`) while that is all the
    line would reach and nothing of logging is changed (see above).  While
    a loop's thread handles a wake-up (``hold_lines()``), the line is held
    and written with the others of that wake-up when it ends."""
    # LogRecord.__init__'s time.
    stamp = time.time_ns() if _NS_CLOCK else time.time()
    checked = _holding.get(_get_ident()) if _holding else None
    if checked is not None:
        # Whether the line may take the short way is asked once a wake-up
        # (for each logger), and asked again when it is written; one that
        # may not goes the stdlib's way at once, as it would have.
        handler = checked.get(logger, _UNKNOWN)
        if handler is _UNKNOWN:
            handler = checked[logger] = _short_way(logger)
        if handler is not None and not _one_mapping(args):
            _held.append((logger, msg, args, stamp))
            return
        if _held:
            _write_lines(_take_held())
        logger.info(msg, *args)
        return
    # (Lines the loop thread holds go first: the order is kept.)
    _write_lines(_take_held() + [(logger, msg, args, stamp)] if _held
                 else [(logger, msg, args, stamp)])


def _write_lines(lines: List[Tuple[Any, ...]]) -> None:
    """Write log_info's ``lines``, ``(logger, msg, args, time)``, in
    order: each one that may take the short way is formatted here, those
    in a row for one handler go out in one write() and flush(); each
    other goes through ``logger.info()``."""
    handlers: Dict[logging.Logger, Any] = {}
    pid = _process_id()
    handler: Any = None
    texts: List[str] = []
    written: List[Tuple[Any, ...]] = []
    for line in lines:
        logger, msg, args, stamp = line
        found = handlers.get(logger, _UNKNOWN)
        if found is _UNKNOWN:
            found = handlers[logger] = _short_way(logger)
        if found is not handler or found is None or _one_mapping(args):
            if texts:
                _emit(handler, texts, written)
                texts, written = [], []
            handler = found
            if handler is None or _one_mapping(args):
                logger.info(msg, *args)
                continue
        lock = handler.lock
        if lock:
            lock.acquire()
        try:
            texts.append(_format_line(handler, logger, msg, args, stamp, pid))
            written.append(line)
        except RecursionError:
            raise
        except Exception:
            if texts:
                _emit(handler, texts, written)
                texts, written = [], []
            _report(handler, line)
        finally:
            if lock:
                lock.release()
    if texts:
        _emit(handler, texts, written)


_UNKNOWN = object()


def _short_way(logger: logging.Logger) -> Any:
    """The handler a line of ``logger`` may be written to directly
    (_direct_handler), or None: the stdlib's way."""
    return _direct_handler(logger) if logger.isEnabledFor(logging.INFO) else None


def _one_mapping(args: Tuple[Any, ...]) -> bool:
    # (logging takes a lone mapping argument as the format's mapping.)
    return len(args) == 1 and isinstance(args[0], collections.abc.Mapping)


def _format_line(handler: Any, logger: logging.Logger, msg: str,
                 args: Tuple[Any, ...], stamp: float, pid: int) -> str:
    """The text Formatter.format and StreamHandler.emit make of a line
    logged at ``stamp`` (LogRecord's created, or its time_ns() on 3.13)."""
    if _NS_CLOCK:
        ns = int(stamp)
        created = ns / 1e9
        msecs = (ns % 1_000_000_000) // 1_000_000 + 0.0
        if msecs == 999.0 and int(created) != ns // 1_000_000_000:
            msecs = 0.0
    else:
        created = stamp
        msecs = int((created - int(created)) * 1000) + 0.0
    # Formatter.format: formatTime, getMessage, PercentStyle.
    formatter: Any = handler.formatter
    asctime = _asctime(formatter, created)
    if formatter.default_msec_format:
        asctime = formatter.default_msec_format % (asctime, msecs)
    terminator = handler.terminator
    if args and type(msg) is str and terminator == '\n':
        # The message's format and LINE_FORMAT's in one: the same text,
        # and the same errors for arguments that do not fit.
        fmt = _line_formats.get(msg)
        if fmt is None:
            if len(_line_formats) > 64:
                _line_formats.clear()
            fmt = _line_formats[msg] = _HEAD + msg + '\n'
        return fmt % ((asctime, logger.name, pid,
                       logging.getLevelName(logging.INFO)) + args)
    text: str = _LINE % (asctime, logger.name, pid, logging.getLevelName(logging.INFO),
                         str(msg) % args if args else str(msg)) + terminator
    return text


def _emit(handler: Any, texts: List[str], lines: List[Tuple[Any, ...]]) -> None:
    """StreamHandler.emit's write and flush of ``texts``, the text of
    ``lines``, under Handler.handle's lock."""
    lock = handler.lock
    if lock:
        lock.acquire()
    try:
        stream = handler.stream
        stream.write(texts[0] if len(texts) == 1 else ''.join(texts))
        if stream and hasattr(stream, 'flush'):
            stream.flush()
    except RecursionError:
        raise
    except Exception:
        for line in lines:
            _report(handler, line)
    finally:
        if lock:
            lock.release()


def _report(handler: Any, line: Tuple[Any, ...]) -> None:
    """What the stdlib does with a line it cannot format or write:
    handleError with a record of it."""
    logger, msg, args = line[:3]
    handler.handleError(logger.makeRecord(
        logger.name, logging.INFO, '(unknown file)', 0, msg, args, None))


# -- lines held while the loop handles a wake-up -------------------------------

# Speed fix (issue 20, W6): the session log's lines of one loop wake-up
# are written when it ends, in one write() for all the connections it
# served, their formatting done in one go.  Written at once, a line cost
# ~13% of the CPU per message of the command line's TLS+AUTH stack, most
# of it not its own instructions but cache misses in code run once per
# message.  A held line keeps the time it was logged at.  Whether a line
# may take the short way (_direct_handler) is asked once per wake-up for
# each logger -- a line that may not is written the stdlib's way at once,
# as ever -- and again when the held lines are written, which is also
# when the handler's formatter formats them.  Every other way to the
# command line's handler -- a record of the stdlib's path (a warning,
# another logger), a line of another thread, the handler's flush()
# (logging.shutdown() at exit) -- writes the held lines first, so the
# stream gets every line in the order it was logged.  Only
# smtpd_compat.loop's loop holds lines: under asyncore.loop() each is
# written at once.
_held: Deque[Tuple[Any, ...]] = collections.deque()
# The threads whose lines are held (a loop's, while it handles a wake-up;
# several loops may run in one process, each on its own thread), each with
# what _direct_handler said for each logger in that wake-up.  Any thread
# may add lines to _held and take lines from its front, one at a time:
# each is atomic, with no lock that a signal handler logging on the same
# thread could find taken.
_Checked = Dict[logging.Logger, Any]
_holding: Dict[int, _Checked] = {}
_get_ident = threading.get_ident


def hold_lines() -> Optional[_Checked]:
    """Hold the lines log_info writes on this thread until
    :func:`release_lines`; returns what to hand that."""
    ident = _get_ident()
    holding = _holding.get(ident)
    _holding[ident] = {}
    return holding


def release_lines(holding: Optional[_Checked]) -> None:
    """End what :func:`hold_lines` (which returned ``holding``) began:
    the held lines are written now."""
    ident = _get_ident()
    if holding is None:
        _holding.pop(ident, None)
    else:
        _holding[ident] = holding
    if _held:
        _write_lines(_take_held())


def _take_held() -> List[Tuple[Any, ...]]:
    """The held lines, taken off the list (from its front: a loop's
    thread may add more meanwhile)."""
    lines = []
    while True:
        try:
            lines.append(_held.popleft())
        except IndexError:
            return lines


def _forget_held() -> None:
    # A forked child writes none of its parent's lines (the parent does).
    _held.clear()
    _holding.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_held)


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stream_handler()'s handler: a StreamHandler that writes the lines
    log_info holds before anything else it writes or flushes."""

    def emit(self, record: logging.LogRecord) -> None:
        if _held:
            _write_lines(_take_held())
        logging.StreamHandler.emit(self, record)

    def flush(self) -> None:
        if _held:
            _write_lines(_take_held())
        logging.StreamHandler.flush(self)

"""Log helpers every module uses: one log field from client data
(:func:`safe`), a peer address (:func:`format_peer`), and a rate limit for
lines a flood could repeat (:class:`LogEvery`).

Every field that comes from a client (an EHLO name, an address, PROXY
data, an AUTH login, a reply echoing them) goes through :func:`safe`
before it reaches a log line, so that a line is always one line: a client
cannot forge another log line with CR, LF or an escape sequence of its
own.

A leaf: this module imports nothing from the package, so that every layer
(the session, the capabilities, the command line) can use it.
"""
import re
import time

__all__ = ['safe', 'format_peer', 'LogEvery']

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

#! /usr/bin/env python3
"""An RFC 5321 smtp proxy with optional RFC 1870 and RFC 6531 extensions.

Usage: %(program)s [options] [localhost:localport [remotehost:remoteport]]

Options:

    --nosetuid
    -n
        This program generally tries to setuid `nobody', unless this flag is
        set.  The setuid call will fail if this program is not run as root (in
        which case, use this flag).

    --version
    -V
        Print the version number and exit.

    --class classname
    -c classname
        Use `classname' as the concrete SMTP proxy class.  Uses `PureProxy' by
        default.

    --size limit
    -s limit
        Restrict the total size of the incoming message to "limit" number of
        bytes via the RFC 1870 SIZE extension.  Defaults to 33554432 bytes.

    --smtputf8
    -u
        Enable the SMTPUTF8 extension and behave as an RFC 6531 smtp proxy.

    --debug
    -d
        Turn on debugging prints.

    --help
    -h
        Print this message and exit.

Version: %(__version__)s

If localhost is not given then `localhost' is used, and if localport is not
given then 8025 is used.  If remotehost is not given then `localhost' is used,
and if remoteport is not given, then 25 is used.
"""
# The docstring above is the CLI's usage text (printed by usage()), kept
# byte-identical to CPython 3.11's because scripts and tests compare it.
#
# This module is the faithful part of smtpd_compat: the public surface of
# CPython 3.11's smtpd, written anew.  Everything here looks its globals
# (socket, DEBUGSTREAM, __version__, ...) up at call time, because legacy code
# and CPython's own tests rebind them (``smtpd.socket = mock_socket``).
# Opt-in capabilities live in sibling modules that import this one; this
# module never imports them.
#
# Deviations from CPython 3.11 are marked "Deviation (x)" with the letter used
# in docs/deviations.rst.

import codecs
import collections
import errno
import getopt
import logging
import os
import re
import select
import socket
import sys
import time
import warnings
from warnings import warn

from email._header_value_parser import get_addr_spec, get_angle_addr

# asyncore/asynchat warn on import on 3.10 and 3.11 and are gone on 3.12+,
# where the pyasyncore/pyasynchat distributions provide the same modules.
with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import asyncore
    import asynchat

__all__ = [
    "SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy",
]

program = sys.argv[0]
__version__ = 'Python SMTP proxy version 0.3'

# Socket constants captured at import: tests replace the ``socket`` global
# with a module that lacks them, and none of them is ever meant to be mocked.
_SOMAXCONN = socket.SOMAXCONN
_IPPROTO_TCP = getattr(socket, 'IPPROTO_TCP', None)
_TCP_NODELAY = getattr(socket, 'TCP_NODELAY', None)
# Linux gives an accepted socket the TCP_NODELAY of the listening socket
# it came from (as it was when the connection arrived).
_NODELAY_INHERITED = sys.platform.startswith('linux')
# The real socket class: what a channel or server gets from the system, as
# opposed to a Mock, CPython's mock_socket, or a class patched in its place.
_SOCKET = socket.socket
# The socket module itself and its accept, for the fast path in
# SMTPServer.handle_accept (taken only while socket.socket is this class
# and its accept the original).
_SOCKET_MODULE = socket
_SOCKET_ACCEPT = socket.socket.accept
_GETDEFAULTTIMEOUT = socket.getdefaulttimeout

# Faithful under patching.  Test suites patch the stdlib's machinery
# (``mock.patch('asynchat.async_chat.push')``), override it in a subclass,
# or run channels on Mock() sockets, and assert on the calls they see.  The
# core replaces some of that machinery with faster code of its own; each
# such fast path (listed in docs/deviations.rst, "Faithful under
# patching") is taken only while the functions it stands in for are these
# very ones and the socket is a real one.  Otherwise the stdlib's own path
# runs, so every call reaches the patch with the arguments 3.11 gave it.
# tests/test_patching.py shows each one both ways.
_CHAT_PUSH = asynchat.async_chat.push
_CHAT_INITIATE_SEND = asynchat.async_chat.initiate_send
_CHAT_READABLE = asynchat.async_chat.readable
_CHAT_HANDLE_WRITE = asynchat.async_chat.handle_write
_CHAT_HANDLE_READ = asynchat.async_chat.handle_read
_CHAT_SET_TERMINATOR = asynchat.async_chat.set_terminator
_CHAT_GET_TERMINATOR = asynchat.async_chat.get_terminator
_DISPATCHER_SEND = asyncore.dispatcher.send
_DISPATCHER_RECV = asyncore.dispatcher.recv
_DISPATCHER_ACCEPT = asyncore.dispatcher.accept
_DISPATCHER_LISTEN = asyncore.dispatcher.listen
_DISPATCHER_HANDLE_ACCEPT = asyncore.dispatcher.handle_accept
# The classes the compat classes derive from, as they were at import (a
# channel's MRO holds these objects whatever the ``asynchat`` global is
# bound to later), and the tails of the compat classes' MROs when nothing
# sits between them and these.
_ASYNC_CHAT = asynchat.async_chat
_DISPATCHER = asyncore.dispatcher
_ASYNCORE = asyncore
# What a channel's construction calls, for the fast path in
# SMTPChannel.__init__ (see _init_dispatcher).
_CHAT_INIT = asynchat.async_chat.__init__
_DISPATCHER_INIT = asyncore.dispatcher.__init__
_DISPATCHER_SET_SOCKET = asyncore.dispatcher.set_socket
_DISPATCHER_ADD_CHANNEL = asyncore.dispatcher.add_channel
_SOCKET_GETPEERNAME = socket.socket.getpeername
# What a channel's greeting goes through when its send fails, for the
# accepted socket's fast path in SMTPChannel.__init__ (see _accepted).
_CHAT_HANDLE_CLOSE = asynchat.async_chat.handle_close
_DISPATCHER_CLOSE = asyncore.dispatcher.close
_CHAT_MRO = asynchat.async_chat.__mro__
# CPython 3.13's inline attribute values (see SMTPChannel.__slots__).
_INLINE_VALUES = sys.version_info >= (3, 13)
_DISPATCHER_MRO = asyncore.dispatcher.__mro__
# The errno values asyncore's send() and recv() take for a closed connection.
_DISCONNECTED = asyncore._DISCONNECTED
_PRINT = print
# (socket, address, nodelay) that SMTPServer._accept_queued has just had
# from accept() and hands to handle_accepted, None otherwise: a channel made
# on that very socket with that very address knows its peer without asking
# getpeername(), and with ``nodelay`` the socket has TCP_NODELAY from the
# listening socket already (see SMTPChannel.__init__).  Compared by
# identity, so a pair another thread set meanwhile only sends a channel
# the long way.
_accepted = None

# How many connections one wake-up of the listening socket may accept.
_ACCEPTS_PER_WAKEUP = 64

# Bytes read at a time while commands are expected (see handle_read).
_COMMAND_READ_SIZE = 4096
# Bytes read at a time from a real socket while DATA content is expected,
# unless the channel's ac_in_buffer_size was set (see set_terminator): the
# first read of a message asks for _DATA_FIRST_READ_SIZE, and only a read
# that fills it moves on to _DATA_READ_SIZE (see handle_read).  A buffer of
# 256 KiB is above the C library's threshold for mapping memory of its
# own, so a small message read that way cost three more system calls and
# a page fault.  (A distinct int object: see handle_read.)
_DATA_FIRST_READ_SIZE = int('65536')
_DATA_READ_SIZE = 262144
# asynchat's own default read size, the very object (see set_terminator).
_CHAT_IN_BUFFER_SIZE = asynchat.async_chat.ac_in_buffer_size

# How many commands a channel's command_size_limits may hold before
# unknown commands stop being added to it (see _command_limit).
_COMMAND_LIMITS_KEPT = 64

# Flow control: a channel stops reading while more than this many bytes of
# replies wait to be sent (see SMTPChannel.readable).
_OUTPUT_HIGH_WATER = 65536

# accept() errors that mean "out of descriptors or memory for now": the
# listening socket pauses for _ACCEPT_PAUSE seconds instead of dying
# (deviation (h)).
_ACCEPT_RESOURCE_ERRORS = frozenset(
    getattr(errno, name) for name in ('EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM')
    if hasattr(errno, name))
_ACCEPT_PAUSE = 0.25


# Set once anything on Devnull, or on one of its instances, is replaced
# (mock.patch.object(smtpd.Devnull, 'write'), or of smtpd.DEBUGSTREAM):
# from then on the debug prints are made, so that the replacement sees them
# (see _debugging).  Noticed when it happens, so that the per-line test
# stays one global lookup.
_devnull_watched = False


def _watch_devnull():
    global _devnull_watched
    _devnull_watched = True


class _DevnullType(type):
    # Devnull's metaclass: notices attributes of the class being replaced.
    def __setattr__(cls, name, value):
        _watch_devnull()
        super().__setattr__(name, value)

    def __delattr__(cls, name):
        _watch_devnull()
        super().__delattr__(name)


class Devnull(metaclass=_DevnullType):
    def write(self, msg): pass
    def flush(self): pass

    # Notice attributes of an instance being replaced.
    def __setattr__(self, name, value):
        _watch_devnull()
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        _watch_devnull()
        object.__delattr__(self, name)


DEBUGSTREAM = Devnull()
NEWLINE = '\n'
COMMASPACE = ', '
DATA_SIZE_DEFAULT = 33554432


# Help for options beyond the stdlib's, printed after the usage text by
# ``python -m smtpd_compat``; empty for the stdlib's own usage().
_usage_epilog = ''


def usage(code, msg=''):
    print(__doc__ % globals(), file=sys.stderr)
    if _usage_epilog:
        print(_usage_epilog, file=sys.stderr)
    if msg:
        print(msg, file=sys.stderr)
    sys.exit(code)


def _debugging():
    """True when debug prints must be made.  Speed fix: lets the per-line
    and per-command paths skip formatting what a Devnull would drop (the
    recipient list printed on every RCPT made 100 recipients cost O(n**2)).
    They are skipped only where nobody can see them: DEBUGSTREAM is a
    Devnull (not a subclass, which may record), nothing on Devnull was ever
    replaced (a patched ``write``), and ``print`` is the builtin (not a
    mock that counts calls).  found_terminator, smtp_MAIL, smtp_RCPT,
    SMTPChannel.__init__ and SMTPServer.handle_accepted inline this test: a
    call per command line and per recipient cost ~1% of a message's
    time."""
    return (type(DEBUGSTREAM) is not Devnull or print is not _PRINT
            or _devnull_watched)


def _deprecated_alias(old, new):
    """A property for the pre-3.5 name-mangled attribute ``__<old>`` that
    forwards to ``new`` and warns on every get and set."""
    def getter(self):
        warn("Access to __%s attribute on SMTPChannel is deprecated, "
             "use '%s' instead" % (old, new), DeprecationWarning, 2)
        return getattr(self, new)

    def setter(self, value):
        warn("Setting __%s attribute on SMTPChannel is deprecated, "
             "set '%s' instead" % (old, new), DeprecationWarning, 2)
        setattr(self, new, value)

    return property(getter, setter)


def _server_fqdn(server):
    """The host name for greetings, looked up once per server.

    Deviation (f): the stdlib ran socket.getfqdn(), a blocking DNS lookup,
    for every connection.  The lookup still goes through this module's
    ``socket`` global, so patching it works as before."""
    if isinstance(server, SMTPServer):
        fqdn = server.__dict__.get('_smtpd_compat_fqdn')
        if fqdn is None:
            fqdn = server._smtpd_compat_fqdn = socket.getfqdn()
        return fqdn
    return socket.getfqdn()


# (host name, __version__, the greeting's bytes) of the last greeting sent
# by SMTPChannel.__init__'s fast path; bytes None where the greeting is not
# ASCII (push escapes it then, deviation (b)).
_greeting = (None, None, None)


def _encode_greeting(fqdn):
    """The greeting _greet() pushes, as push() encodes it at the start of a
    session (ASCII, or None), kept in _greeting."""
    global _greeting
    try:
        data = ('220 %s %s\r\n' % (fqdn, __version__)).encode('ascii')
    except UnicodeEncodeError:
        data = None
    _greeting = (fqdn, __version__, data)
    return _greeting


# Speed fix (same results): MAIL/RCPT arguments of the plain forms
# "<local@domain>" (optionally followed by spaces and parameters) and
# "local@domain" (alone), with dot-atoms made of letters, digits and _+=-,
# are split by this expression instead of the email package's parser, which
# costs ~30 us per call.  For these inputs both give the same (address,
# rest); everything else still goes to the parser.  tests/test_addresses.py
# compares the two on a table and on generated inputs.
_DOT_ATOM_ADDR = r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ADDR = re.compile(r"<(%s)>(?: +(?=[!-'*-~])|\Z)|(%s)\Z"
                         % (_DOT_ATOM_ADDR, _DOT_ATOM_ADDR))
# The parser functions the expression stands in for: while a test has
# replaced either global (``mock.patch('smtpd.get_addr_spec')``), every
# address goes to them, as in the stdlib.
_GET_ANGLE_ADDR = get_angle_addr
_GET_ADDR_SPEC = get_addr_spec


# Speed fix (same results): the whole argument of the commonest MAIL and
# RCPT, "FROM:<local@domain>" and "TO:<local@domain>" (any case, spaces
# before the "<", no parameters), in one match, for what _path_argument,
# _strip_command_keyword and _getaddr make of it: the address, and no
# parameters (see _plain_path).
_MAIL_PATH = re.compile(r"[Ff][Rr][Oo][Mm]: *<(%s)>\Z" % _DOT_ATOM_ADDR)
_RCPT_PATH = re.compile(r"[Tt][Oo]: *<(%s)>\Z" % _DOT_ATOM_ADDR)


def _plain_path(channel, pattern, arg):
    """The address of a MAIL/RCPT argument of the form ``pattern``
    matches, or None: while the methods that would parse it
    (_path_argument, _strip_command_keyword, _getaddr) and the parser
    functions behind them are the originals; otherwise they run."""
    if arg is None:
        return None
    cls = type(channel)
    if cls._path_argument is _PATH_ARGUMENT and \
            cls._strip_command_keyword is _STRIP_COMMAND_KEYWORD and \
            cls._getaddr is _GETADDR and \
            get_angle_addr is _GET_ANGLE_ADDR and \
            get_addr_spec is _GET_ADDR_SPEC:
        plain = pattern.match(arg)
        if plain is not None:
            return plain.group(1)
    return None


def _path_of(channel, pattern, keyword, arg, syntaxerr):
    """smtp_MAIL's and smtp_RCPT's (address, parameter text): a plain path
    in one match (see _plain_path), else what _path_argument makes of it
    ((None, None) once it has answered)."""
    plain = _plain_path(channel, pattern, arg)
    if plain is not None:
        return plain, ''
    return channel._path_argument(keyword, arg, syntaxerr)


def _parse_address(arg):
    """(address, rest of arg) for a MAIL/RCPT/VRFY argument, split by the
    email package's parser as the stdlib did.  Raises what the parser
    raises on malformed input such as "<a@" (HeaderParseError, IndexError,
    AttributeError): see deviation (b) in SMTPChannel._getaddr."""
    if arg.lstrip().startswith('<'):
        address, rest = get_angle_addr(arg)
    else:
        address, rest = get_addr_spec(arg)
    if not address:
        return address, rest
    return address.addr_spec, rest


class _Pending(bytes):
    """Type of the placeholder that stands in ``ac_in_buffer`` while
    handle_read walks its own copy of the input (see handle_read); equal to
    b'' but never identical to any other buffer."""


_PENDING = _Pending()
_DATA_TERMINATOR = b'\r\n.\r\n'
# A CR not followed by LF (at the very end too: see _unstuff_piece), and
# the size of a piece of content from which it pays to look for one.
_BARE_CR = re.compile(rb'\r[^\n]')
_TRANSLATE_FROM = 8192


# Speed fix: the method names of the usual commands, interned.  getattr()
# with a name made afresh for each line ('smtp_' + command) misses the
# interpreter's attribute cache (keyed by the name's identity) and walks
# the class's MRO every time.
_METHOD_NAMES = {verb: sys.intern('smtp_' + verb) for verb in (
    'HELO', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'RSET', 'NOOP', 'QUIT', 'VRFY',
    'EXPN', 'HELP', 'AUTH', 'STARTTLS', 'BDAT', 'LHLO')}

# The core's constant replies, encoded (see SMTPChannel.push).
_REPLIES = {reply: (reply + '\r\n').encode('ascii') for reply in (
    '250 OK', '221 Bye', '250 HELP', '250-8BITMIME', '250-SMTPUTF8',
    '354 End data with <CR><LF>.<CR><LF>', '503 Error: need MAIL command',
    '503 Error: need RCPT command', '503 Error: send HELO first',
    '503 Error: nested MAIL command', '503 Duplicate HELO/EHLO',
    '501 Syntax: RCPT TO: <address>', '501 Syntax: MAIL FROM: <address>',
    '500 Error: bad syntax', '500 Error: line too long')}
_OK = _REPLIES['250 OK']


class _ColdState:
    """Where a channel on CPython 3.13 keeps the values of its rarely used
    attributes (see SMTPChannel.__slots__).  A composed channel class keeps
    its layers' rarely used state in a subclass of its own, with more slots
    (smtpd_compat.compose.derive): the class's ``_cold_type``."""
    __slots__ = ('conn', 'incoming', 'fqdn', 'peer',
                 'enable_SMTPUTF8', '_map', '_fileno', 'mail_options',
                 'rcpt_options', '_on_escape', 'accepting', 'connecting')


def _cold_state(channel):
    """The channel's cold state (of its class's ``_cold_type``), made if it
    has none yet (a subclass, or a layer, that sets one of these attributes
    before SMTPChannel.__init__ runs)."""
    kind = type(channel)._cold_type
    try:
        cold = object.__getattribute__(channel, '_cold')
    except AttributeError:
        cold = None
    if type(cold) is not kind:
        cold = channel._cold = kind()
    return cold


def _cold_attribute(name, class_default=True, kind=None):
    """A property for the attribute ``name`` of a channel on CPython 3.13,
    kept in the channel's cold state.  Unset, it reads as the class
    attribute after SMTPChannel's (asyncore's ``accepting = False`` ...),
    as a missing instance attribute does; without ``class_default`` (a
    layer's state, which its cold state starts at the class default, as
    a slot of a composed class on 3.11 does) it is missing then.  With
    ``kind``, the type of the cold state of the class it is for, its
    accessors are compiled for speed (a subclass's cold state, with the
    same slot, is read the fast way and written the generic one)."""
    def missing(self):
        # What reading or deleting a missing instance attribute raises (a
        # __getattr__ of the class then has its say, as there).
        return AttributeError('%r object has no attribute %r'
                              % (type(self).__name__, name),
                              name=name, obj=self)

    def get(self):
        try:
            return getattr(self._cold, name)
        except AttributeError:
            pass
        try:
            if class_default:
                # Unset: the class attribute, as for a missing instance
                # attribute.
                return getattr(super(SMTPChannel, self), name)
            # Read before anything made the cold state (which starts
            # with the layers' defaults), or deleted.
            return getattr(_cold_state(self), name)
        except AttributeError:
            raise missing(self) from None

    def set(self, value):
        # self._cold, as found by the per-event code, unless something
        # else answers for it (a __getattr__ before __init__ set it).
        try:
            cold = self._cold
        except AttributeError:
            cold = None
        if type(cold) is not type(self)._cold_type:
            cold = _cold_state(self)
        setattr(cold, name, value)

    def delete(self):
        try:
            delattr(_cold_state(self), name)
        except AttributeError:
            raise missing(self) from None

    if kind is not None:
        # For a cold state of the type ``kind``: getter and setter compiled
        # for this name, which CPython specialises to direct slot access
        # (a layer's cold attribute may be read a few times a command);
        # anything else (unset, deleted, no cold state yet) goes on to the
        # functions above.
        code = {'_get': get, '_set': set, '_kind': kind}
        exec(compile(_COLD_ACCESSORS.format(name=name),
                     '<cold attribute %s>' % name, 'exec'), code)
        get, set = code['get'], code['set']
    return property(get, set, delete)


_COLD_ACCESSORS = """
def get(self):
    try:
        return self._cold.{name}
    except AttributeError:
        return _get(self)

def set(self, value):
    try:
        cold = self._cold
    except AttributeError:
        cold = None
    if type(cold) is _kind:
        cold.{name} = value
    else:
        _set(self, value)
"""


class SMTPChannel(asynchat.async_chat):
    COMMAND = 0
    DATA = 1

    # Idle memory (issue 20): CPython 3.11+ shares one table of attribute
    # names among the instances of a class only while an instance has at
    # most 29 attributes in its __dict__ (the stdlib's channel had 29
    # before MAIL added mail_options and rcpt_options); past that every
    # channel carries a whole dict of its own, ~1.3 KiB more.  The core's
    # private per-connection state therefore lives in slots (reached as
    # fast as instance attributes), and so do the stdlib's and asyncore's
    # private attributes, so that __dict__ holds the stdlib's public
    # attributes and little more.  Instances still have a __dict__
    # (async_chat gives them one): users and subclasses set attributes as
    # before, and a subclass may define class attributes of these names
    # (they then live in __dict__).
    # Speed (W2s, a connection per message): that table only takes names
    # while CPython lets it grow, and every new instance shrinks the room
    # left (down to one name), so once a few channels exist a name first
    # set after __init__ no longer fits: the channel setting it gets a
    # dict of its own, and then every attribute access in the per-event
    # code, shared by channels with and without one, falls back to the
    # unspecialised lookup (~12% of a connection's instructions).  So a
    # channel's __dict__ gets all its names in __init__: mail_options and
    # rcpt_options, first set by MAIL and RCPT (reading them before raises
    # AttributeError as in the stdlib), are slots, and asyncore's
    # ``connecting``, first set by close(), is copied from the class in
    # __init__ (tests/test_fast_paths.py checks that no name comes later).
    # Only on 3.11 and 3.12: before 3.11 a dict shares its keys without
    # that limit (there slots only add their own size), and on 3.13 an
    # instance of a class with slots loses the inline attribute values
    # that make a fresh channel cheap (a session cost ~11% more
    # instructions).  The price on 3.11: ~4% more instructions per
    # connection, for ~3% fewer per command (docs/performance.rst).
    if (3, 11) <= sys.version_info < (3, 13):
        __slots__ = ('_data_start', '_input_paused', '_on_escape',
                     '_in_dispatch', '_utf8_pending', '_reading_paused',
                     '_read_size', '_plain_mro', '_bad_utf8', '_decoder',
                     '_emptystring', '_linesep', '_dotsep', '_newline',
                     '_decode_data', '_map', '_fileno',
                     'mail_options', 'rcpt_options')
    elif sys.version_info >= (3, 13):
        # On 3.13 a class with slots has no inline values at all, and a
        # channel keeps its attributes inline (found as fast as slots, no
        # dict of its own) only while it has at most 29 of them, every one
        # of which must also fit the class's shared table of names (see
        # above).  The stdlib's channel alone had 31 after RCPT.  So here
        # the attributes the per-event code rarely touches (the
        # connection's identity but smtp_server, which the capability
        # layers read several times a command (W6: 4.8% more instructions
        # as a property), asyncore's map entry, EHLO's and MAIL's
        # settings, MAIL's and RCPT's parameters, the note of an exception
        # raised for client input, asyncore's accepting and connecting, which
        # close() sets) are properties that keep
        # their values in one slotted _ColdState object per channel; they
        # read, write, delete and go missing (AttributeError, hasattr) as
        # the instance attributes of the stdlib did, and a subclass's class
        # attribute of the same name still takes precedence.  The decode_data
        # constants are class attributes (instance attributes only on a
        # decode_data=True channel), and asynchat's buffer sizes are not
        # copied to the instance (see __init__).  A channel then has 28
        # attributes from __init__ on, closed or not; as on 3.11 no name
        # comes later (a name a user's subclass adds in its __init__ fits
        # too).  A composed class (smtpd_compat.compose.derive) keeps its
        # layers' state the same way, in a subclass of _ColdState with a
        # slot for each name: its _cold_type.
        _cold_type = _ColdState
        # (Compiled accessors, see _cold_attribute: W2s 4.5% and W1 2.8%
        # fewer instructions than the generic ones.  A composed class's
        # cold state is a subclass: reads take the same slots, writes the
        # generic way.)
        conn = _cold_attribute('conn', kind=_ColdState)
        incoming = _cold_attribute('incoming', kind=_ColdState)
        fqdn = _cold_attribute('fqdn', kind=_ColdState)
        peer = _cold_attribute('peer', kind=_ColdState)
        enable_SMTPUTF8 = _cold_attribute('enable_SMTPUTF8', kind=_ColdState)
        _map = _cold_attribute('_map', kind=_ColdState)
        _fileno = _cold_attribute('_fileno', kind=_ColdState)
        mail_options = _cold_attribute('mail_options', kind=_ColdState)
        rcpt_options = _cold_attribute('rcpt_options', kind=_ColdState)
        _on_escape = _cold_attribute('_on_escape')     # error paths only
        accepting = _cold_attribute('accepting', kind=_ColdState)
        connecting = _cold_attribute('connecting', kind=_ColdState)
        _emptystring = b''
        _linesep = b'\r\n'
        _dotsep = ord(b'.')
        _newline = b'\n'

    command_size_limit = 512
    # Kept as a class attribute for code that reads it; every channel gets
    # its own dict in __init__ (deviation (d)).
    command_size_limits = collections.defaultdict(lambda x=command_size_limit: x)

    @property
    def max_command_size_limit(self):
        limits = self.command_size_limits
        if not limits:
            # Speed fix (the same result): max() of nothing raised a
            # ValueError, caught here on every command line of a session
            # that did not start with EHLO.
            return self.command_size_limit
        return max(limits.values())

    def __init__(self, server, conn, addr, data_size_limit=DATA_SIZE_DEFAULT,
                 map=None, enable_SMTPUTF8=False, decode_data=False):
        # The core's own per-connection flags are instance attributes only,
        # never class defaults as well: the per-command paths read them,
        # and CPython 3.13 does not specialise access to an instance
        # attribute that a class attribute of the same name shadows
        # (about four times slower).
        # True while no byte of DATA content has arrived (see _handle_input).
        self._data_start = False
        # Hook for capabilities that wait for work done off the loop thread
        # (smtpd_compat.threads): while True, _handle_input splits no further
        # lines and keeps the rest in ac_in_buffer; _handle_input(b'') resumes.
        # Never set by this module, so the stdlib's behaviour is unchanged.
        self._input_paused = False
        # Deviations (b) and (c), as subclasses see them.  Where the stdlib
        # raised for client input, the core raises the same exception from the
        # same method, so an override that catches it behaves as on 3.11.
        # Before raising, the core notes in _on_escape what to answer instead:
        # (exception, answer), the answer being a reply line, a callable, or
        # None until the caller names one.  Only if that exception escapes to
        # _handle_input -- where the stdlib's reached asyncore, which printed a
        # traceback and dropped the connection -- is the answer given; the
        # session then goes on (see _answer_escaped).  A note whose exception
        # a subclass caught stays until the next one replaces it: answers go
        # only to the very exception object noted.
        self._on_escape = None
        # True while _handle_input hands input to collect_incoming_data and
        # found_terminator: the only place where an exception can escape to an
        # answer (see push).
        self._in_dispatch = False
        # Deviation (c): set once a chunk had to be decoded incrementally and
        # ended inside a character, so the next chunks go on from there.
        self._utf8_pending = False
        # Flow control (see readable()).
        self._reading_paused = False
        # Bytes handle_read asks for (see set_terminator, which a subclass
        # may override without calling: then asynchat's size as in the
        # stdlib).
        self._read_size = self.ac_in_buffer_size
        # False when a class of the user's sits between SMTPChannel and
        # asynchat in this channel's MRO: then every method the core
        # overrides for speed leaves the work to super(), as the stdlib's
        # SMTPChannel (which did not override them) did.
        mro = type(self).__mro__
        self._plain_mro = mro[mro.index(__class__) + 1:] == _CHAT_MRO
        if _INLINE_VALUES:
            # (See __slots__.)  Before the cold attributes are set; unless
            # a subclass set one of them before calling this __init__.
            _cold_state(self)
        # Speed fix, for CPython 3.11 (neutral on 3.13): asyncore's and
        # asynchat's class defaults the per-event paths read, copied to the
        # instance, where 3.11 finds them faster (together ~3% of a
        # message).  Same values; the buffer sizes are the class's at the
        # time the channel is made.
        # (See __slots__: close() sets it, so it gets its name in now.  On
        # 3.13 these two are properties.)
        self.accepting = False
        self.connecting = False
        # Not on 3.13: there it makes no difference to the speed, and the
        # names would take 2 of the 29 a channel has for inline values.
        if not _INLINE_VALUES:
            self.ac_in_buffer_size = self.ac_in_buffer_size
            self.ac_out_buffer_size = self.ac_out_buffer_size
        cls = type(self)
        # True when the peer is accept()'s address, not getpeername()'s.
        known_peer = False
        if self._plain_mro and type(conn) is _SOCKET and \
                asynchat.async_chat is _ASYNC_CHAT and \
                _ASYNC_CHAT.__init__ is _CHAT_INIT and \
                _DISPATCHER.__init__ is _DISPATCHER_INIT and \
                cls.set_socket is _DISPATCHER_SET_SOCKET and \
                cls.add_channel is _DISPATCHER_ADD_CHANNEL and \
                _SOCKET.getpeername is _SOCKET_GETPEERNAME:
            accepted = _accepted
            # Speed fix (W2s, a connection per message): a socket that
            # SMTPServer._accept_queued has just accepted (this socket, this
            # address) has accept()'s address as its peer, so its
            # getpeername() is not asked (a system call and an address
            # conversion a connection).  What that call also told is
            # whether the client had reset the connection before it was
            # accepted (ENOTCONN: the stdlib closed the channel without a
            # greeting); here the greeting's send() finds that out
            # instead, and the channel is then left as the stdlib left it
            # (see the end of __init__).  So only while the greeting goes
            # through the core's own code to the socket's send() and a
            # failed send closes the channel through asynchat's
            # handle_close and asyncore's close, and without debug prints
            # (the stdlib printed the peer only after getpeername()).
            known_peer = accepted is not None and accepted[0] is conn and \
                accepted[1] is addr and cls._greet is _GREET and \
                cls.push is _PUSH and _ASYNC_CHAT.push is _CHAT_PUSH and \
                cls.initiate_send is _INITIATE_SEND and \
                _ASYNC_CHAT.initiate_send is _CHAT_INITIATE_SEND and \
                cls.send is _DISPATCHER_SEND and \
                cls.handle_close is _CHAT_HANDLE_CLOSE and \
                cls.close is _DISPATCHER_CLOSE and \
                type(DEBUGSTREAM) is Devnull and print is _PRINT and \
                not _devnull_watched
            peer = self._init_dispatcher(conn, map, addr if known_peer else None)
        else:
            peer = None
            asynchat.async_chat.__init__(self, conn, map=map)
        self.smtp_server = server
        self.conn = conn
        self.addr = addr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot"
                             " be set to True at the same time")
        if decode_data:
            if not _INLINE_VALUES:
                self._set_text_state()
            # (On 3.13 at the end of __init__: a channel's names must come
            # in the same order as every other channel's, or it, or every
            # channel made after it, loses its inline values; these come
            # after the names all channels have.)
        elif not _INLINE_VALUES:
            # (On 3.13 the class attributes of the same values, see
            # __slots__.)
            self._emptystring = b''
            self._linesep = b'\r\n'
            self._dotsep = ord(b'.')
            self._newline = b'\n'
        self._bad_utf8 = False
        self._set_rset_state()
        self.seen_greeting = ''
        self.extended_smtp = False
        # Deviation (d): the stdlib cleared one dict shared by every channel
        # here, so a new connection reset everyone's limits and one client's
        # EHLO raised another's MAIL limit.  Each channel owns its dict.
        shared = type(self).command_size_limits
        self.command_size_limits = collections.defaultdict(
            getattr(shared, 'default_factory', None))
        self.fqdn = _server_fqdn(server)
        try:
            if peer is None:
                peer = conn.getpeername()
            elif isinstance(peer, OSError):
                raise peer      # _init_dispatcher's getpeername() failed
        except OSError as err:
            # a race condition  may occur if the other end is closing
            # before we can get the peername
            if decode_data and _INLINE_VALUES:
                self._set_text_state()
            self.close()
            if err.errno != errno.ENOTCONN:
                raise
            return
        self.peer = peer
        if _TCP_NODELAY is not None and type(conn) is _SOCKET:
            if self.peer == addr:
                # Idle memory: one address tuple per connection, not two
                # equal ones (~150 bytes).
                self.peer = addr
            # Replies are written once per command and the client waits for
            # them: Nagle's algorithm only adds latency (a multi-line EHLO
            # reply otherwise waits for the client's delayed ACK).  Real
            # sockets only: on a Mock() the stdlib made no such call.  Not
            # on a socket that has it from the listening socket already
            # (see SMTPServer.__init__): one system call a connection.
            accepted = _accepted
            if accepted is None or accepted[0] is not conn or not accepted[2]:
                try:
                    conn.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
                except (OSError, AttributeError, TypeError):
                    pass
        if decode_data and _INLINE_VALUES:
            self._set_text_state()
        if known_peer:
            # (Not debugging: see above.)  _greet, push and initiate_send
            # are the core's (checked above): the greeting they send,
            # encoded once per host name, is queued and sent as they would
            # (see _send_first), without the three calls and their checks.
            greeting = _greeting
            fqdn = self.fqdn
            if greeting[0] is not fqdn or greeting[1] is not __version__:
                greeting = _encode_greeting(fqdn)
            data = greeting[2]
            fifo = self.producer_fifo
            if data is None or fifo or not self.connected or \
                    len(data) > self.ac_out_buffer_size or \
                    type(self.socket) is not _SOCKET:
                self._greet()       # not ASCII, or not as usual: push's way
            else:
                fifo.append(data)
                self._send_first(fifo, data)
            if not self.connected:
                # The greeting's send() failed as on a connection the
                # client has reset, where the stdlib's getpeername()
                # failed with ENOTCONN and it closed the channel, and the
                # close has been made (asynchat's handle_close): the
                # stdlib's channel had no peer and nothing queued.
                self.producer_fifo.clear()
                del self.peer
            return
        if type(DEBUGSTREAM) is not Devnull or print is not _PRINT or \
                _devnull_watched:       # _debugging(), inlined
            print('Peer:', repr(self.peer), file=DEBUGSTREAM)
        self._greet()

    def _set_text_state(self):
        """A decode_data=True channel's str constants, and its decoder."""
        self._emptystring = ''
        self._linesep = '\r\n'
        self._dotsep = '.'
        self._newline = NEWLINE
        # Deviation (c): for chunks the stdlib could not decode on their
        # own (see collect_incoming_data).
        self._decoder = codecs.getincrementaldecoder('utf-8')()

    def _init_dispatcher(self, conn, map, peer=None):
        """What asynchat's and asyncore's __init__ do for a connected
        socket (with set_socket and add_channel), inlined, for a real
        socket while they are the originals.  Speed fix (W2s, a connection
        per message): four calls fewer, and getpeername() asked once
        instead of twice (asyncore's answer, which it kept as ``addr``
        until SMTPChannel replaced it with accept()'s, is ``peer``), or
        not at all when ``peer`` is given (accept()'s address, see
        __init__).  Returns that answer, or the OSError it raised where
        asyncore went on (ENOTCONN, EINVAL: then __init__ takes it as its
        own getpeername()'s, as in the stdlib, which asked again)."""
        self.ac_in_buffer = b''
        self.incoming = []
        self.producer_fifo = collections.deque()
        self._map = _ASYNCORE.socket_map if map is None else map
        self._fileno = None
        conn.setblocking(False)
        self.socket = conn
        self._fileno = conn.fileno()
        self._map[self._fileno] = self
        self.connected = True
        if peer is not None:
            self.addr = peer
            return peer
        try:
            peer = self.addr = conn.getpeername()
        except OSError as err:
            if err.errno in (errno.ENOTCONN, errno.EINVAL):
                self.connected = False
                return err
            self.del_channel(map)
            raise
        return peer

    # Hooks for smtpd_compat's capability modules.  The stdlib has none of
    # these; each does exactly what the stdlib's inline code did, so a
    # channel that does not override them behaves as CPython 3.11's.

    def _greet(self):
        """Send the 220 greeting (a PROXY-protocol or implicit-TLS channel
        defers this until its header or handshake is done)."""
        self.push('220 %s %s' % (self.fqdn, __version__))

    def extra_ehlo_keywords(self):
        """EHLO keywords to advertise after the stdlib's (SIZE, 8BITMIME,
        SMTPUTF8) and before the final "250 HELP"; cooperative mixins
        extend ``super().extra_ehlo_keywords()``."""
        return []

    def check_mail_parameters(self, params):
        """Called with the MAIL parameters (a dict, upper-case names)
        that remain after BODY, SMTPUTF8 and SIZE are handled.  Pop those
        you recognise; return a reply line to refuse the command, or None.
        Any left over get the stdlib's 555 reply."""
        return None

    def check_rcpt_parameters(self, params):
        """Like check_mail_parameters, for RCPT TO."""
        return None

    # The values MAIL's BODY parameter may take on a decode_data=False
    # channel (RFC 6152); anything else gets the stdlib's 501.
    _accepted_body_types = ('7BIT', '8BITMIME')

    def _set_post_data_state(self):
        """Reset state variables to their post-DATA state."""
        self.smtp_state = self.COMMAND
        self.mailfrom = None
        self.rcpttos = []
        self.require_SMTPUTF8 = False
        self.num_bytes = 0
        self.set_terminator(b'\r\n')

    def _set_rset_state(self):
        """Reset all state variables except the greeting."""
        self._set_post_data_state()
        self.received_data = ''
        self.received_lines = []

    # The name-mangled attributes of smtpd before Python 3.5, still readable
    # and writable with a DeprecationWarning.
    _SMTPChannel__server = _deprecated_alias('server', 'smtp_server')
    _SMTPChannel__line = _deprecated_alias('line', 'received_lines')
    _SMTPChannel__state = _deprecated_alias('state', 'smtp_state')
    _SMTPChannel__greeting = _deprecated_alias('greeting', 'seen_greeting')
    _SMTPChannel__mailfrom = _deprecated_alias('mailfrom', 'mailfrom')
    _SMTPChannel__rcpttos = _deprecated_alias('rcpttos', 'rcpttos')
    _SMTPChannel__data = _deprecated_alias('data', 'received_data')
    _SMTPChannel__fqdn = _deprecated_alias('fqdn', 'fqdn')
    _SMTPChannel__peer = _deprecated_alias('peer', 'peer')
    _SMTPChannel__conn = _deprecated_alias('conn', 'conn')
    _SMTPChannel__addr = _deprecated_alias('addr', 'addr')

    # Overrides base class for convenience.
    def push(self, msg):
        data = _REPLIES.get(msg) if type(msg) is str else None
        if data is not None:
            # Speed fix: one of the core's constant replies, encoded once
            # (ASCII, so the same bytes whatever the encoding).
            self._push_constant(data)
            return
        text = msg + '\r\n'
        encoding = 'utf-8' if self.require_SMTPUTF8 else 'ascii'
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError as err:
            # Deviation (b): a reply echoing non-ASCII client text on a
            # session without SMTPUTF8 raised here and dropped the
            # connection.  The answer is the same reply with that text
            # escaped (\xNN).  While input is handled the stdlib's
            # exception is raised first (see _on_escape); elsewhere (timers,
            # callbacks of capabilities: code the stdlib did not have) the
            # escaped reply goes out at once.
            escaped = msg.encode(encoding, 'backslashreplace').decode(encoding)
            if self._in_dispatch:
                self._on_escape = (err, escaped)
                raise
            data = (escaped + '\r\n').encode(encoding)
        if len(data) <= self.ac_out_buffer_size and \
                asynchat.async_chat.push is _CHAT_PUSH:
            # Speed fix: what asynchat.async_chat.push does with a reply
            # that fits one send (it also checks the type, which is bytes
            # here, and splits longer ones).  Only while that push is the
            # original: a patched one gets every reply, as in the stdlib.
            self.producer_fifo.append(data)
            self.initiate_send()
            return
        asynchat.async_chat.push(self, data)

    def _push_constant(self, data):
        """What push() does with the encoded reply ``data`` (one of
        _REPLIES).  Speed fix: with nothing queued before it on a real
        socket, while initiate_send and send are the originals, the reply
        is sent as initiate_send would send it (see there), without the
        call and its checks."""
        if len(data) > self.ac_out_buffer_size or \
                asynchat.async_chat.push is not _CHAT_PUSH:
            asynchat.async_chat.push(self, data)
            return
        fifo = self.producer_fifo
        cls = type(self)
        if not fifo and self.connected and self._plain_mro and \
                cls.initiate_send is _INITIATE_SEND and \
                _ASYNC_CHAT.initiate_send is _CHAT_INITIATE_SEND and \
                cls.send is _DISPATCHER_SEND and \
                type(self.socket) is _SOCKET:
            fifo.append(data)
            self._send_first(fifo, data)
            return
        fifo.append(data)
        self.initiate_send()

    def _plain_rcpt(self, cls, arg):
        """smtp_RCPT for the commonest recipient, "TO:<local@domain>"
        (see _RCPT_PATH), while smtp_RCPT and everything it calls for it
        are the originals: True once done, False (having done nothing)
        otherwise.  Speed fix (W4: a hundred recipients a message): the
        same checks, state and reply, without the method lookup and five
        calls.  Only from _handle_input's fast path, which has checked
        that no debug prints are made."""
        if not self.seen_greeting or not self.mailfrom or \
                cls._getparams is not _GETPARAMS or \
                cls.check_rcpt_parameters is not _CHECK_RCPT_PARAMETERS:
            return False
        address = _plain_path(self, _RCPT_PATH, arg)
        if address is None:
            return False
        self.rcpt_options = []
        self.rcpttos.append(address)
        if cls.push is _PUSH:
            self._push_constant(_OK)     # push('250 OK'), inlined
        else:
            self.push('250 OK')
        return True

    # Flow control (invisible on the wire: the same bytes, in the same
    # order).  The stdlib read on however many replies a client left
    # unread, so 18 MB of pipelined HELP that is never read grew the
    # server by hundreds of MiB.  Here a channel stops reading while more
    # than _OUTPUT_HIGH_WATER bytes of replies are queued; the client's
    # further input waits in the kernel (TCP then slows the client down).
    # One read can still queue the replies to everything it holds: with
    # commands read 4 KiB at a time (handle_read), ~100 KB at most.
    # initiate_send, which every push goes through, raises the flag;
    # readable() asks again only while it is up (the loop asks readable()
    # after every event: the common case costs one attribute), and
    # handle_write lowers it.

    def readable(self):
        if not self._plain_mro or _ASYNC_CHAT.readable is not _CHAT_READABLE:
            return super().readable()    # patched: no flow control
        if self._reading_paused and \
                self._queued_output() > _OUTPUT_HIGH_WATER:
            return False
        return 1    # what asynchat.async_chat.readable returns

    def _queued_output(self):
        """Bytes of replies queued; 0 once disconnected or when a
        producer or close_when_done's None is queued (not plain replies)."""
        if not self.connected:
            return 0
        try:
            return sum(map(len, self.producer_fifo))
        except TypeError:
            return 0

    def initiate_send(self):
        if not self._plain_mro or \
                _ASYNC_CHAT.initiate_send is not _CHAT_INITIATE_SEND:
            super().initiate_send()      # patched: exactly the stdlib's
            return
        # Speed fix: the usual case, one reply queued on a real socket,
        # skips asynchat's general loop over producers, empty entries and
        # oversized items, and asyncore's send() around the socket's: the
        # same socket call with the same bytes, and the same handling of
        # its result and errors.  Only while send is asyncore's own.
        fifo = self.producer_fifo
        if len(fifo) == 1 and self.connected and \
                type(self).send is _DISPATCHER_SEND and \
                type(self.socket) is _SOCKET:
            first = fifo[0]
            if type(first) is bytes and 0 < len(first) <= self.ac_out_buffer_size:
                self._send_first(fifo, first)
                return
        _CHAT_INITIATE_SEND(self)
        if len(fifo) > 1 and not self._reading_paused and \
                self._queued_output() > _OUTPUT_HIGH_WATER:
            self._reading_paused = True

    def _send_first(self, fifo, first):
        """Send ``first``, the one reply queued in ``fifo``, on the real
        socket: the same call as asyncore's send() makes, and what it and
        asynchat's initiate_send make of its result and errors."""
        try:
            sent = self.socket.send(first)
        except OSError as why:
            if why.errno == errno.EWOULDBLOCK:
                return
            if why.errno in _DISCONNECTED:
                self.handle_close()
                return
            self.handle_error()
            return
        if sent < len(first):
            if sent:
                fifo[0] = first[sent:]
        else:
            fifo.popleft()

    def handle_write(self):
        if not self._plain_mro or \
                _ASYNC_CHAT.handle_write is not _CHAT_HANDLE_WRITE:
            super().handle_write()      # patched: exactly the stdlib's
            return
        self.initiate_send()    # all that asynchat's handle_write does
        if self._reading_paused and self.readable():
            # Reading resumes.  Input may already be waiting where no
            # socket event announces it (plaintext a TLS layer decrypted
            # before the pause): read once now; on a plain socket with
            # nothing there this costs one EAGAIN.
            self._reading_paused = False
            self.handle_read()

    def _answer_escaped(self, err):
        """Give the answer noted for ``err`` (see _on_escape) and return
        True; False when ``err`` is not an exception the core raised for
        client input, which then propagates as in the stdlib."""
        noted = self._on_escape
        if noted is None or noted[0] is not err or noted[1] is None:
            return False
        self._on_escape = None
        answer = noted[1]
        try:
            if callable(answer):
                answer()
            else:
                self.push(answer)
        except Exception as again:
            # The answer may echo client text that push must escape
            # ("502 Could not VRFY <arg>").
            if not self._answer_escaped(again):
                raise
        return True

    def _answer_if_escapes(self, err, answer):
        """Name ``answer`` for an exception that _getaddr noted."""
        noted = self._on_escape
        if noted is not None and noted[0] is err:
            self._on_escape = (err, answer)

    def set_terminator(self, term):
        # Remember when DATA content starts, so that an empty message
        # (".\r\n" right after the 354 reply) can be recognised: see
        # handle_read.
        self._data_start = term == _DATA_TERMINATOR
        # Fairness (invisible on the wire): while commands (or BDAT chunks
        # of a few bytes) are expected, handle_read reads a few KiB at a
        # time, so that one client's burst of thousands of small commands
        # or one-byte chunks is handled over several turns of the event
        # loop while the others are served in between; the rest waits in
        # the kernel, which reports it again.  Message content is read in
        # full-size pieces.  Decided here, once per change of terminator,
        # not on every read.
        size = self.ac_in_buffer_size
        if self._data_start:
            # Speed fix: message content in bigger pieces (a quarter of the
            # calls and of the per-piece Python work for a large message),
            # while ac_in_buffer_size is asynchat's default object itself,
            # inherited: a subclass or program that set it (even to the
            # same number, a different object) gets reads of that size, as
            # asynchat documents.  Only the socket's own recv sees this
            # size (see handle_read).
            if size is _CHAT_IN_BUFFER_SIZE:
                size = _DATA_FIRST_READ_SIZE
        elif term is not None and (
                not isinstance(term, int) or term < _COMMAND_READ_SIZE):
            # (min() without the call: the same object when equal.)
            if _COMMAND_READ_SIZE < size:
                size = _COMMAND_READ_SIZE
        self._read_size = size
        if self._plain_mro and \
                _ASYNC_CHAT.set_terminator is _CHAT_SET_TERMINATOR:
            if type(term) is bytes:
                # Speed fix: all that asynchat's set_terminator does with
                # bytes (it converts str and refuses negative counts).
                self.terminator = term
            else:
                _CHAT_SET_TERMINATOR(self, term)
        else:
            super().set_terminator(term)    # patched: as the stdlib called it

    def handle_read(self):
        # Same contract as asynchat.async_chat.handle_read (terminators may
        # be bytes, an int or None, and found_terminator may change them),
        # written to walk the input with an index instead of re-slicing
        # ac_in_buffer after every line.
        #
        # While found_terminator runs, ac_in_buffer holds the _PENDING
        # placeholder.  Code that replaces it (discard_buffers(), or STARTTLS
        # throwing away pipelined plaintext) makes the loop go on with the
        # new buffer instead.
        if not self._plain_mro or \
                _ASYNC_CHAT.handle_read is not _CHAT_HANDLE_READ:
            super().handle_read()       # patched: exactly the stdlib's
            return
        size = self._read_size      # see set_terminator
        recv = type(self).recv
        if recv is _DISPATCHER_RECV and type(self.socket) is _SOCKET:
            # Speed fix: asyncore's recv() around the socket's, inlined
            # (the same socket call; the same results and errors).
            try:
                data = self.socket.recv(size)
            except BlockingIOError:
                return
            except OSError as why:
                if why.errno not in _DISCONNECTED:
                    self.handle_error()
                    return
                self.handle_close()
                data = b''
            else:
                if not data:
                    self.handle_close()
                elif size is _DATA_FIRST_READ_SIZE and len(data) == size:
                    # A large message: the rest in bigger pieces.
                    self._read_size = _DATA_READ_SIZE
        else:
            # A patched or overridden recv, or a socket that is not one (a
            # Mock), is asked for asynchat's size, as in the stdlib; a
            # capability's own recv (TLS) for the size set_terminator chose.
            if not getattr(recv, '__module__', '').startswith('smtpd_compat.'):
                size = self.ac_in_buffer_size
            try:
                data = self.recv(size)
            except BlockingIOError:
                return
            except OSError:
                self.handle_error()
                return
            # (A real socket's recv returns bytes.)
            if isinstance(data, str) and self.use_encoding:
                data = bytes(data, self.encoding)
        self._handle_input(data)

    def _handle_input(self, data):
        """Split received bytes at the terminators and hand them to
        collect_incoming_data and found_terminator (the part of handle_read
        after recv, for channels that read their socket differently)."""
        # Speed fix (a command a read, W4: ~107 round trips a message):
        # one whole command line, alone in the read, while everything the
        # general path below would call for it is the original.  What
        # collect_incoming_data, found_terminator and _take_line do with
        # it, inlined: the same size limit (max_command_size_limit's body),
        # the same parsing, the same command_size_limits lookups, the same
        # dispatch to smtp_<COMMAND> (late-bound, as in the stdlib) and the
        # same answers to an exception that escapes it.  Skipped, and so
        # taken by the general path: a partial line, several lines, an
        # empty line, a line that is not UTF-8, DATA content, anything
        # buffered or paused, decode_data, debug prints, and an overridden
        # or patched collect_incoming_data, found_terminator, _take_line,
        # get_terminator or max_command_size_limit.
        # (The two methods that capability layers override are looked at
        # first: on their channels the rest need not be.)
        cls = type(self)
        if cls.collect_incoming_data is _COLLECT_INCOMING_DATA and \
                cls.found_terminator is _FOUND_TERMINATOR and \
                type(data) is bytes and not self.ac_in_buffer and \
                self.terminator == b'\r\n' and \
                data.find(b'\r\n') == len(data) - 2 > 0 and \
                self.smtp_state == self.COMMAND and \
                not self.received_lines and not self.num_bytes and \
                not self._input_paused and not self._decode_data and \
                cls._take_line is _TAKE_LINE and \
                cls.get_terminator is _CHAT_GET_TERMINATOR and \
                cls.max_command_size_limit is _MAX_COMMAND_SIZE_LIMIT and \
                type(DEBUGSTREAM) is Devnull and print is _PRINT and \
                not _devnull_watched:       # not _debugging(), inlined
            try:
                # (The line with its CRLF: the same command and argument,
                # as the argument is stripped of whitespace; a slice less.)
                line = data.decode()
                limits = self.command_size_limits
                limit = max(limits.values()) if limits \
                    else self.command_size_limit
            except Exception:
                # Not UTF-8 (deviation (b)), or limits max() cannot
                # compare: the general path answers, or raises, as ever.
                pass
            else:
                # (collect_incoming_data counted the line's bytes only
                # under a limit; found_terminator compared that count.)
                size = len(data) - 2 if limit else 0
                i = line.find(' ')
                if i < 0:
                    command = line[:-2].upper()
                    arg = None
                else:
                    command = line[:i].upper()
                    arg = line[i+1:].strip()
                self.ac_in_buffer = _PENDING
                dispatching, self._in_dispatch = self._in_dispatch, True
                try:
                    if self.extended_smtp:
                        if len(limits) < _COMMAND_LIMITS_KEPT:
                            max_sz = limits[command]
                        else:
                            max_sz = self._command_limit(command)
                    else:
                        max_sz = self.command_size_limit
                    if size > max_sz:
                        self.push('500 Error: line too long')
                    elif command == 'RCPT' and \
                            cls.smtp_RCPT is _SMTP_RCPT and \
                            self._plain_rcpt(cls, arg):
                        pass
                    else:
                        method = getattr(self, _METHOD_NAMES.get(command)
                                         or 'smtp_' + command, None)
                        if not method:
                            self.push('500 Error: command "%s" not '
                                      'recognized' % command)
                        else:
                            method(arg)
                except Exception as err:
                    if not self._answer_escaped(err):
                        raise
                finally:
                    self._in_dispatch = dispatching
                    if self.ac_in_buffer is _PENDING:
                        self.ac_in_buffer = b''
                        data = None
                if data is None:
                    return
                # The handler put input of its own in ac_in_buffer
                # (STARTTLS dropping plaintext, discard_buffers()): the
                # general path goes on with it, as it would have.
                data = b''
        elif type(data) is bytes and not self.ac_in_buffer and \
                self.terminator == b'\r\n' and \
                data.find(b'\r\n') == len(data) - 2 > 0 and \
                not self._input_paused and \
                cls.get_terminator is _CHAT_GET_TERMINATOR:
            # Speed fix (issue 20, W6: a channel whose capability layers
            # override collect_incoming_data and found_terminator): one
            # whole line alone in the read is the general path's first and
            # only turn below: the same calls (collect_incoming_data with
            # the line, found_terminator with the placeholder in the
            # buffer), the same handling of their exceptions and of a
            # buffer the handler sets; only the loop's bookkeeping is left
            # out.
            collected = False
            dispatching, self._in_dispatch = self._in_dispatch, True
            try:
                if self._decode_data:
                    self._collect_answering(data[:-2])
                else:
                    self.collect_incoming_data(data[:-2])
                self.ac_in_buffer = _PENDING
                collected = True
                try:
                    self.found_terminator()
                except Exception as err:
                    if not self._answer_escaped(err):
                        raise
            finally:
                self._in_dispatch = dispatching
                if not collected:
                    self.ac_in_buffer = data    # (the loop's buf[pos:])
                elif self.ac_in_buffer is _PENDING:
                    self.ac_in_buffer = b''
            if not self.ac_in_buffer:
                return
            # The handler put input of its own in ac_in_buffer: the
            # general path goes on with it, as the loop would have.
            data = b''
        # (Data that is not bytes, from a mocked recv, is added to the
        # buffer as asynchat did, and fails the same way.)
        buf = self.ac_in_buffer + data \
            if self.ac_in_buffer or type(data) is not bytes else data
        pos = 0
        end = len(buf)
        # Only a decode_data channel's collect_incoming_data raises for
        # client input (deviation (c)).
        collect = (self._collect_answering if self._decode_data
                   else self.collect_incoming_data)
        # Speed fix: the terminator is read from the attribute while
        # get_terminator is asynchat's own (one call less per line).
        get_terminator = None
        if type(self).get_terminator is not _CHAT_GET_TERMINATOR:
            get_terminator = self.get_terminator
        calling = False
        dispatching, self._in_dispatch = self._in_dispatch, True
        try:
            while pos < end and not self._input_paused:
                terminator = self.terminator if get_terminator is None \
                    else get_terminator()
                if not terminator:
                    # No terminator: everything is content.
                    collect(buf[pos:] if pos else buf)
                    pos = end
                    break
                if isinstance(terminator, int):
                    # A counted number of bytes.
                    if end - pos < terminator:
                        collect(buf[pos:])
                        self.terminator = terminator - (end - pos)
                        pos = end
                        break
                    collect(buf[pos:pos + terminator])
                    pos += terminator
                    self.terminator = 0
                else:
                    skip = len(terminator)
                    index = -1
                    if self._data_start and terminator == _DATA_TERMINATOR:
                        # Deviation (a): the CRLF before the end-of-data
                        # dot went with the DATA command line, so the stdlib
                        # never took ".\r\n" as the end of an empty message
                        # and waited forever (RFC 5321 section 4.1.1.4).
                        head = buf[pos:pos + 3]
                        if len(head) < 3 and b'.\r\n'.startswith(head):
                            break    # too short to tell yet: wait for more
                        self._data_start = False
                        if head == b'.\r\n':
                            index, skip = pos, 3
                    if index >= 0:
                        pass
                    elif skip == 5 and terminator == _DATA_TERMINATOR:
                        # Speed fix: the end of the message has its dot two
                        # bytes in, so the search starts two bytes before the
                        # first dot, found by the far faster one-byte scan
                        # (none at all in much of a large message).
                        dot = buf.find(b'.', pos)
                        if dot >= 0:
                            index = buf.find(terminator,
                                             dot - 2 if dot - 2 > pos else pos)
                    else:
                        index = buf.find(terminator, pos)
                    if index < 0:
                        # Collect all but a possible start of the terminator,
                        # which waits for the next read.
                        keep = min(skip - 1, end - pos)
                        while keep and not buf.endswith(terminator[:keep]):
                            keep -= 1
                        if end - keep > pos:
                            collect(buf[pos:end - keep])
                        pos = end - keep
                        break
                    if index > pos:
                        collect(buf[pos:index])
                    pos = index + skip
                self.ac_in_buffer = _PENDING
                calling = True
                try:
                    self.found_terminator()
                except Exception as err:
                    # Where the stdlib's exception reached asyncore.
                    if not self._answer_escaped(err):
                        raise
                calling = False
                if self.ac_in_buffer is not _PENDING:
                    buf, pos, end = self.ac_in_buffer, 0, len(self.ac_in_buffer)
        finally:
            self._in_dispatch = dispatching
            # After an exception from found_terminator, keep a buffer it set.
            if not calling or self.ac_in_buffer is _PENDING:
                self.ac_in_buffer = buf[pos:] if pos < end else b''

    def _collect_answering(self, data):
        """collect_incoming_data, for _handle_input on a decode_data
        channel: answers the stdlib's UnicodeDecodeError if it escapes."""
        try:
            self.collect_incoming_data(data)
        except UnicodeDecodeError as err:
            if not self._answer_escaped(err):
                raise

    # Implementation of base class abstract method
    def collect_incoming_data(self, data):
        limit = None
        if self.smtp_state == self.COMMAND:
            if type(self).max_command_size_limit is _MAX_COMMAND_SIZE_LIMIT:
                # Speed fix: the property's body, inlined while it is ours.
                limits = self.command_size_limits
                limit = max(limits.values()) if limits \
                    else self.command_size_limit
            else:
                limit = self.max_command_size_limit
        elif self.smtp_state == self.DATA:
            limit = self.data_size_limit
        if limit and self.num_bytes > limit:
            return
        elif limit:
            self.num_bytes += len(data)
            if self.num_bytes > limit and self.smtp_state == self.DATA:
                # The message is over the limit, so the answer will be 552
                # whatever follows: keep none of it (the stdlib kept up to
                # the limit, and joined it at the end, only to throw it
                # away).
                self.received_lines = []
                return
        if self._decode_data:
            if self._utf8_pending or self._bad_utf8:
                self._decode_incrementally(data)
                return
            try:
                text = str(data, 'utf-8')
            except UnicodeDecodeError as err:
                # Deviation (c): the stdlib decoded each chunk on its own
                # and raised here for one that is not UTF-8 by itself: bytes
                # that are not UTF-8, or a character split between two
                # reads.  A subclass that catches this drops the chunk, as
                # on 3.11.  If it escapes, the chunk is decoded
                # incrementally instead: a split character comes out right,
                # anything else is answered when the line or message ends.
                self._on_escape = (
                    err, lambda: self._decode_incrementally(data))
                raise
            self.received_lines.append(text)
        elif self.smtp_state == self.DATA:
            # Speed fix: message content is unstuffed as it arrives, while
            # the client is still sending, instead of all at once after the
            # final dot (see _unstuff_piece).
            self.received_lines.append(self._unstuff_piece(data))
        else:
            self.received_lines.append(data)

    def _unstuff_piece(self, data):
        """_unstuff for one piece of DATA content (bytes).  The same result
        as unstuffing the whole message: the reader never ends a piece with
        a possible start of the terminator (CR, CRLF, CRLF dot), so no
        CRLF and no CRLF-dot is split between two pieces."""
        if not self.received_lines and data[:1] == b'.':
            data = data[1:]     # the first line's dot
        if b'.' in data:
            data = data.replace(b'\r\n.', b'\r\n')
        if len(data) > _TRANSLATE_FROM and not data.endswith(b'\r') and \
                _BARE_CR.search(data) is None:
            # Speed fix: with every CR followed by LF, deleting the CRs is
            # the same as replacing CRLF, and a third faster on a large
            # piece (bytes.replace searches for each of its many lines).
            return data.translate(None, b'\r')
        return data.replace(b'\r\n', b'\n')

    def _decode_incrementally(self, data):
        """Deviation (c): decode ``data`` as the continuation of the chunks
        before it; remember bytes that are not UTF-8 (see _take_line)."""
        if self._bad_utf8:
            return
        try:
            self.received_lines.append(self._decoder.decode(data))
        except UnicodeDecodeError:
            self._bad_utf8 = True
            return
        self._utf8_pending = bool(self._decoder.getstate()[0])

    def _take_line(self):
        """Join and clear received_lines.  Returns None if the input was
        not valid UTF-8 on a decode_data channel (deviation (c); a
        character cut off by the end of the line is not UTF-8 either)."""
        line = self._emptystring.join(self.received_lines)
        self.received_lines = []
        if self._bad_utf8 or self._utf8_pending:
            self._bad_utf8 = self._utf8_pending = False
            self._decoder.reset()
            return None
        return line

    def _debug_line(self, line):
        """Print a received line (or message) on DEBUGSTREAM, as the
        stdlib's found_terminator did; the AUTH capability overrides it to
        print secrets as ``***``."""
        print('Data:', repr(line), file=DEBUGSTREAM)

    # Implementation of base class abstract method
    def found_terminator(self):
        line = self._take_line()
        if type(DEBUGSTREAM) is not Devnull or print is not _PRINT or \
                _devnull_watched:       # _debugging(), inlined
            self._debug_line(line)
        if self.smtp_state == self.COMMAND:
            sz, self.num_bytes = self.num_bytes, 0
            if not line:
                # Deviation (b): a command line that is not valid UTF-8
                # (line is None) raised in the stdlib.
                self.push('500 Error: bad syntax')
                return
            if not self._decode_data:
                try:
                    line = str(line, 'utf-8')
                except UnicodeDecodeError as err:
                    # Deviation (b): raised in the stdlib (see _on_escape).
                    self._on_escape = (err, '500 Error: bad syntax')
                    raise
            i = line.find(' ')
            if i < 0:
                command = line.upper()
                arg = None
            else:
                command = line[:i].upper()
                arg = line[i+1:].strip()
            if self.extended_smtp:
                limits = self.command_size_limits
                if len(limits) < _COMMAND_LIMITS_KEPT:
                    max_sz = limits[command]    # _command_limit(), inlined
                else:
                    max_sz = self._command_limit(command)
            else:
                max_sz = self.command_size_limit
            if sz > max_sz:
                self.push('500 Error: line too long')
                return
            method = getattr(self, _METHOD_NAMES.get(command)
                             or 'smtp_' + command, None)
            if not method:
                self.push('500 Error: command "%s" not recognized' % command)
                return
            method(arg)
            return
        else:
            if self.smtp_state != self.DATA:
                self.push('451 Internal confusion')
                self.num_bytes = 0
                return
            if self.data_size_limit and self.num_bytes > self.data_size_limit:
                self.push('552 Error: Too much mail data')
                # Deviation (g): the stdlib stayed in DATA state, so the
                # client's next commands became the body of a message
                # delivered to this envelope.  The 552 ends the transaction.
                self._set_post_data_state()
                return
            if line is None:
                # Deviation (c): content that is not valid UTF-8 on a
                # decode_data channel crashed the stdlib.
                self.push('554 Error: message data is not valid UTF-8')
                self._set_post_data_state()
                return
            if self._decode_data:
                line = self._unstuff(line)
            self._process_data(line)

    def _process_data(self, data):
        """Hand a complete message (already unstuffed) to
        process_message and answer with its reply."""
        self.received_data = data
        # Kept for the reply: _set_post_data_state() empties rcpttos.
        rcpttos = self.rcpttos
        status = self._call_process_message(
            self.peer, self.mailfrom, rcpttos, self.received_data)
        self._set_post_data_state()
        self._reply_to_message(status, rcpttos)

    def _call_process_message(self, peer, mailfrom, rcpttos, data):
        """Call the server's process_message with the keywords of
        _message_kwargs() and return its result.  (Capability channels
        wrap this to turn an exception into a 451 reply; here, as in the
        stdlib, it propagates.)"""
        return self.smtp_server.process_message(
            peer, mailfrom, rcpttos, data, **self._message_kwargs())

    def _reply_to_message(self, status, rcpttos):
        """Answer the end of DATA with process_message's result ``status``
        for the envelope's recipients ``rcpttos``: the string itself, or
        250 OK for None.  (LMTP overrides this to answer per recipient.)"""
        if not status:
            self.push('250 OK')
        else:
            self.push(status)

    def _message_kwargs(self):
        """The keyword arguments for process_message: none with
        decode_data=True, else mail_options and rcpt_options."""
        if self._decode_data:
            return {}
        return {
            'mail_options': self.mail_options,
            'rcpt_options': self.rcpt_options,
        }

    def _unstuff(self, content):
        """Undo dot-stuffing (RFC 5321 section 4.5.2: a leading dot on any
        line is removed) and turn CRLF line ends into newlines, without a
        per-line loop.  Same result as splitting on CRLF, stripping one
        leading dot per line and joining with a newline."""
        linesep = self._linesep
        dot = '.' if self._decode_data else b'.'
        if content[:1] == dot:
            content = content[1:]
        if dot in content:
            content = content.replace(linesep + dot, linesep)
        return content.replace(linesep, self._newline)

    def _command_limit(self, command):
        """The line length allowed for ``command`` on an ESMTP session:
        ``command_size_limits[command]``, as the stdlib looked it up (a
        defaultdict keeps every command looked up, so the dict a subclass
        or test reads afterwards holds the same keys as on 3.11).  Once it
        holds _COMMAND_LIMITS_KEPT commands, a command not yet in it gets
        the default without being added (deviation (d)): a client sending
        endless distinct junk verbs cannot grow it without bound."""
        limits = self.command_size_limits
        if len(limits) < _COMMAND_LIMITS_KEPT or command in limits:
            return limits[command]
        factory = getattr(limits, 'default_factory', None)
        return factory() if factory is not None else limits[command]

    # SMTP and ESMTP commands
    def smtp_HELO(self, arg):
        if not arg:
            self.push('501 Syntax: HELO hostname')
            return
        # A second HELO/EHLO is refused (bpo-21783).
        if self.seen_greeting:
            self.push('503 Duplicate HELO/EHLO')
            return
        self._set_rset_state()
        self.seen_greeting = arg
        self.push('250 %s' % self.fqdn)

    def smtp_EHLO(self, arg):
        if not arg:
            self.push('501 Syntax: EHLO hostname')
            return
        # A second HELO/EHLO is refused (bpo-21783).
        if self.seen_greeting:
            self.push('503 Duplicate HELO/EHLO')
            return
        self._set_rset_state()
        self.seen_greeting = arg
        self.extended_smtp = True
        self.push('250-%s' % self.fqdn)
        if self.data_size_limit:
            self.push('250-SIZE %s' % self.data_size_limit)
            self.command_size_limits['MAIL'] += 26
        if not self._decode_data:
            self.push('250-8BITMIME')
        if self.enable_SMTPUTF8:
            self.push('250-SMTPUTF8')
            self.command_size_limits['MAIL'] += 10
        for keyword in self.extra_ehlo_keywords():
            self.push('250-%s' % keyword)
        self.push('250 HELP')

    def smtp_NOOP(self, arg):
        if arg:
            self.push('501 Syntax: NOOP')
        else:
            self.push('250 OK')

    def smtp_QUIT(self, arg):
        # The argument is ignored.
        self.push('221 Bye')
        self.close_when_done()

    def _strip_command_keyword(self, keyword, arg):
        keylen = len(keyword)
        if arg[:keylen].upper() == keyword:
            return arg[keylen:].strip()
        return ''

    def _getaddr(self, arg):
        if not arg:
            return '', ''
        if get_angle_addr is _GET_ANGLE_ADDR and \
                get_addr_spec is _GET_ADDR_SPEC:
            plain = _PLAIN_ADDR.match(arg)    # speed fix, see _PLAIN_ADDR
            if plain is not None:
                return plain.group(1) or plain.group(2), arg[plain.end():]
        try:
            return _parse_address(arg)
        except Exception as err:
            # Deviation (b): the parser raises HeaderParseError, IndexError
            # or AttributeError on malformed input such as "<a@", and the
            # stdlib let that drop the connection.  Raised as there; the
            # caller names its syntax error reply as the answer should it
            # escape (see _on_escape).
            self._on_escape = (err, None)
            raise

    def _getparams(self, params):
        # Return params as dictionary. Return None if not all parameters
        # appear to be syntactically valid according to RFC 1869.
        result = {}
        for param in params:
            param, eq, value = param.partition('=')
            if not param.isalnum() or eq and not value:
                return None
            result[param] = value if eq else True
        return result

    def smtp_HELP(self, arg):
        if arg:
            extended = ' [SP <mail-parameters>]'
            lc_arg = arg.upper()
            if lc_arg == 'EHLO':
                self.push('250 Syntax: EHLO hostname')
            elif lc_arg == 'HELO':
                self.push('250 Syntax: HELO hostname')
            elif lc_arg == 'MAIL':
                msg = '250 Syntax: MAIL FROM: <address>'
                if self.extended_smtp:
                    msg += extended
                self.push(msg)
            elif lc_arg == 'RCPT':
                msg = '250 Syntax: RCPT TO: <address>'
                if self.extended_smtp:
                    msg += extended
                self.push(msg)
            elif lc_arg == 'DATA':
                self.push('250 Syntax: DATA')
            elif lc_arg == 'RSET':
                self.push('250 Syntax: RSET')
            elif lc_arg == 'NOOP':
                self.push('250 Syntax: NOOP')
            elif lc_arg == 'QUIT':
                self.push('250 Syntax: QUIT')
            elif lc_arg == 'VRFY':
                self.push('250 Syntax: VRFY <address>')
            else:
                self.push('501 Supported commands: EHLO HELO MAIL RCPT '
                          'DATA RSET NOOP QUIT VRFY')
        else:
            self.push('250 Supported commands: EHLO HELO MAIL RCPT DATA '
                      'RSET NOOP QUIT VRFY')

    def smtp_VRFY(self, arg):
        if arg:
            try:
                address, params = self._getaddr(arg)
            except Exception as err:
                self._answer_if_escapes(err, '502 Could not VRFY %s' % arg)
                raise
            if address:
                self.push('252 Cannot VRFY user, but will accept message '
                          'and attempt delivery')
            else:
                self.push('502 Could not VRFY %s' % arg)
        else:
            self.push('501 Syntax: VRFY <address>')

    def _path_argument(self, keyword, arg, syntaxerr):
        """(address, parameter text) of a MAIL FROM: or RCPT TO: argument;
        (None, None) after answering ``syntaxerr`` when there is no address,
        or parameters on a session that did not start with EHLO."""
        if arg is None:
            self.push(syntaxerr)
            return None, None
        arg = self._strip_command_keyword(keyword, arg)
        try:
            address, params = self._getaddr(arg)
        except Exception as err:
            self._answer_if_escapes(err, syntaxerr)
            raise
        if not address or (params and not self.extended_smtp):
            self.push(syntaxerr)
            return None, None
        return address, params

    def smtp_MAIL(self, arg):
        if not self.seen_greeting:
            self.push('503 Error: send HELO first')
            return
        debugging = (type(DEBUGSTREAM) is not Devnull or print is not _PRINT
                     or _devnull_watched)    # _debugging(), inlined
        if debugging:
            print('===> MAIL', arg, file=DEBUGSTREAM)
        syntaxerr = '501 Syntax: MAIL FROM: <address>'
        if self.extended_smtp:
            syntaxerr += ' [SP <mail-parameters>]'
        address, params = _path_of(self, _MAIL_PATH, 'FROM:', arg, syntaxerr)
        if address is None:
            return
        if self.mailfrom:
            self.push('503 Error: nested MAIL command')
            return
        cls = type(self)
        if params == '' and cls._getparams is _GETPARAMS and \
                cls.check_mail_parameters is _CHECK_MAIL_PARAMETERS and \
                (self._decode_data or '7BIT' in self._accepted_body_types):
            # Speed fix: no parameters, and the methods that would look at
            # them are ours: what they make of none, without the calls (as
            # in smtp_RCPT).
            self.mail_options = []
        elif not self._mail_parameters(params, syntaxerr):
            return
        self.mailfrom = address
        if debugging:
            print('sender:', self.mailfrom, file=DEBUGSTREAM)
        self.push('250 OK')

    def _mail_parameters(self, params, syntaxerr):
        """smtp_MAIL's handling of the parameter text ``params``: sets
        mail_options; False after answering a parameter it refuses."""
        self.mail_options = params.upper().split()
        params = self._getparams(self.mail_options)
        if params is None:
            self.push(syntaxerr)
            return False
        if not self._decode_data:
            body = params.pop('BODY', '7BIT')
            if body not in self._accepted_body_types:
                self.push('501 Error: BODY can only be one of 7BIT, 8BITMIME')
                return False
        if self.enable_SMTPUTF8:
            smtputf8 = params.pop('SMTPUTF8', False)
            if smtputf8 is True:
                self.require_SMTPUTF8 = True
            elif smtputf8 is not False:
                self.push('501 Error: SMTPUTF8 takes no arguments')
                return False
        size = params.pop('SIZE', None)
        if size:
            try:
                digits = size.isdigit()
                too_big = (digits and bool(self.data_size_limit)
                           and int(size) > self.data_size_limit)
            except (AttributeError, ValueError) as err:
                # Deviation (b): "SIZE" without a value (True here) and
                # digits that int() rejects (such as superscripts) raised
                # in the stdlib (see _on_escape).
                self._on_escape = (err, syntaxerr)
                raise
            if not digits:
                self.push(syntaxerr)
                return False
            elif too_big:
                self.push('552 Error: message size exceeds fixed maximum message size')
                return False
        refusal = self.check_mail_parameters(params)
        if refusal:
            self.push(refusal)
            return False
        if len(params.keys()) > 0:
            self.push('555 MAIL FROM parameters not recognized or not implemented')
            return False
        return True

    def smtp_RCPT(self, arg):
        if not self.seen_greeting:
            self.push('503 Error: send HELO first')
            return
        debugging = (type(DEBUGSTREAM) is not Devnull or print is not _PRINT
                     or _devnull_watched)    # _debugging(), inlined
        if debugging:
            print('===> RCPT', arg, file=DEBUGSTREAM)
        if not self.mailfrom:
            self.push('503 Error: need MAIL command')
            return
        syntaxerr = '501 Syntax: RCPT TO: <address>'
        if self.extended_smtp:
            syntaxerr += ' [SP <mail-parameters>]'
        address, params = _path_of(self, _RCPT_PATH, 'TO:', arg, syntaxerr)
        if address is None:
            return
        cls = type(self)
        if params == '' and cls._getparams is _GETPARAMS and \
                cls.check_rcpt_parameters is _CHECK_RCPT_PARAMETERS:
            # Speed fix: no parameters, and the methods that would look at
            # them are ours: what they make of none, without the calls.
            self.rcpt_options = []
        else:
            self.rcpt_options = params.upper().split()
            params = self._getparams(self.rcpt_options)
            if params is None:
                self.push(syntaxerr)
                return
            refusal = self.check_rcpt_parameters(params)
            if refusal:
                self.push(refusal)
                return
            # The stdlib recognises no RCPT parameter.
            if len(params.keys()) > 0:
                self.push('555 RCPT TO parameters not recognized or not implemented')
                return
        self.rcpttos.append(address)
        if debugging:
            print('recips:', self.rcpttos, file=DEBUGSTREAM)
        self.push('250 OK')

    def smtp_RSET(self, arg):
        if arg:
            self.push('501 Syntax: RSET')
            return
        self._set_rset_state()
        self.push('250 OK')

    def smtp_DATA(self, arg):
        if not self.seen_greeting:
            self.push('503 Error: send HELO first')
            return
        if not self.rcpttos:
            self.push('503 Error: need RCPT command')
            return
        if arg:
            self.push('501 Syntax: DATA')
            return
        self.smtp_state = self.DATA
        self.set_terminator(b'\r\n.\r\n')
        self.push('354 End data with <CR><LF>.<CR><LF>')

    # Commands that have not been implemented
    def smtp_EXPN(self, arg):
        self.push('502 EXPN not implemented')


# The core's own methods, for the fast paths taken while they are not
# overridden or patched.
_MAX_COMMAND_SIZE_LIMIT = SMTPChannel.__dict__['max_command_size_limit']
_COLLECT_INCOMING_DATA = SMTPChannel.collect_incoming_data
_INITIATE_SEND = SMTPChannel.initiate_send
_PUSH = SMTPChannel.push
_GREET = SMTPChannel._greet
_SMTP_RCPT = SMTPChannel.smtp_RCPT
_PATH_ARGUMENT = SMTPChannel._path_argument
_STRIP_COMMAND_KEYWORD = SMTPChannel._strip_command_keyword
_GETADDR = SMTPChannel._getaddr
_FOUND_TERMINATOR = SMTPChannel.found_terminator
_TAKE_LINE = SMTPChannel._take_line
_GETPARAMS = SMTPChannel._getparams
_CHECK_RCPT_PARAMETERS = SMTPChannel.check_rcpt_parameters
_CHECK_MAIL_PARAMETERS = SMTPChannel.check_mail_parameters


class SMTPServer(asyncore.dispatcher):
    # SMTPChannel class to use for managing client connections
    channel_class = SMTPChannel

    def __init__(self, localaddr, remoteaddr,
                 data_size_limit=DATA_SIZE_DEFAULT, map=None,
                 enable_SMTPUTF8=False, decode_data=False, *, backlog=None):
        self._localaddr = localaddr
        self._remoteaddr = remoteaddr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot"
                             " be set to True at the same time")
        if backlog is not None and (not isinstance(backlog, int) or backlog < 0):
            raise ValueError("backlog must be a non-negative integer, not %r"
                             % (backlog,))
        asyncore.dispatcher.__init__(self, map=map)
        try:
            gai_results = socket.getaddrinfo(*localaddr,
                                             type=socket.SOCK_STREAM)
            self.create_socket(gai_results[0][0], gai_results[0][1])
            # try to re-use a server port if possible
            self.set_reuse_addr()
            self.bind(localaddr)
            # The stdlib listened with a backlog of 5, which drops SYNs in
            # any burst of new connections; the kernel maximum costs nothing.
            # (Only on a real socket and asyncore's own listen: a patched
            # one is asked for 5, as in the stdlib.)
            if backlog is None:
                backlog = 5
                if type(self.socket) is _SOCKET and \
                        type(self).listen is _DISPATCHER_LISTEN:
                    backlog = _SOMAXCONN
            # Speed fix (W2s, a connection per message): where accepted
            # sockets inherit TCP_NODELAY (Linux), the listening socket gets
            # it before it listens, so that every connection has it without
            # a setsockopt() of its own (see SMTPChannel.__init__; a
            # connection accepted by _accept_queued from this socket).  Real
            # sockets only, as for the accepted ones.
            if _NODELAY_INHERITED and _TCP_NODELAY is not None and \
                    type(self.socket) is _SOCKET:
                try:
                    self.socket.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
                except OSError:
                    pass
                else:
                    self._smtpd_compat_nodelay = self.socket
            self.listen(backlog)
        except:
            self.close()
            raise
        else:
            print('%s started at %s\n\tLocal addr: %s\n\tRemote addr:%s' % (
                self.__class__.__name__, time.ctime(time.time()),
                localaddr, remoteaddr), file=DEBUGSTREAM)

    def handle_accept(self):
        # asyncore accepts one connection per wake-up; accepting what is
        # queued (up to a bound, so other sockets still get served) keeps a
        # burst of connections from waiting one loop turn each.  (One, as
        # in the stdlib, from a patched accept or a socket that is not
        # one: a Mock would hand out the same pair every time.)
        mro = type(self).__mro__
        if mro[mro.index(__class__) + 1:] != _DISPATCHER_MRO or \
                _DISPATCHER.handle_accept is not _DISPATCHER_HANDLE_ACCEPT:
            super().handle_accept()     # patched: exactly the stdlib's
            return
        balance = self._accept_balance
        if balance is not None and balance(self):
            return      # a worker with fewer connections takes it (workers)
        sock = self.socket
        if type(self).accept is _DISPATCHER_ACCEPT and type(sock) is _SOCKET \
                and _SOCKET.accept is _SOCKET_ACCEPT \
                and _SOCKET_MODULE.socket is _SOCKET:
            self._accept_queued(sock)
            return
        turns = _ACCEPTS_PER_WAKEUP
        if type(self).accept is not _DISPATCHER_ACCEPT or \
                type(sock) is not _SOCKET:
            turns = 1
        for _ in range(turns):
            try:
                pair = self.accept()
            except OSError as e:
                if e.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise
                self._pause_accepting(e)
                return
            if pair is None:
                return
            self.handle_accepted(*pair)

    def _accept_queued(self, sock):
        """handle_accept on a real listening socket, with asyncore's and
        the socket's accept the originals: what they do, inlined.  Speed
        fix (W2s, a connection per message): socket.accept() turns the
        listening socket's family and type into enum members on every call
        (~3% of a short connection's instructions), here once per
        listening socket; and rather than end every wake-up with an
        accept() that fails with EAGAIN (an exception, ~3% more), a poll()
        of the listening socket, which the kernel answers without one, says
        whether another connection is queued.  The pair accepted is
        ``_accepted`` while handle_accepted runs (see SMTPChannel.__init__),
        with whether it has TCP_NODELAY from this listening socket (set by
        __init__ before it listened)."""
        global _accepted
        cached = self.__dict__.get('_smtpd_compat_accept')
        if cached is None or cached[0] is not sock:
            poller = None
            if hasattr(select, 'poll'):
                poller = select.poll()
                poller.register(sock, select.POLLIN)
            nodelay = self.__dict__.get('_smtpd_compat_nodelay') is sock
            cached = self._smtpd_compat_accept = (
                sock, sock.family, sock.type, sock.proto, poller, nodelay)
        _, family, type_, proto, poller, nodelay = cached
        for turn in range(_ACCEPTS_PER_WAKEUP):
            if turn and poller is not None and not poller.poll(0):
                return
            try:
                fd, addr = sock._accept()
            except OSError as e:
                # asyncore's accept() returns None for these, and
                # handle_accept then does nothing.
                if e.errno in (errno.EWOULDBLOCK, errno.ECONNABORTED,
                               errno.EAGAIN):
                    return
                if e.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise
                self._pause_accepting(e)
                return
            conn = _SOCKET(family, type_, proto, fileno=fd)
            # As socket.accept() (Python issue 7995).
            if _GETDEFAULTTIMEOUT() is None and sock.gettimeout():
                conn.setblocking(True)
            _accepted = (conn, addr, nodelay)
            try:
                self.handle_accepted(conn, addr)
            finally:
                _accepted = None

    # Deviation (h): when accept() fails for want of descriptors (EMFILE,
    # ENFILE) or kernel memory (ENOBUFS, ENOMEM), asyncore's handle_error
    # closed the *listening* socket and the stdlib served nobody ever
    # again.  Here the server stops accepting for _ACCEPT_PAUSE seconds
    # (the pending connections wait in the listen backlog) and then tries
    # again; every other accept() error is still the stdlib's.
    _accept_resume = 0.0
    # Set by smtpd_compat.workers in each worker process: called with the
    # server before it accepts, True to leave the connection to another.
    _accept_balance = None

    def readable(self):
        if self._accept_resume:
            if time.monotonic() < self._accept_resume:
                return False
            self._accept_resume = 0.0
        return super().readable()

    def _pause_accepting(self, error):
        now = time.monotonic()
        if now >= getattr(self, '_accept_error_logged', -1e9) + 10.0:
            # At most one line per 10 s: a flood must not flood the log.
            self._accept_error_logged = now
            logging.getLogger('smtpd_compat').warning(
                'accept() failed on %s: %s; not accepting for %.2f s',
                self._localaddr, error, _ACCEPT_PAUSE)
        self._stop_accepting(_ACCEPT_PAUSE)

    def _stop_accepting(self, seconds):
        """Accept nothing for ``seconds``: pending connections wait in the
        listen backlog."""
        self._accept_resume = time.monotonic() + seconds
        # smtpd_compat.loop asks readable() only after a handler or timer
        # of this dispatcher ran: a timer bound to it does.  (Looked up,
        # not imported: this module never imports its capabilities; under
        # asyncore.loop readable() is asked on every pass anyway.)
        event_loop = sys.modules.get('smtpd_compat.loop')
        if event_loop is not None:
            event_loop.call_later(seconds, self._resume_accepting,
                                  map=self._map)

    def _resume_accepting(self):
        self._accept_resume = 0.0

    def handle_accepted(self, conn, addr):
        if type(DEBUGSTREAM) is not Devnull or print is not _PRINT or \
                _devnull_watched:       # _debugging(), inlined
            print('Incoming connection from %s' % repr(addr), file=DEBUGSTREAM)
        self.channel_class(self, conn, addr, self.data_size_limit,
                           self._map, self.enable_SMTPUTF8,
                           self._decode_data)

    # API for "doing something useful with the message"
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        """Handle one message; subclasses must override this.

        peer: the client's address as returned by getpeername().
        mailfrom: the envelope sender given in MAIL FROM.
        rcpttos: the list of envelope recipients given in RCPT TO.
        data: the message content, with dot-stuffing undone (RFC 5321
        section 4.5.2) and line ends turned into newlines; bytes, or str
        when the server was made with decode_data=True.

        kwargs: empty with decode_data=True; otherwise ``mail_options`` and
        ``rcpt_options``, the upper-cased parameters of the MAIL command and
        of the last RCPT command (e.g. ['BODY=8BITMIME', 'SMTPUTF8']).

        Return None to answer "250 OK", or a full reply line such as
        "550 No such user" to answer that instead.
        """
        raise NotImplementedError


class DebuggingServer(SMTPServer):

    def _print_message_content(self, peer, data):
        binary = not isinstance(data, str)
        in_headers = True
        for line in data.splitlines():
            if in_headers and not line:
                # The end of the headers: show who sent it.
                peerheader = 'X-Peer: ' + peer[0]
                if binary:
                    peerheader = repr(peerheader.encode('utf-8'))
                print(peerheader)
                in_headers = False
            print(repr(line) if binary else line)

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        print('---------- MESSAGE FOLLOWS ----------')
        if kwargs:
            if kwargs.get('mail_options'):
                print('mail options: %s' % kwargs['mail_options'])
            if kwargs.get('rcpt_options'):
                print('rcpt options: %s\n' % kwargs['rcpt_options'])
        self._print_message_content(peer, data)
        print('------------ END MESSAGE ------------')


class PureProxy(SMTPServer):
    def __init__(self, *args, **kwargs):
        if 'enable_SMTPUTF8' in kwargs and kwargs['enable_SMTPUTF8']:
            raise ValueError("PureProxy does not support SMTPUTF8.")
        super(PureProxy, self).__init__(*args, **kwargs)

    # Deviation (e): the stdlib's signature lacked **kwargs, so every message
    # on a default (decode_data=False) server raised TypeError (bpo-35788);
    # it also could not handle bytes.
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        binary = not isinstance(data, str)
        newline = b'\n' if binary else NEWLINE
        peerheader = 'X-Peer: %s' % peer[0]
        lines = data.split(newline)
        # The X-Peer header goes after the last header line.
        i = 0
        for line in lines:
            if not line:
                break
            i += 1
        lines.insert(i, peerheader.encode('utf-8') if binary else peerheader)
        data = newline.join(lines)
        refused = self._deliver(mailfrom, rcpttos, data)
        print('we got some refusals:', refused, file=DEBUGSTREAM)
        if rcpttos and len(refused) >= len(set(rcpttos)):
            # Every recipient was refused: answer with the upstream reply
            # instead of a false 250 (deviation (e)).  When only some were
            # refused the message was relayed, and 250 stands.
            return _refusal_reply(refused)
        return None

    def _deliver(self, mailfrom, rcpttos, data):
        import smtplib
        refused = {}
        if isinstance(data, bytes):
            # smtplib sends bytes as they are: give it SMTP line ends.
            data = data.replace(b'\r\n', b'\n').replace(b'\r', b'\n')
            data = data.replace(b'\n', b'\r\n')
        else:
            data = data.encode('utf-8')
            data = data.replace(b'\r\n', b'\n').replace(b'\r', b'\n')
            data = data.replace(b'\n', b'\r\n')
        try:
            s = smtplib.SMTP()
            s.connect(self._remoteaddr[0], self._remoteaddr[1])
            try:
                refused = s.sendmail(mailfrom, rcpttos, data)
            finally:
                s.quit()
        except smtplib.SMTPRecipientsRefused as e:
            print('got SMTPRecipientsRefused', file=DEBUGSTREAM)
            refused = e.recipients
        except (OSError, smtplib.SMTPException, UnicodeError) as e:
            print('got', e.__class__, file=DEBUGSTREAM)
            # Every recipient counts as refused; keep the upstream code when
            # there is one, -1 (no reply) otherwise.
            errcode = getattr(e, 'smtp_code', -1)
            errmsg = getattr(e, 'smtp_error', 'ignore')
            if isinstance(e, UnicodeError):
                # Deviation (e): smtplib sends commands in ASCII, so a
                # non-ASCII address cannot go upstream (the stdlib's channel
                # crashed on this).  Retrying will not help: a 5xx.
                errcode, errmsg = 553, _NON_ASCII_RELAY
            for r in rcpttos:
                refused[r] = (errcode, errmsg)
        return refused


_NON_ASCII_RELAY = 'Error: cannot relay a non-ASCII address'


def _refusal_reply(refused):
    """The reply for a message that every recipient refused upstream: the
    first upstream 4xx/5xx reply, or 451 when there was none (connection
    failure), so the sender retries."""
    for code, msg in refused.values():
        if isinstance(code, int) and 400 <= code < 600:
            if isinstance(msg, bytes):
                msg = msg.decode('utf-8', 'replace')
            text = ' '.join(str(msg).split())
            return '%d %s' % (code, text or 'Error: relay refused')
    return '451 Error: could not relay the message'


class Options:
    setuid = True
    classname = 'PureProxy'
    size_limit = None
    enable_SMTPUTF8 = False


# The stdlib's command-line options: (short, long) for getopt.
_SHORTOPTS = 'nVhc:s:du'
_LONGOPTS = ['class=', 'nosetuid', 'version', 'help', 'size=', 'debug',
             'smtputf8']


def _parseargs(argv, extra_longopts=(), cli=False):
    """Parse the stdlib's options plus ``extra_longopts`` (getopt long
    option names).  Returns Options with the extra options, in order, as
    ``options.extra``: a list of (option, value) pairs.

    Errors exit as the stdlib's did (the usage text and the reason; only
    the reason for an invalid size), with status 1.  With ``cli`` (for
    ``python -m smtpd_compat``, which reports errors its own way) every
    error raises getopt.GetoptError instead, and options may also follow
    the addresses, which the stdlib refused (getopt stopped at the first
    address): see docs/deviations.rst."""
    global DEBUGSTREAM

    def fail(msg, plain=False):
        if cli:
            raise getopt.GetoptError(msg)
        if plain:
            print(msg, file=sys.stderr)
            sys.exit(1)
        usage(1, msg)

    longopts = _LONGOPTS + list(extra_longopts)
    if extra_longopts:
        argv = _spell_out_stdlib_prefixes(argv, longopts, permute=cli)
    try:
        opts, args = (getopt.gnu_getopt if cli else getopt.getopt)(
            argv, _SHORTOPTS, longopts)
    except getopt.error as e:
        if cli:
            raise
        usage(1, e)

    options = Options()
    options.extra = []
    for opt, arg in opts:
        if opt in ('-h', '--help'):
            usage(0)
        elif opt in ('-V', '--version'):
            print(__version__)
            sys.exit(0)
        elif opt in ('-n', '--nosetuid'):
            options.setuid = False
        elif opt in ('-c', '--class'):
            options.classname = arg
        elif opt in ('-d', '--debug'):
            DEBUGSTREAM = sys.stderr
        elif opt in ('-u', '--smtputf8'):
            options.enable_SMTPUTF8 = True
        elif opt in ('-s', '--size'):
            try:
                options.size_limit = int(arg)
            except ValueError:
                fail('Invalid size: ' + arg, plain=True)
        else:
            options.extra.append((opt, arg))

    # The positional arguments: [localhost:localport [remotehost:remoteport]]
    if len(args) < 1:
        localspec = 'localhost:8025'
        remotespec = 'localhost:25'
    elif len(args) < 2:
        localspec = args[0]
        remotespec = 'localhost:25'
    elif len(args) < 3:
        localspec = args[0]
        remotespec = args[1]
    else:
        fail('Invalid arguments: %s' % COMMASPACE.join(args))

    options.localhost, options.localport = _hostport(localspec, 'local', fail)
    options.remotehost, options.remoteport = _hostport(remotespec, 'remote', fail)
    return options


def _spell_out_stdlib_prefixes(argv, longopts, permute=False):
    """getopt accepts any unique prefix of a long option.  So that added
    options do not make a prefix the stdlib accepted ambiguous (``--smtp``
    meant --smtputf8 before --smtps existed), a long option that is not a
    full name and is a prefix of exactly one stdlib option is spelled out.
    Walks the arguments as getopt does: up to "--" or the first operand,
    or with ``permute`` (gnu_getopt) past the operands to "--"."""
    names = [o.rstrip('=') for o in longopts]
    stdlib = [o.rstrip('=') for o in _LONGOPTS]
    takes_value = [c for c, nxt in zip(_SHORTOPTS, _SHORTOPTS[1:] + ' ')
                   if nxt == ':' and c != ':']
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == '--':
            break
        if not arg.startswith('-') or arg == '-':
            if not permute:
                break
        elif arg.startswith('--'):
            name, eq, value = arg[2:].partition('=')
            if name and name not in names:
                matches = [o for o in stdlib if o.startswith(name)]
                if len(matches) == 1:
                    name = matches[0]
                    args[i] = '--' + name + eq + value
            matches = [o for o in longopts if o.rstrip('=') == name] or \
                [o for o in longopts if o.startswith(name)]
            if len(matches) == 1 and matches[0].endswith('=') and not eq:
                i += 1      # the value is the next argument
        else:
            for j, char in enumerate(arg[1:], 2):
                if char in takes_value:
                    if j == len(arg):
                        i += 1    # the value is the next argument
                    break
        i += 1
    return args


def _hostport(spec, which, fail=None):
    """Split "host:port" at the first colon; a malformed one goes to
    ``fail`` (default: exit through usage()) with the stdlib's messages.
    "[address]:port" with an IPv6 address (such as [::1]:8025) is taken
    too: the stdlib refused it (its first colon is inside the brackets: Bad
    ... port), so no form the stdlib accepted changes meaning."""
    if fail is None:
        def fail(msg):
            usage(1, msg)
    if spec.startswith('['):
        close = spec.find(']:')
        if close > 1 and ':' in spec[1:close]:
            try:
                return spec[1:close], int(spec[close + 2:])
            except ValueError:
                pass    # the stdlib's message below
    i = spec.find(':')
    if i < 0:
        fail('Bad %s spec: %s' % (which, spec))
    try:
        return spec[:i], int(spec[i+1:])
    except ValueError:
        fail('Bad %s port: %s' % (which, spec))


def parseargs(argv=None):
    """Parse the command line (``sys.argv[1:]`` by default) the way
    ``python -m smtpd`` does; exits through usage() on errors."""
    options = _parseargs(sys.argv[1:] if argv is None else argv)
    del options.extra
    return options


if __name__ == '__main__':
    from smtpd_compat.__main__ import main
    main()

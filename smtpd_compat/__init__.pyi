# Types of the faithful core: the public surface of CPython 3.11's smtpd
# plus the hooks the capability modules (and users' subclasses) override.
#
# Honest: a call is accepted when CPython 3.11's code accepts it and
# rejected when that code fails on it (at once, or on the first message).
# So, where typeshed's stub of the standard library's smtpd was stricter
# than the runtime: ``remoteaddr`` may be None (SMTPServer and
# DebuggingServer never use it; PureProxy, which relays to it, needs a
# (host, port)), ``data_size_limit`` may be None (no limit: the stdlib's own
# command line passes None without -s), and the host to listen on may be
# bytes.  Where that stub was looser: the command argument is None for a
# verb sent without one, mailfrom is None outside a transaction, and the
# content is bytes unless the server was made with decode_data=True.  A
# call that stub rejected and the runtime rejects too is still rejected
# (tests/typing/rejected.py): addresses are tuples with an int port,
# SMTPChannel.push takes str, process_message returns str or None.
#
# The implementation is not annotated (it is kept free of typing imports so
# that it reads like the module it reimplements); tests/test_typing.py runs
# mypy.stubtest to keep these stubs in step with it.
# Module globals, as in the stdlib's smtpd.  asyncore and socket are
# re-exported: the capability modules look them up on this module at call
# time (_smtpd.socket, _smtpd.asyncore), so that a test that rebinds
# smtpd.socket reaches them too.
import asynchat as asynchat
import asyncore as asyncore
import getopt
import re
import socket as socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, NoReturn, Protocol
from typing_extensions import TypeAlias

__all__ = ["SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy"]

# (host, port), as typeshed's smtpd stub had it: a peer, or where to relay.
_Address: TypeAlias = tuple[str, int]
# Where to listen: SMTPServer passes it to socket.getaddrinfo(*localaddr)
# and bind(), which take a str or bytes host and an int port (a list, a
# str port or an IPv6 4-tuple fail there).
_LocalAddress: TypeAlias = tuple[str | bytes, int]
# What asyncore keeps its dispatchers in (asyncore.socket_map is one).
_Map: TypeAlias = dict[int, Any]
# MAIL/RCPT parameters as _getparams returns them: NAME -> value, or True
# for a parameter given without "=value".
_Params: TypeAlias = dict[str, str | bool]

class _TextStream(Protocol):
    # What DEBUGSTREAM must offer: a text stream (sys.stderr, io.StringIO,
    # an open text file) or the default Devnull.
    def write(self, s: str, /) -> object: ...
    def flush(self) -> object: ...

program: str
__version__: str
NEWLINE: str
COMMASPACE: str
DATA_SIZE_DEFAULT: int
# The listen() backlog SMTPServer uses unless given one.
_SOMAXCONN: int

# Devnull notices its attributes being replaced (mock.patch): debug prints
# are then made, so that the replacement sees them.
_devnull_watched: bool

def _watch_devnull() -> None: ...

class _DevnullType(type):
    def __setattr__(cls, name: str, value: object) -> None: ...
    def __delattr__(cls, name: str) -> None: ...

class Devnull(metaclass=_DevnullType):
    def write(self, msg: str) -> None: ...
    def flush(self) -> None: ...
    def __setattr__(self, name: str, value: object) -> None: ...
    def __delattr__(self, name: str) -> None: ...

# Where the debug prints go: ``smtpd.DEBUGSTREAM = sys.stderr`` (or any
# text stream) switches them on.
DEBUGSTREAM: _TextStream

_usage_epilog: str

def usage(code: int, msg: object = "") -> NoReturn: ...
def _debugging() -> bool: ...
def _server_fqdn(server: object) -> str: ...
def _parse_address(arg: str) -> tuple[str, str]: ...
def _refusal_reply(refused: dict[str, tuple[int, bytes | str]]) -> str: ...

_PLAIN_ADDR: re.Pattern[str]

# A placeholder equal to b'' (see handle_read).
_PENDING: bytes

# Where a channel on CPython 3.13 keeps its rarely used attributes (see
# SMTPChannel.__slots__); smtpd_compat.compose.derive uses both for the
# state of a composed class's layers.
class _ColdState:
    conn: Any
    incoming: Any
    fqdn: Any
    peer: Any
    enable_SMTPUTF8: Any
    _map: Any
    _fileno: Any
    mail_options: Any
    rcpt_options: Any
    _on_escape: Any
    accepting: Any
    connecting: Any
def _cold_attribute(name: str, class_default: bool = True,
                    kind: type[_ColdState] | None = None) -> property: ...

class SMTPChannel(asynchat.async_chat):
    COMMAND: ClassVar[int]
    DATA: ClassVar[int]

    command_size_limit: int
    command_size_limits: defaultdict[str, int]
    @property
    def max_command_size_limit(self) -> int: ...

    smtp_server: SMTPServer
    conn: socket.socket
    addr: Any
    # The client's address as getpeername() gave it (or the PROXY header's
    # source): (host, port) for IPv4, (host, port, flowinfo, scope_id) for
    # IPv6, a path string on a UNIX socket (LMTP).
    peer: tuple[Any, ...] | str
    fqdn: str
    # None or 0: no limit.
    data_size_limit: int | None
    enable_SMTPUTF8: bool
    seen_greeting: str
    extended_smtp: bool
    smtp_state: int
    mailfrom: str | None
    rcpttos: list[str]
    mail_options: list[str]
    rcpt_options: list[str]
    require_SMTPUTF8: bool
    num_bytes: int
    # bytes pieces, or str pieces on a decode_data=True channel.
    received_lines: list[bytes | str]
    received_data: bytes | str

    _decode_data: bool
    _data_start: bool
    # Deviations (b)/(c) raise the stdlib's exception from the stdlib's
    # method and note here what to answer should it escape to
    # _handle_input: (exception, reply line or callable or None).
    _on_escape: tuple[BaseException, str | Callable[[], object] | None] | None
    _in_dispatch: bool
    _utf8_pending: bool
    # While True, _handle_input leaves input unprocessed in ac_in_buffer;
    # _handle_input(b'') resumes (work in flight, see threads).
    _input_paused: bool
    # True while reading stopped because replies are queued (a client that
    # does not read them); handle_write resumes.
    _reading_paused: bool
    # What handle_read asks recv() for (set by set_terminator).
    _read_size: int
    # False when a class sits between SMTPChannel and asynchat in the MRO:
    # the overridden asynchat methods then leave the work to super().
    _plain_mro: bool
    _bad_utf8: bool
    _emptystring: bytes | str
    _linesep: bytes | str
    _newline: bytes | str
    # Which BODY values MAIL accepts on a decode_data=False channel.
    _accepted_body_types: tuple[str, ...]

    def __init__(
        self,
        server: SMTPServer,
        conn: socket.socket,
        addr: Any,
        data_size_limit: int | None = 33554432,
        map: _Map | None = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
    ) -> None: ...

    # Hooks: the stdlib has none of these; capability mixins override them
    # and call super().
    def _greet(self) -> None: ...
    def extra_ehlo_keywords(self) -> list[str]: ...
    def check_mail_parameters(self, params: _Params) -> str | None: ...
    def check_rcpt_parameters(self, params: _Params) -> str | None: ...
    def _handle_input(self, data: bytes) -> None: ...
    def _process_data(self, data: bytes | str) -> None: ...
    def _reply_to_message(self, status: str | None, rcpttos: list[str]) -> None: ...
    def _message_kwargs(self) -> dict[str, Any]: ...

    # Give the answer noted for ``err`` (True), or False to let it propagate.
    def _answer_escaped(self, err: BaseException) -> bool: ...
    def _answer_if_escapes(self, err: BaseException, answer: str | Callable[[], object] | None) -> None: ...
    def _collect_answering(self, data: bytes) -> None: ...
    def _decode_incrementally(self, data: bytes) -> None: ...
    # process_message with _message_kwargs(); capability channels wrap it.
    def _call_process_message(
        self, peer: _Address, mailfrom: str, rcpttos: list[str], data: bytes | str
    ) -> str | None: ...
    def _set_post_data_state(self) -> None: ...
    def _set_rset_state(self) -> None: ...
    def _take_line(self) -> bytes | str | None: ...
    # Print a received line on DEBUGSTREAM (AUTH redacts secrets here).
    def _debug_line(self, line: bytes | str | None) -> None: ...
    def _unstuff(self, content: bytes | str) -> bytes | str: ...
    def _unstuff_piece(self, data: bytes) -> bytes: ...
    def _command_limit(self, command: str) -> int: ...
    def _strip_command_keyword(self, keyword: str, arg: str) -> str: ...
    def _getaddr(self, arg: str | None) -> tuple[str, str]: ...
    def _getparams(self, params: list[str]) -> _Params | None: ...
    def _path_argument(
        self, keyword: str, arg: str | None, syntaxerr: str
    ) -> tuple[str, str] | tuple[None, None]: ...

    # A reply line without its CRLF (async_chat.push takes bytes).
    def push(self, msg: str) -> None: ...  # type: ignore[override]
    def set_terminator(self, term: bytes | int | None) -> None: ...
    def readable(self) -> bool: ...
    def _queued_output(self) -> int: ...
    def initiate_send(self) -> None: ...
    def handle_write(self) -> None: ...
    def handle_read(self) -> None: ...
    def collect_incoming_data(self, data: bytes) -> None: ...
    def found_terminator(self) -> None: ...

    # The verbs.  ``arg`` is typed str as in typeshed's stub, so that a call
    # it rejected (smtp_HELO(None)) is rejected here too, and overrides
    # written against it still check; at run time a verb sent without an
    # argument gets None, which an override must handle.
    def smtp_HELO(self, arg: str) -> None: ...
    def smtp_EHLO(self, arg: str) -> None: ...
    def smtp_NOOP(self, arg: str) -> None: ...
    def smtp_QUIT(self, arg: str) -> None: ...
    def smtp_HELP(self, arg: str) -> None: ...
    def smtp_VRFY(self, arg: str) -> None: ...
    def smtp_MAIL(self, arg: str) -> None: ...
    def smtp_RCPT(self, arg: str) -> None: ...
    def smtp_RSET(self, arg: str) -> None: ...
    def smtp_DATA(self, arg: str) -> None: ...
    def smtp_EXPN(self, arg: str) -> None: ...

class SMTPServer(asyncore.dispatcher):
    channel_class: type[SMTPChannel]
    # None or 0: no limit.
    data_size_limit: int | None
    enable_SMTPUTF8: bool
    # (host, port), or the path of LMTPServer's UNIX socket.
    _localaddr: _LocalAddress | str
    _remoteaddr: _Address | None
    _decode_data: bool
    _map: _Map
    # While accept() fails for lack of resources: when to try again.
    _accept_resume: float
    _accept_balance: Callable[[SMTPServer], bool] | None
    # remoteaddr is only stored (PureProxy relays to it): None, as the
    # stdlib's documentation and countless scripts pass it, is fine.
    def __init__(
        self,
        localaddr: _LocalAddress,
        remoteaddr: _Address | None,
        data_size_limit: int | None = 33554432,
        map: _Map | None = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        *,
        backlog: int | None = None,
    ) -> None: ...
    def readable(self) -> bool: ...
    def handle_accept(self) -> None: ...
    def _pause_accepting(self, error: OSError) -> None: ...
    def _stop_accepting(self, seconds: float) -> None: ...
    def _resume_accepting(self) -> None: ...
    def handle_accepted(self, conn: socket.socket, addr: Any) -> None: ...
    # Return None for "250 OK", or a whole reply line.  ``data`` is bytes,
    # or str on a decode_data=True server; kwargs are mail_options and
    # rcpt_options (lists of str) unless decode_data=True.
    def process_message(
        self, peer: _Address, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> str | None: ...

class DebuggingServer(SMTPServer):
    def _print_message_content(self, peer: _Address, data: bytes | str) -> None: ...

class PureProxy(SMTPServer):
    # SMTPServer's arguments (the runtime __init__ passes everything on),
    # except that remoteaddr is where every message is relayed: None fails
    # on the first message.
    _remoteaddr: _Address
    def __init__(
        self,
        localaddr: _LocalAddress,
        remoteaddr: _Address,
        data_size_limit: int | None = 33554432,
        map: _Map | None = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        *,
        backlog: int | None = None,
    ) -> None: ...
    def _deliver(
        self, mailfrom: str, rcpttos: list[str], data: bytes | str
    ) -> dict[str, tuple[int, bytes | str]]: ...

class Options:
    setuid: bool
    classname: str
    size_limit: int | None
    enable_SMTPUTF8: bool
    # Set by parseargs():
    localhost: str
    localport: int
    remotehost: str
    remoteport: int
    # Set by _parseargs(): the options beyond the stdlib's, in order.
    extra: list[tuple[str, str]]

# With cli=True errors raise getopt.GetoptError and options may follow
# the addresses (python -m smtpd_compat); else errors exit as the stdlib's.
def _parseargs(argv: list[str], extra_longopts: Iterable[str] = (), cli: bool = False) -> Options: ...
def _spell_out_stdlib_prefixes(argv: Sequence[str], longopts: Sequence[str], permute: bool = False) -> list[str]: ...
def _hostport(spec: str, which: str, fail: Callable[[str], NoReturn] | None = None) -> tuple[str, int]: ...
def parseargs(argv: list[str] | None = None) -> Options: ...

"""Run an SMTP server in a background thread, and catch mail in tests.

:class:`Controller` owns one server, its own socket map and one thread.
``start()`` binds in the caller's thread (so a bad address raises there) and
returns once the loop thread is serving; ``stop()`` closes the listener and
every open session and joins the thread.  Nothing is shared between two
Controllers, so any number can run side by side.

:class:`CapturingServer` records every message it receives in a
:class:`Mailbox`, a thread-safe sequence of :class:`CapturedMessage` with a
``wait_for(n, timeout)`` helper.  The ``smtpd`` pytest fixture
(:mod:`smtpd_compat.pytest_plugin`) is a started Controller running one.

The store is the web inbox's (:class:`smtpd_compat.web.Inbox`, of which
Mailbox is one without bounds): a Controller with ``web=`` shows in its
page the very store that ``controller.messages`` is.
"""
from __future__ import annotations

import email.message
import email.parser
import email.policy
import logging
import select
import socket
import threading
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple,
                    Type, TypeVar, Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat import loop as _loop
from smtpd_compat.compose import compose_server, derive
from smtpd_compat.web import WebInboxServerMixin
from smtpd_compat.web.store import DEFAULT_MAX_PARSE_BYTES, Inbox, StoredMessage

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    'Controller', 'CapturingServer', 'CapturedMessage', 'Mailbox',
    'with_capture',
]

log = logging.getLogger(__name__)

#: A plain callable that handles messages: called like process_message.
Handler = Callable[..., Optional[str]]

# What asyncore keeps its dispatchers in (the server's own map here).
_Map = Dict[int, Any]
_ServerClass = TypeVar('_ServerClass', bound=Type[_smtpd.SMTPServer])


# ---------------------------------------------------------------------------
# Message capture

class CapturedMessage(StoredMessage):
    """One message as the server received it.

    Made from the arguments of ``process_message``: ``peer``, ``mailfrom``,
    ``rcpttos``, ``data``, and ``kwargs`` (every keyword it got).  From
    those: ``mail_options`` and ``rcpt_options``, the MAIL and (last) RCPT
    parameters (empty lists with ``decode_data=True``, where the stdlib
    does not pass them), and ``auth_user``, the login of an authenticated
    client (:mod:`smtpd_compat.auth`; None otherwise).

    It also behaves like the parsed :class:`email.message.EmailMessage`
    (``email.policy.default``): ``msg["Subject"]``, ``"To" in msg`` and every
    attribute not listed here (``get_content()``, ``get_body()``,
    ``get_all()`` ...) go to :attr:`message`.

    It is a :class:`smtpd_compat.web.StoredMessage` (what the web inbox
    keeps; the store of captured mail is an
    :class:`~smtpd_compat.web.Inbox`), so it also has an ``id``, ``raw``
    (the bytes as received: ``data`` itself, or ``data`` encoded when it
    is str), ``received`` (a timestamp), ``read`` and ``tags``, and a page
    can show it.
    """

    def __init__(self, peer: Any, mailfrom: str, rcpttos: List[str],
                 data: Union[bytes, str], **kwargs: Any) -> None:
        auth_user: Optional[str] = kwargs.get('auth_user')
        super().__init__(
            # (What the web inbox keeps of a decode_data=True message.)
            data.encode('utf-8', 'surrogateescape') if isinstance(data, str) else data,
            mailfrom, rcpttos, peer, username=auth_user or '')
        self.data = data
        self.kwargs = kwargs
        self.mail_options = list(kwargs.get('mail_options') or ())
        self.rcpt_options = list(kwargs.get('rcpt_options') or ())
        self.auth_user = auth_user
        self._message: Optional[email.message.EmailMessage] = None

    @property
    def message(self) -> email.message.EmailMessage:
        """The parsed :class:`email.message.EmailMessage`.

        Parsed on first use, in the caller's thread: the server thread never
        pays for it, and a message the parser dislikes cannot disturb the
        session that delivered it.
        """
        if self._message is None:
            # What email.message_from_string/bytes(policy=default) do.
            factory, policy = email.message.EmailMessage, email.policy.default
            if isinstance(self.data, str):
                parsed = email.parser.Parser(
                    factory, policy=policy).parsestr(self.data)
            else:
                parsed = email.parser.BytesParser(
                    factory, policy=policy).parsebytes(self.data)
            self._message = parsed
        return self._message

    def __getitem__(self, name: str) -> Any:
        return self.message[name]

    def __contains__(self, name: str) -> bool:
        return name in self.message

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class does not define.  Private and
        # dunder names are refused: copy/pickle probe for __setstate__ and
        # friends, and must not set off a parse (or recurse on an instance
        # whose __init__ has not run).
        if name.startswith('_'):
            raise AttributeError(name)
        return getattr(self.message, name)

    def __repr__(self) -> str:
        return '<CapturedMessage from %r to %r, %d bytes>' % (
            self.mailfrom, self.rcpttos, len(self.data))


class Mailbox(Inbox[CapturedMessage]):
    """The store a :class:`CapturingServer` records into (when it has no
    web inbox to share): an :class:`~smtpd_compat.web.Inbox` of
    :class:`CapturedMessage`, without bounds and without ingest (nothing
    is parsed unless a test asks; no thread is started), by default.

    The server thread appends; tests read.  Indexing (oldest first),
    ``len()`` and iteration see a consistent snapshot.  It compares equal
    to a list of the same messages (``assert smtpd.messages == []``).
    Asking for a message that has not arrived raises :class:`IndexError`
    saying so, with a pointer to :meth:`~smtpd_compat.web.Inbox.wait_for`:
    mail sent from another thread or process may still be on its way.
    ``clear()`` forgets every message.  The keywords are the Inbox's.
    """

    def __init__(self, max_messages: Optional[int] = None,
                 max_bytes: Optional[int] = None,
                 max_parse_bytes: int = DEFAULT_MAX_PARSE_BYTES,
                 path: Optional[str] = None, ingest: bool = False) -> None:
        super().__init__(max_messages, max_bytes, max_parse_bytes, path, ingest)


class CapturingServer(_smtpd.SMTPServer):
    """An SMTPServer that records every message in ``messages``.

    Every message that reaches the end of DATA is recorded, then answered
    with ``reply`` (None, the default, means "250 OK"; give e.g.
    ``'550 No such user here'`` to test how a client handles refusals).
    Takes the stdlib SMTPServer arguments; it cooperates with other server
    classes and mixins (see :func:`with_capture`).

    ``messages`` is a :class:`Mailbox`, or, on a server that also has the
    web inbox (:class:`smtpd_compat.web.WebInboxServerMixin`, in either
    order of the bases: ``Controller(web=...)`` composes one), that
    inbox itself: one store, which the page shows and the test reads.
    The capture records every message there (those ``reply`` refuses
    too, with their MAIL and RCPT parameters); the inbox's own
    after-accept hook then adds nothing.
    """

    messages: Inbox[CapturedMessage]

    def __init__(self, *args: Any, reply: Optional[str] = None,
                 **kwargs: Any) -> None:
        if reply is not None and not (
                isinstance(reply, str) and reply[:3].isdigit()):
            raise ValueError('reply must be None or a full SMTP reply line '
                             'such as "550 No such user", not %r' % (reply,))
        self.reply = reply
        super().__init__(*args, **kwargs)
        # After super(): the web inbox's __init__ has run by now, whether
        # its class comes before or after this one.
        if isinstance(self, WebInboxServerMixin):
            # The inbox records into itself what the capture records.
            self.messages = cast('Inbox[CapturedMessage]', self.inbox)
            self.inbox_records_accepted = False
        else:
            self.messages = Mailbox()

    # With smtpd_compat.auth's server mixin: also pass auth_user.
    auth_user_kwarg = True

    def process_message(self, peer: _smtpd._Address, mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        self.messages.append(
            CapturedMessage(peer, mailfrom, rcpttos, data, **kwargs))
        return self.reply


def with_capture(server_class: _ServerClass) -> _ServerClass:
    """``server_class`` with message capture in front of it.

    Returns ``server_class`` itself when it already captures; otherwise a
    subclass whose ``process_message`` records (instead of the original's)
    and which takes CapturingServer's ``reply`` keyword besides the
    original's.  Use it to catch mail on a TLS or AUTH server class.
    """
    # (A flag: with issubclass() in the condition some mypy versions narrow
    # server_class and lose its own type for the return.)
    captures = issubclass(server_class, CapturingServer)
    if captures:
        return server_class
    if not issubclass(server_class, _smtpd.SMTPServer):
        raise TypeError('with_capture() needs an SMTPServer subclass, not %r'
                        % (server_class,))
    return derive(server_class, (CapturingServer,),
                  'Capturing' + server_class.__name__)


class _HandlerServer(_smtpd.SMTPServer):
    """Hands every message to a plain callable (see Controller)."""

    def __init__(self, *args: Any, handler: Handler, **kwargs: Any) -> None:
        self.handler = handler
        super().__init__(*args, **kwargs)

    def process_message(self, peer: _smtpd._Address, mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        return self.handler(peer, mailfrom, rcpttos, data, **kwargs)


# ---------------------------------------------------------------------------
# The controller

def _default_loop() -> Callable[..., None]:
    """The loop a Controller serves its map with: smtpd_compat.loop's.
    (Its wake-up works under plain asyncore.loop too, which the tests
    check by replacing this.)"""
    return _loop.loop


def _connectable(host: str) -> str:
    """The address clients should dial to reach a server bound to ``host``:
    the loopback address for a wildcard bind (dialling 0.0.0.0 works on
    Linux only)."""
    if host in ('', '0.0.0.0'):
        return '127.0.0.1'
    if host == '::':
        return '::1'
    return host


class Controller:
    """Run one SMTP server in a background thread.

    ``handler`` is one of

    * ``None``: a :class:`CapturingServer` (see :attr:`messages`);
    * an :class:`smtpd_compat.SMTPServer` subclass (any server class: the
      stdlib's, a capability's, your own);
    * a plain callable, called as ``handler(peer, mailfrom, rcpttos, data,
      **kwargs)`` like ``process_message`` and returning its reply (None
      for "250 OK").  It runs in the server thread.

    The server is built at :meth:`start` as ``server_class((hostname, port),
    remoteaddr, map=<its own map>, **server_kwargs)``; ``server_kwargs`` are
    the stdlib's (``data_size_limit``, ``enable_SMTPUTF8``,
    ``decode_data``) and whatever the class adds; ``web=(host, port)`` also
    shows the messages in a web inbox (:mod:`smtpd_compat.web`, see
    ``web_url``).  ``port=0`` (the default)
    lets the system choose a free port; read the real one from :attr:`port`
    after start.  ``remoteaddr`` is the stdlib's second argument (only
    PureProxy uses it).  ``ready_timeout`` bounds how long start() waits for
    the thread to serve and stop() for it to end.  Use as a context manager,
    or call start() and stop().
    """

    def __init__(self,
                 handler: Union[None, Type[_smtpd.SMTPServer], Handler] = None,
                 hostname: str = '127.0.0.1', port: int = 0, *,
                 remoteaddr: Any = None, ready_timeout: float = 5.0,
                 **server_kwargs: Any) -> None:
        if handler is None:
            server_class: Type[_smtpd.SMTPServer] = CapturingServer
        elif isinstance(handler, type):
            if not issubclass(handler, _smtpd.asyncore.dispatcher):
                raise TypeError('Controller needs an SMTPServer subclass or '
                                'a callable, not the class %r' % (handler,))
            server_class = handler
        elif callable(handler):
            server_class = _HandlerServer
            server_kwargs['handler'] = handler
        else:
            raise TypeError('Controller needs an SMTPServer subclass or a '
                            'callable, not %r' % (handler,))
        if server_kwargs.get('web') is not None:
            # web=(host, port) brings the web inbox along (smtpd_compat.web);
            # a capturing server shares its store with it.
            server_class = compose_server(server_class, [WebInboxServerMixin])
        self.server_class = server_class
        self.server_kwargs = server_kwargs
        self.remoteaddr = remoteaddr
        self.ready_timeout = ready_timeout
        self._bind = (hostname, port)
        #: The running (or last) server instance; None before start().
        self.server: Any = None
        #: The address clients connect to (set by start(); the loopback
        #: address when bound to a wildcard address).
        self.hostname: str = hostname
        #: The port clients connect to: the real one after start(), also
        #: when 0 was asked for.
        self.port: int = port
        self._thread: Optional[threading.Thread] = None
        # The server map's services (smtpd_compat.loop) while it runs:
        # start() and stop() reach the loop thread through its wake-up.
        self._services: Optional[_loop.LoopServices] = None
        self._error: Optional[BaseException] = None
        # Serialises start() and stop(), so two threads stopping at once
        # join one thread once.
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------

    def start(self) -> Self:
        """Bind, start the thread, and return once the server is serving.

        Raises OSError naming the address when it cannot listen there, and
        RuntimeError when already started.  After stop(), start() runs a new
        server (on a new port when the port was 0).
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError('%r is already started' % (self,))
            map: _Map = {}
            woken = threading.Event()
            server = self._make_server(map)
            services = _loop.services(map)
            # The wake-up stays in the map, and the loop runs, until stop().
            services.hold()
            self.server = server
            # (A server has its listening socket once it is made.)
            sock = cast(socket.socket, server.socket)
            name = sock.getsockname()
            if isinstance(name, tuple):
                host, port = name[:2]
                self.hostname, self.port = _connectable(host), port
                where = '%s:%d' % (host, port)
            else:
                # An AF_UNIX socket (LMTPServer's unix_socket=): its path.
                self.hostname, where = name, name
            self._services = services
            self._error = None
            thread = threading.Thread(
                target=self._serve, args=(_default_loop(), map, woken),
                name='smtpd_compat.Controller %s' % where,
                daemon=True)
            self._thread = thread
            thread.start()
            # The loop runs this once it polls, and it polls the listener
            # too: from here on a queued connection is accepted within one
            # pass.  (No probe connection: it would reach the server's
            # handle_accepted, and a PROXY-protocol or implicit-TLS server
            # would not greet it.)
            services.call_soon_threadsafe(woken.set)
            if not woken.wait(self.ready_timeout) or self._error is not None:
                error = self._error
                self._stop_locked()
                if error is not None:
                    raise RuntimeError('the server thread of %r failed'
                                       % (self,)) from error
                raise RuntimeError('the server thread of %r did not start '
                                   'within %s s' % (self, self.ready_timeout))
        return self

    def _make_server(self, map: _Map) -> _smtpd.SMTPServer:
        host, port = self._bind
        try:
            return self.server_class((host, port), self.remoteaddr, map=map,
                                     **self.server_kwargs)
        except OSError as e:
            # The stdlib's message ("[Errno 98] Address already in use")
            # does not say which address; a test log should.
            raise OSError(e.errno, 'cannot listen on %s port %s: %s' % (
                host, port, e.strerror or e)) from e

    def _serve(self, loop: Callable[..., object], map: _Map,
               woken: threading.Event) -> None:
        # The server thread.  The loop runs until the map is empty, which
        # stop() brings about; one loop() call for the whole life keeps
        # what smtpd_compat.loop learns between wake-ups.
        # poll (for asyncore's loop) has no FD_SETSIZE limit.
        services = _loop.services(map)
        try:
            loop(30.0, hasattr(select, 'poll'), map)
        except BaseException as e:
            self._error = e
            log.exception('the server loop of %r failed', self)
        finally:
            # After a failure: close what the loop left open, and let go of
            # the wake-up (stop() does both on the way out).
            if map:
                self._close_all(services)
            # One more call of smtpd_compat.loop's loop, on the now empty
            # map, returns at once; it lets the map's services release what
            # they hold (the selector), so no descriptor outlives the
            # server.
            try:
                _loop.loop(0, False, map, 1)
            except Exception:
                log.exception('the server loop of %r failed on an empty map', self)
            woken.set()

    @staticmethod
    def _close_all(services: _loop.LoopServices) -> None:
        # On the loop thread: every session, the listener and the wake-up.
        # The loop returns once the map is empty.
        services.release()
        _smtpd.asyncore.close_all(map=services.map, ignore_all=True)
        services.map.clear()

    def stop(self) -> None:
        """Close the listener and every open session, and join the thread.

        Idempotent, safe to call from several threads, and a no-op before
        start().  Raises RuntimeError if the thread does not finish within
        ``ready_timeout`` (e.g. a handler blocked forever).
        """
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        thread = self._thread
        services = self._services
        if thread is None or services is None:
            return
        # (Refused when the loop has ended already: nothing left to close.)
        services.call_soon_threadsafe(self._close_all, services)
        if thread is threading.current_thread():
            # stop() from a handler: the loop ends after this pass.
            return
        thread.join(self.ready_timeout)
        if thread.is_alive():
            raise RuntimeError('the server thread of %r did not stop within '
                               '%s s' % (self, self.ready_timeout))
        self._thread = None
        self._services = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- conveniences -------------------------------------------------------

    @property
    def host(self) -> str:
        """Same as :attr:`hostname`."""
        return self.hostname

    @property
    def address(self) -> Tuple[str, int]:
        """``(hostname, port)``, e.g. for ``logging.handlers.SMTPHandler``."""
        return (self.hostname, self.port)

    @property
    def messages(self) -> Inbox[CapturedMessage]:
        """The captured messages (servers made by :func:`with_capture` or
        :class:`CapturingServer` only): a :class:`Mailbox`, or with
        ``web=`` the web inbox, which holds the same messages."""
        mailbox = getattr(self.server, 'messages', None)
        if not isinstance(mailbox, Inbox):
            raise AttributeError('%r does not capture messages (use '
                                 'CapturingServer or with_capture())' % (self,))
        return mailbox

    @property
    def web_url(self) -> str:
        """The web inbox's URL (servers with
        :class:`smtpd_compat.web.WebInboxServerMixin` only, e.g. the
        ``web=('127.0.0.1', 0)`` keyword of the ``smtpd`` fixture)."""
        url: Optional[str] = getattr(self.server, 'web_url', None)
        if url is None:
            raise AttributeError('%r has no web inbox (give web=(host, port) '
                                 'or use smtpd_compat.web.WebInboxServerMixin)'
                                 % (self,))
        return url

    def clear(self) -> None:
        """Forget the captured messages."""
        self.messages.clear()

    def wait_for(self, n: int = 1, timeout: float = 5.0) -> List[CapturedMessage]:
        """See :meth:`smtpd_compat.web.Inbox.wait_for`."""
        return self.messages.wait_for(n, timeout)

    def __repr__(self) -> str:
        state = 'running' if self._thread is not None else 'stopped'
        return '<Controller %s %s:%s %s>' % (
            self.server_class.__name__, self.hostname, self.port, state)

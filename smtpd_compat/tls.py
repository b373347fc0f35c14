"""TLS for the asyncore channel: STARTTLS (RFC 3207) and implicit TLS
(RFC 8314, the "submissions" port 465), opt-in.

:class:`TLSServerMixin` takes an :class:`ssl.SSLContext` and either

* offers ``STARTTLS`` in the EHLO reply while the session is plaintext
  (optionally refusing mail commands until the client has used it:
  ``require_starttls=True``), or
* with ``implicit_tls=True``, starts the TLS handshake as soon as a
  connection is accepted and sends the 220 greeting only once it is done.

The handshake runs inside the asyncore loop: the socket is wrapped with
``do_handshake_on_connect=False`` and ``do_handshake()`` is called again on
every readable/writable event until it completes, so a client that stalls
in the middle of its handshake holds up nobody else.  A failed handshake
closes that connection only; the reason is logged on the
``smtpd_compat.tls`` logger (and printed on DEBUGSTREAM), never as a
traceback.

``channel.tls_active`` tells whether the session is encrypted; the AUTH
capability (:mod:`smtpd_compat.auth`) reads it.
"""
from __future__ import annotations

import logging
import socket
import ssl
from typing import (TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple, Type,
                    Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat.compose import UNSET, CapabilityServerMixin, Unset, setting
from smtpd_compat.logging_ import format_peer, safe
from smtpd_compat.session import LAYERS, SessionStateMixin
from smtpd_compat.threads import OffloadChannelMixin

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    # Typed as what it is composed into (a SessionStateMixin, and so an
    # SMTPChannel); at run time a plain mixin.
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

__all__ = [
    'TLSChannelMixin', 'TLSServerMixin', 'TLSServer', 'server_context',
]

logger = logging.getLogger(__name__)

# The states of a channel's transport (``_tls_phase``):
#
#   None         plaintext; STARTTLS not (yet) asked for
#   'flush'      STARTTLS answered with 220; waiting until that reply has
#                left the socket, reading nothing (RFC 3207 section 4: the
#                client starts the handshake only after the 220, so every
#                byte that could arrive now is pipelined plaintext)
#   'handshake'  socket wrapped; do_handshake() driven by socket events
#   'active'     handshake done; recv/send go through the SSL socket
#
# implicit TLS goes straight from None to 'handshake' in _greet().

# Bound on how many times one read event drains plaintext that OpenSSL
# already decrypted and holds (SSLSocket.pending()); no socket event would
# announce it.  One TLS record is at most 16 KiB and each read asks for
# that much (_TLS_RECORD_MAX), so one extra read is the usual maximum.
_MAX_PENDING_READS = 16
# The most plaintext a TLS record holds (RFC 8446 section 5.1, RFC 5246
# section 6.2.1: 2**14 bytes), so the most one read of the SSL object
# returns.
_TLS_RECORD_MAX = 16384

_TLS_ALREADY = '503 5.5.1 Error: TLS already active'
_STARTTLS_FIRST = '530 5.7.0 Must issue a STARTTLS command first'


def _debug(text: str) -> None:
    print(text, file=_smtpd.DEBUGSTREAM)


class TLSChannelMixin(_ChannelBase):
    """Channel mixin: the STARTTLS verb and reading/writing through TLS.

    Reads its configuration from the server: ``tls_context``,
    ``implicit_tls``, ``require_starttls``, ``tls_handshake_timeout``.
    """

    layer = LAYERS['tls']
    capability_name = 'TLS'
    smtp_server: TLSServerMixin
    # None (plaintext), 'flush', 'handshake' or 'active': see above.
    _tls_phase: Optional[str] = None
    _tls_want_write = False
    instance_state = ('_tls_phase', '_tls_want_write')
    # What readable() and writable() skip in this class (see _inner_of).
    _tls_inner: Tuple[Any, ...] = (None, None, None, None)
    # async_chat's queue of output (typeshed's asynchat stub, used up to
    # Python 3.11, does not declare it).
    producer_fifo: Deque[Any]

    @property
    def tls_active(self) -> bool:
        """True once the TLS handshake has completed on this session."""
        return self._tls_phase == 'active'

    # -- greeting and EHLO ------------------------------------------------

    def _greet(self) -> None:
        if self.smtp_server.implicit_tls and self._tls_phase is None:
            # RFC 8314 section 3.3: TLS starts immediately on connect; the
            # SMTP greeting is the first thing sent inside it.
            self._tls_start()
            return
        super()._greet()

    def extra_ehlo_keywords(self) -> List[str]:
        keywords = super().extra_ehlo_keywords()
        # RFC 3207 section 4.2: STARTTLS is not advertised once TLS is on.
        if self._tls_phase is None and not self.smtp_server.implicit_tls:
            keywords = keywords + ['STARTTLS']
        return keywords

    # -- the verb ---------------------------------------------------------

    def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            self.push('501 5.5.4 Syntax: STARTTLS')
            return
        if self._tls_phase is not None or self.smtp_server.implicit_tls:
            self.push(_TLS_ALREADY)
            return
        if not self.seen_greeting:
            self.push('503 Error: send HELO first')
            return
        # Anything the client sent after STARTTLS before the handshake is
        # plaintext an attacker may have injected (the command-injection
        # flaw of CVE-2011-0411 and kin): throw away what is buffered...
        self.ac_in_buffer = b''
        # ... and read nothing more until the socket is wrapped ('flush').
        self._tls_phase = 'flush'
        self.push('220 2.0.0 Ready to start TLS')

    # require_starttls: RFC 3207 section 4 lets a server refuse mail
    # commands on a plaintext session with 530.

    def _tls_refused(self) -> bool:
        if self.smtp_server.require_starttls and not self.tls_active:
            self.push(_STARTTLS_FIRST)
            return True
        return False

    # (An encrypted session, the usual case, is let through without the
    # call, while tls_active is this layer's own.)

    def smtp_MAIL(self, arg: str) -> None:
        if (self._tls_phase == 'active' and type(self).tls_active is _TLS_ACTIVE
                ) or not self._tls_refused():
            super().smtp_MAIL(arg)

    def smtp_RCPT(self, arg: str) -> None:
        if (self._tls_phase == 'active' and type(self).tls_active is _TLS_ACTIVE
                ) or not self._tls_refused():
            super().smtp_RCPT(arg)

    def smtp_DATA(self, arg: str) -> None:
        if (self._tls_phase == 'active' and type(self).tls_active is _TLS_ACTIVE
                ) or not self._tls_refused():
            super().smtp_DATA(arg)

    # -- switching the socket to TLS ---------------------------------------

    def initiate_send(self) -> None:
        if self._tls_phase == 'active':
            # Speed fix: on an encrypted session, what the layers inside
            # this one, the core and asynchat do here, while each of their
            # initiate_send methods is the original (see _inner) and
            # none is patched: the session layer's wait while a read is
            # processed, and asynchat's send of the one reply queued, with
            # the same call to self.send() and the same handling of its
            # result.  Anything else (several replies to join, a producer,
            # a reply longer than ac_out_buffer_size) takes the long way.
            known = type(self)._tls_inner
            if known[0] is not type(self):
                known = _inner_of(type(self))
            span = known[3]
            # (While a read is processed the session's wait is all the long
            # way does: the core's and asynchat's methods are looked at
            # only for a send.)
            if span is not None \
                    and SessionStateMixin.initiate_send is _SESSION_INITIATE_SEND \
                    and (not span or _absent(span, 'initiate_send')):
                if self._batching:
                    return      # the session layer sends after the read
                if _CHAT.initiate_send is _CHAT_INITIATE_SEND \
                        and _CORE.initiate_send is _CORE_INITIATE_SEND:
                    fifo = self.producer_fifo
                    if len(fifo) == 1 and self.connected:
                        first = fifo[0]
                        if type(first) is bytes and \
                                0 < len(first) <= self.ac_out_buffer_size:
                            try:
                                sent = self.send(first)
                            except OSError:
                                self.handle_error()
                                return
                            if sent:
                                if sent < len(first):
                                    fifo[0] = first[sent:]
                                else:
                                    del fifo[0]
                            return
        super().initiate_send()
        if self._tls_phase == 'flush' and not self.producer_fifo and self.connected:
            self._tls_start()

    def _tls_start(self) -> None:
        """Wrap the socket (the 220 to STARTTLS has been sent, or the
        connection is new on an implicit-TLS server) and begin the
        handshake."""
        try:
            wrapped = self.smtp_server.tls_context.wrap_socket(
                cast(socket.socket, self.socket),   # (a channel's is set)
                server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as e:
            self._tls_failed(e)
            return
        # Same file descriptor: set_socket() just rebinds the map entry.
        self.set_socket(wrapped)
        self.conn = wrapped
        self._tls_phase = 'handshake'
        # The connection's one deadline covers the handshake: its own
        # timeout, else the idle timeout of a server with limits.
        server = self.smtp_server
        self.set_deadline(server.tls_handshake_timeout
                          or getattr(server, 'idle_timeout', None), 'tls')
        self._tls_handshake()

    @property
    def _tls_socket(self) -> ssl.SSLSocket:
        # The socket, wrapped by _tls_start (in the 'handshake' and
        # 'active' phases).
        return cast(ssl.SSLSocket, self.socket)

    def _tls_handshake(self) -> None:
        """One step of the non-blocking handshake."""
        try:
            self._tls_socket.do_handshake()
        except ssl.SSLWantReadError:
            self._tls_want_write = False
            return
        except ssl.SSLWantWriteError:
            self._tls_want_write = True
            return
        except (OSError, ValueError) as e:
            # SSLError (a non-TLS client, no shared cipher, ...), EOF or a
            # reset: this connection only.
            self._tls_failed(e)
            return
        self._tls_phase = 'active'
        self._tls_want_write = False
        self.reset_idle_deadline()
        sock = self._tls_socket
        cipher = sock.cipher()
        _debug('TLS established with %r: %s %s' % (
            self.peer, sock.version(), cipher[0] if cipher else None))
        if self.smtp_server.implicit_tls:
            super()._greet()
        else:
            # RFC 3207 section 4.2: after the handshake the server forgets
            # everything learnt from the client before it; the session
            # (and AUTH) know what that is.
            self.reset_session()
        # The client may already have sent its first command behind its
        # Finished message, and OpenSSL may hold it decrypted.
        if self.connected and sock.pending():
            self.handle_read()

    def _tls_failed(self, error: object) -> None:
        logger.info('TLS handshake with %s failed: %s', format_peer(self.peer),
                    safe(error))
        _debug('TLS handshake with %r failed: %s' % (self.peer, error))
        self.close()

    def handle_timeout(self, phase: Optional[str]) -> None:
        if phase == 'tls' and self._tls_phase == 'handshake' and self.connected:
            self.close_reason = 'tls handshake timeout'
            self._tls_failed('no handshake within %s seconds'
                             % (self.smtp_server.tls_handshake_timeout
                                or getattr(self.smtp_server, 'idle_timeout',
                                           None)))
            return
        super().handle_timeout(phase)

    # -- asyncore plumbing -------------------------------------------------

    # Speed fix (issue 20): the loop asks readable() and writable() after
    # every event, and readable() went through the threads layer and the
    # session before the core's.  While what lies between this layer and
    # the core (readable) or asynchat (writable) is as composed -- the
    # threads layer's and the session's readable() their originals, no
    # other class there with a method of that name, checked on every call
    # (see _inner) -- this layer does what they do itself (not while
    # waiting for a worker or closing) and calls the core's readable() or
    # asynchat's writable() as they would have: the same answer, the same
    # calls of the core and asynchat.

    def readable(self) -> bool:
        if self._tls_phase == 'flush':
            return False
        known = type(self)._tls_inner
        if known[0] is not type(self):
            known = _inner_of(type(self))
        inner = known[1]
        if inner is not None \
                and OffloadChannelMixin.readable is _THREADS_READABLE \
                and SessionStateMixin.readable is _SESSION_READABLE \
                and (not inner or _absent(inner, 'readable')):
            if self.closing or self.waiting:
                return False
            return _CORE.readable(self)
        return super().readable()

    def writable(self) -> bool:
        if self._tls_phase == 'handshake':
            return self._tls_want_write
        known = type(self)._tls_inner
        if known[0] is not type(self):
            known = _inner_of(type(self))
        inner = known[2]
        if inner is not None and (not inner or _absent(inner, 'writable')):
            return _CHAT.writable(self)  # type: ignore[no-any-return]
        return super().writable()

    def handle_read(self) -> None:
        if self._tls_phase == 'handshake':
            self._tls_handshake()
            return
        super().handle_read()
        # Plaintext that OpenSSL already decrypted raises no socket event.
        for _ in range(_MAX_PENDING_READS):
            if not (self._tls_phase == 'active' and self.connected):
                break
            # (The wrapped socket: the 'active' phase has one.  Any: its SSL
            # object is not in typeshed's SSLSocket.)
            sock: Any = self.socket
            # (SSLSocket.pending() without its two calls, see _SSL_READ.)
            cls = type(sock)
            if cls.pending is _SSL_PENDING and cls._checkClosed is _SSL_CHECK_CLOSED \
                    and (sslobj := sock._sslobj) is not None:
                pending = sslobj.pending()
            else:
                pending = sock.pending()
            if not (pending and self.readable()):
                break
            super().handle_read()

    def handle_write(self) -> None:
        if self._tls_phase == 'handshake':
            self._tls_handshake()
            return
        super().handle_write()

    def recv(self, buffer_size: int) -> bytes:
        if self._tls_phase != 'active':
            return super().recv(buffer_size)
        # The wrapped socket (set by _tls_start), without the property
        # and cast of _tls_socket: this runs for every read.  (Any: its SSL
        # object is not in typeshed's SSLSocket.)
        sock: Any = self.socket
        data: bytes
        if buffer_size > _TLS_RECORD_MAX:
            # Speed fix (issue 20, W6): OpenSSL's read returns one record's
            # plaintext at most, so asking for more (the core asks for 64
            # KiB at the start of a message) returns the same bytes, only
            # after allocating a buffer of that size and shrinking it (a
            # ~1 KB message cost 8k instructions more).
            buffer_size = _TLS_RECORD_MAX
        try:
            # read() is what SSLSocket.recv() calls on a wrapped socket
            # (one call less per read); and while SSLSocket's read() and
            # _checkClosed() are the originals, what read() calls (see
            # _SSL_READ).
            cls = type(sock)
            if cls.read is _SSL_READ and cls._checkClosed is _SSL_CHECK_CLOSED \
                    and (sslobj := sock._sslobj) is not None:
                data = sslobj.read(buffer_size)
            else:
                data = sock.read(buffer_size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # Not a whole TLS record yet: the plain-socket equivalent of
            # "nothing to read", which handle_read already ignores.
            raise BlockingIOError
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b''
        except (OSError, ValueError) as e:
            # (ValueError: read() on an SSL socket already closed, where
            # recv() fell back to the closed plain socket's OSError.)
            logger.info('TLS read from %s failed: %s', format_peer(self.peer),
                        safe(e))
            data = b''
        if not data:
            self.handle_close()
        return data

    def send(self, data: ReadableBuffer) -> int:
        if self._tls_phase == 'handshake':
            return 0    # replies wait until the handshake is done
        if self._tls_phase != 'active':
            return super().send(data)
        # (Any: its SSL object is not in typeshed's SSLSocket.)
        sock: Any = self.socket
        sent: int
        try:
            # (SSLSocket.send() without its two calls, see _SSL_READ.)
            cls = type(sock)
            if cls.send is _SSL_SEND and cls._checkClosed is _SSL_CHECK_CLOSED \
                    and (sslobj := sock._sslobj) is not None:
                sent = sslobj.write(data)
            else:
                sent = sock.send(data)
            return sent
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        except OSError as e:
            logger.info('TLS write to %s failed: %s', format_peer(self.peer),
                        safe(e))
            self.handle_close()
            return 0


# Speed fix (issue 20, W6: a read, a check for pending plaintext and a
# reply four times a message): ssl.SSLSocket's read(), send() and
# pending() each call _checkClosed() (which does nothing) and then the
# method of the same effect on the socket's SSL object, which is all an
# encrypted session needs (send()'s flags are 0; a ragged EOF, which
# read() turns into b'', is the SSLEOFError that recv() turns into b''
# itself).  While SSLSocket's method and _checkClosed() are these very
# functions (looked up on the socket's class at every call, so a patch
# sees every call) and the SSL object is there, recv(), send() and
# handle_read() call the SSL object's method: two Python calls less each.
_SSL_READ = ssl.SSLSocket.__dict__['read']
_SSL_SEND = ssl.SSLSocket.__dict__['send']
_SSL_PENDING = ssl.SSLSocket.__dict__['pending']
_SSL_CHECK_CLOSED = ssl.SSLSocket.__dict__['_checkClosed']

# The TLS layer's own tls_active (see smtp_MAIL).
_TLS_ACTIVE = TLSChannelMixin.__dict__['tls_active']

# What TLSChannelMixin's fast paths (initiate_send, readable, writable)
# stand in for: these very functions, found where they are defined (the
# classes themselves, not the module globals a test may rebind).
# asynchat's are the ones the core took when it was imported (private to
# it, so not in its stub).
_CHAT: Any = getattr(_smtpd, '_ASYNC_CHAT')
_CHAT_INITIATE_SEND: Any = getattr(_smtpd, '_CHAT_INITIATE_SEND')
_CORE = _smtpd.SMTPChannel
_CORE_INITIATE_SEND = _CORE.__dict__['initiate_send']
_SESSION_INITIATE_SEND = SessionStateMixin.__dict__['initiate_send']
_THREADS_READABLE = OffloadChannelMixin.__dict__['readable']
_SESSION_READABLE = SessionStateMixin.__dict__['readable']
# For each fast path, the classes between this layer and the one whose
# method it calls that may have the method, and the method they have.
_READABLE_KNOWN: Dict[type, Any] = {OffloadChannelMixin: _THREADS_READABLE,
                   SessionStateMixin: _SESSION_READABLE}
_SEND_KNOWN: Dict[type, Any] = {SessionStateMixin: _SESSION_INITIATE_SEND,
               _CORE: _CORE_INITIATE_SEND}


def _inner(cls: type, name: str, last: type, known: Dict[type, Any]
           ) -> Optional[Tuple[Any, ...]]:
    """For the classes of ``cls``'s MRO after TLSChannelMixin and before
    ``last``: None when one of them has a method ``name`` other than its
    entry in ``known`` (the fast path is never taken); else the
    ``__dict__`` of those that are not a capability's channel mixin (a
    channel class, the user's or the package's), which a patch may give
    one later: the fast path looks at them again on every call (_absent),
    and at the methods of ``known`` by identity."""
    mro = cls.__mro__
    inner: Optional[Tuple[Any, ...]] = None
    if TLSChannelMixin in mro and last in mro:
        namespaces = []
        for klass in mro[mro.index(TLSChannelMixin) + 1:mro.index(last)]:
            if klass in known:
                if klass.__dict__.get(name) is not known[klass]:
                    break
            elif name in klass.__dict__:
                break
            elif 'layer' not in klass.__dict__:
                namespaces.append(klass.__dict__)
        else:
            inner = tuple(namespaces)
    return inner


def _absent(namespaces: Tuple[Any, ...], name: str) -> bool:
    """True while none of ``namespaces`` (from _inner) has ``name``."""
    for namespace in namespaces:
        if name in namespace:
            return False
    return True


def _inner_of(cls: type) -> Tuple[Any, ...]:
    """``cls._tls_inner``: (``cls``, _inner() for readable, writable and
    initiate_send), worked out once and kept in the class.  (The class is
    there so that a subclass, which inherits the attribute, is not taken
    for its base.)"""
    known = (cls, _inner(cls, 'readable', _CORE, _READABLE_KNOWN),
             _inner(cls, 'writable', _CHAT, {}),
             _inner(cls, 'initiate_send', _CHAT, _SEND_KNOWN))
    setattr(cls, '_tls_inner', known)
    return known


class TLSServerMixin(CapabilityServerMixin):
    """Server mixin: TLS on every accepted connection.

    Keyword-only arguments (the rest go to the next class):

    tls_context
        an :class:`ssl.SSLContext` with the server's certificate and key
        loaded (see :func:`server_context`); or, instead of it,
    tls_certfile, tls_keyfile
        the PEM files to build it from with :func:`server_context`; they
        are remembered, so that :meth:`reload` (``SIGHUP`` on the command
        line) can read them again after the certificate was renewed.
    implicit_tls
        False (default): offer STARTTLS.  True: TLS from the first byte
        (port 465, RFC 8314).
    require_starttls
        answer MAIL, RCPT, DATA (and AUTH) with ``530 5.7.0 Must issue a
        STARTTLS command first`` until TLS is active.
    tls_handshake_timeout
        seconds a client gets to complete the handshake before the
        connection is closed; None (default): the server's idle timeout
        when it has limits, else no limit.  A phase ('tls') of the
        connection's one deadline; enforced when :mod:`smtpd_compat.loop`
        serves the map.
    """

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = TLSChannelMixin
    tls_context: ssl.SSLContext
    implicit_tls: bool
    require_starttls: bool
    tls_handshake_timeout: Optional[float]
    # The files the context was loaded from (reload() reads them again).
    tls_certfile: Optional[str]
    tls_keyfile: Optional[str]

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any,
                 tls_context: Union[ssl.SSLContext, None, Unset] = UNSET,
                 implicit_tls: Union[bool, Unset] = UNSET,
                 require_starttls: Union[bool, Unset] = UNSET,
                 tls_handshake_timeout: Union[float, None, Unset] = UNSET,
                 tls_certfile: Union[str, None, Unset] = UNSET,
                 tls_keyfile: Union[str, None, Unset] = UNSET,
                 **kwargs: Any) -> None:
        # Each keyword: as given, else the class attribute, else the
        # default (smtpd_compat.compose.setting).
        tls_context = setting(self, 'tls_context', tls_context, None)
        implicit_tls = setting(self, 'implicit_tls', implicit_tls, False)
        require_starttls = setting(self, 'require_starttls', require_starttls, False)
        tls_handshake_timeout = setting(self, 'tls_handshake_timeout',
                                        tls_handshake_timeout, None)
        tls_certfile = setting(self, 'tls_certfile', tls_certfile, None)
        tls_keyfile = setting(self, 'tls_keyfile', tls_keyfile, None)
        if tls_certfile is not None:
            if tls_context is not None:
                raise TypeError('give tls_context or tls_certfile, not both')
            tls_context = server_context(tls_certfile, tls_keyfile)
        elif tls_keyfile is not None:
            raise TypeError('tls_keyfile needs tls_certfile')
        if not isinstance(tls_context, ssl.SSLContext):
            raise TypeError('tls_context must be an ssl.SSLContext holding '
                            'the server certificate, not %r' % (tls_context,))
        self.tls_certfile = tls_certfile
        self.tls_keyfile = tls_keyfile
        if implicit_tls and require_starttls:
            raise ValueError('require_starttls has no meaning with '
                             'implicit_tls=True (TLS is always on)')
        if tls_handshake_timeout is not None and not tls_handshake_timeout > 0:
            raise ValueError('tls_handshake_timeout must be a positive number '
                             'of seconds or None, not %r'
                             % (tls_handshake_timeout,))
        self.tls_context = tls_context
        self.implicit_tls = bool(implicit_tls)
        self.require_starttls = bool(require_starttls)
        self.tls_handshake_timeout = tls_handshake_timeout
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    def reload(self) -> None:
        """Build a new SSLContext from ``tls_certfile``/``tls_keyfile`` (a
        renewed certificate) for the connections accepted from now on;
        sessions already encrypted keep theirs.  If the files cannot be
        loaded the context in use is kept and the error (OSError or
        ssl.SSLError) is raised.  Without remembered files (the server was
        given a ``tls_context``) there is nothing to reload: a no-op."""
        if self.tls_certfile is None:
            return
        context = server_context(self.tls_certfile, self.tls_keyfile)
        # One assignment: a handshake that starts now uses either context
        # whole (_tls_start reads the attribute once).
        self.tls_context = context
        logger.info('reloaded the TLS certificate from %s',
                    safe(self.tls_certfile))


class TLSServer(TLSServerMixin, _smtpd.SMTPServer):
    """An SMTPServer with STARTTLS or implicit TLS; subclass it and override
    process_message."""


def server_context(certfile: str, keyfile: Optional[str] = None) -> ssl.SSLContext:
    """A server-side SSLContext with Python's default security settings
    (TLS 1.2 or later, no compression, no renegotiation) and the given
    certificate chain and private key loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, 'OP_NO_RENEGOTIATION', 0)
    try:
        context.load_cert_chain(certfile, keyfile)
    except OSError as e:    # ssl.SSLError is one
        # OpenSSL says "No such file or directory" without the name, and
        # "PEM lib" for most other mistakes: say which file, and what.
        raise _pem_error(certfile, keyfile, e) from e
    return context


def _pem_error(certfile: str, keyfile: Optional[str], error: OSError) -> OSError:
    """An exception naming the file that made load_cert_chain() fail with
    ``error`` and what is wrong with it: unreadable, a private key where
    the certificate belongs (or the reverse), no PEM block of the kind
    needed, or a key that does not match the certificate.  The same
    exception type as ``error`` for a file that cannot be read, else
    ssl.SSLError."""
    contents = {}
    for path, kind in ((certfile, 'certificate'), (keyfile, 'key')):
        if path is None:
            continue
        try:
            with open(path, 'rb') as f:
                contents[kind] = f.read()
        except OSError as e:
            return type(e)(e.errno, 'cannot read the %s file %r: %s'
                           % (kind, path, e.strerror))
    cert = contents['certificate']
    key = contents.get('key', cert)
    keypath = certfile if keyfile is None else keyfile
    if b'CERTIFICATE-----' not in cert:
        if b'PRIVATE KEY-----' in cert:
            problem = ('the certificate file %r holds a private key, not a '
                       'certificate' % certfile)
        else:
            problem = 'the certificate file %r holds no PEM certificate' % certfile
    elif b'PRIVATE KEY-----' not in key:
        if keyfile is None:
            problem = ('the certificate file %r holds no private key (give '
                       'the key file too)' % certfile)
        elif b'CERTIFICATE-----' in key:
            problem = ('the key file %r holds a certificate, not a private '
                       'key' % keyfile)
        else:
            problem = 'the key file %r holds no PEM private key' % keyfile
    elif getattr(error, 'reason', None) == 'KEY_VALUES_MISMATCH':
        problem = ('the private key in %r does not match the certificate '
                   'in %r' % (keypath, certfile))
    else:
        problem = 'cannot load %r%s: %s' % (
            certfile, '' if keyfile is None else ' and %r' % keyfile, error)
    # (errno, message): an SSLError shows its message as its text.
    return ssl.SSLError(error.errno, problem)

"""A web inbox: every message the server accepts, shown in a browser and
served over a Mailpit-compatible HTTP API.

``python -m smtpd_compat -n -c DebuggingServer --web 8025 localhost:1025``
keeps every accepted message in an in-memory :class:`Inbox` and serves it on
http://127.0.0.1:8025/ (DebuggingServer still prints; any -c class works).
From Python, put :class:`WebInboxServerMixin` among a server class's bases,
or use :class:`WebInboxServer`, which only keeps mail for the inbox.

The package, from the bottom up (each module imports only those above it
in this list):

* :mod:`~smtpd_compat.web.mime`: what a message says (parsing, details,
  summaries, parts, HTML as text);
* :mod:`~smtpd_compat.web.search`: Mailpit's search syntax over summaries;
* :mod:`~smtpd_compat.web.db`: the optional SQLite file that keeps the
  inbox across restarts;
* :mod:`~smtpd_compat.web.store`: :class:`Inbox`, the store (IDs, read
  flags, tags, the caches of summaries and parsed messages, the bounds,
  the background thread that ingests and writes); also the store of the
  test helpers' captured mail (:mod:`smtpd_compat.controller`);
* :mod:`~smtpd_compat.web.static`: the page's HTML, CSS and JavaScript,
  package data;
* :mod:`~smtpd_compat.web.transport`: HTTP connections, bounded in
  number, threads and time, responses streamed; the one thread that waits
  on the web side's sockets (``IOThread``);
* :mod:`~smtpd_compat.web.release`: the upstream SMTP server a message is
  released to;
* :mod:`~smtpd_compat.web.api`: Mailpit's API v1, one function per route;
* :mod:`~smtpd_compat.web.openapi`: the OpenAPI description of the routes;
* :mod:`~smtpd_compat.web.events`: the live events (the websocket and the
  hub);
* :mod:`~smtpd_compat.web.mailhog`: MailHog's API;
* :mod:`~smtpd_compat.web.http`: :class:`WebServer`, its routes and the
  page's Content-Security-Policy;
* this module: the capability (the server mixin and its channel layer) and
  the command line's ``--web``.

The SMTP side only appends the raw message to the inbox (a few dictionary
operations under a lock); the inbox's own thread parses it and, with a
database, writes it (the reply waits for that, off the loop thread).
"""
from __future__ import annotations

import contextvars
import logging
import sys
from typing import (
    TYPE_CHECKING, Any, Iterable, List, Mapping, Optional, Tuple, Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat.compose import UNSET, CapabilityServerMixin, Unset, settings
from smtpd_compat.session import LAYERS
from smtpd_compat.threads import OffloadChannelMixin
from smtpd_compat.web.db import Database
from smtpd_compat.web.http import Address, WebServer, parse_allowed_hosts
from smtpd_compat.web.mime import html_to_text
from smtpd_compat.web.release import Upstream
from smtpd_compat.web.store import (
    DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, Inbox, StoredMessage)

if TYPE_CHECKING:
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

__all__ = [
    'Inbox', 'StoredMessage', 'WebInboxServerMixin', 'WebInboxChannelMixin',
    'WebInboxServer', 'WebServer', 'parse_address', 'html_to_text',
    'DEFAULT_ADDRESS', 'Upstream',
]

log = logging.getLogger(__name__)

# The SMTP login (AUTH) of the session whose message message_accepted() is
# recording: set by the channel layer around the hook, so the hook keeps
# its signature (subclasses override it) and the inbox still gets
# Mailpit's Username.
_smtp_user: 'contextvars.ContextVar[Optional[str]]' = contextvars.ContextVar(
    'smtpd_compat.web smtp user', default=None)

#: Where the inbox listens when no address is given (Mailpit's port).
DEFAULT_ADDRESS: Address = ('127.0.0.1', 8025)


def parse_address(text: Union[str, int, Tuple[str, int], None]) -> Address:
    """``'8025'``, ``':8025'``, ``'0.0.0.0:8025'``, ``'[::1]:8025'``, an int
    port or a ``(host, port)`` tuple -> ``(host, port)``; the host defaults
    to 127.0.0.1 (loopback only unless a host is named)."""
    if text is None:
        return DEFAULT_ADDRESS
    if isinstance(text, tuple):
        host, number = text
        return (host or DEFAULT_ADDRESS[0], int(number))
    if isinstance(text, int) and not isinstance(text, bool):
        return (DEFAULT_ADDRESS[0], text)
    if not isinstance(text, str):
        raise TypeError('web address must be "[HOST:]PORT" or (host, port), '
                        'not %r' % (text,))
    host, sep, port = text.rpartition(':')
    host = host.strip('[]')
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError('invalid web address %r: expected [HOST:]PORT' % (text,))
    return (host or DEFAULT_ADDRESS[0], number)


def make_upstream(relay: Any, allowed: Optional[str] = None) -> Optional[Upstream]:
    """The upstream of ``web_relay`` (``'HOST:PORT'``, ``(host, port)``,
    an :class:`Upstream` or None) with ``web_relay_allowed``."""
    if relay is None or isinstance(relay, Upstream):
        return relay
    if isinstance(relay, str):
        host, sep, port = relay.rpartition(':')
        if not sep or not port.isdigit():
            raise ValueError('invalid web relay %r: expected HOST:PORT' % (relay,))
        relay = (host.strip('[]'), int(port))
    if not (isinstance(relay, tuple) and len(relay) == 2):
        raise TypeError('web_relay must be "HOST:PORT" or (host, port), not %r'
                        % (relay,))
    return Upstream(relay[0], relay[1], allowed)


def _accepted(status: Any) -> bool:
    """Did process_message accept the message?  None or a 2xx reply; for
    LMTP (one result per recipient, a sequence or a mapping) when any
    recipient accepted it."""
    if isinstance(status, Mapping):
        return any(_accepted(s) for s in status.values())
    if isinstance(status, (list, tuple)):
        return any(_accepted(s) for s in status)
    return not status or str(status)[:1] == '2'


# ---------------------------------------------------------------------------
# The capability: a channel layer that reports accepted messages, and the
# server mixin that keeps them

class WebInboxChannelMixin(_ChannelBase):
    """Channel layer of the inbox: once the server's ``process_message``
    has accepted a message (returned None or a 2xx reply; for LMTP, for
    any recipient), it calls the server's
    :meth:`~WebInboxServerMixin.message_accepted` hook, before the reply
    goes out.  So the inbox sees what the server's own class decided,
    whether or not its ``process_message`` calls ``super()``, in the
    worker threads (``--threads``) as on the loop, and also when the
    client left while a worker ran it: the session's
    :meth:`~smtpd_compat.session.SessionStateMixin.message_processed`
    hook reports every outcome.
    """

    layer = LAYERS['inbox']
    capability_name = 'WebInbox'

    # (status, rcpttos) of a reply held until the inbox's database has
    # the message.
    _inbox_held: Optional[Tuple[Any, List[str]]] = None
    # The message being answered, while process_message's reply is due:
    # (data, accepted), set by message_processed.
    _inbox_pending: Optional[Tuple[Union[bytes, str], bool]] = None
    instance_state = ('_inbox_held', '_inbox_pending')

    def message_processed(self, peer: Any, mailfrom: Optional[str],
                          rcpttos: List[str], data: Union[bytes, str],
                          status: Any) -> None:
        accepted = _accepted(status)
        if accepted:
            server = cast('WebInboxServerMixin', self.smtp_server)
            token = _smtp_user.set(self.auth_user)
            try:
                # (mailfrom is never None here: DATA needs MAIL first.)
                server.message_accepted(peer, mailfrom or '', list(rcpttos), data)
            except Exception:
                # The message is delivered already: a fault in the inbox
                # must not turn that into an error for the client.
                log.exception('web inbox: cannot record a message')
            finally:
                _smtp_user.reset(token)
        self._inbox_pending = (data, accepted)
        super().message_processed(peer, mailfrom, rcpttos, data, status)

    def _process_data(self, data: Union[bytes, str]) -> None:
        held = self._inbox_held
        if held is not None:
            # Again from the outside in, once the message is written (as
            # the threads layer answers a threaded process_message): the
            # layers outside see the reply inside _process_data.
            self._inbox_held = None
            super()._reply_to_message(*held)
            return
        try:
            super()._process_data(data)
        finally:
            self._inbox_pending = None

    def _reply_to_message(self, status: Any, rcpttos: List[str]) -> None:
        pending, self._inbox_pending = self._inbox_pending, None
        if pending is not None and pending[1] and hasattr(self, 'offload'):
            inbox = cast('WebInboxServerMixin', self.smtp_server).inbox
            if inbox.durable:
                # A message with a database: the 250 only once it is
                # written there (so it survives a crash right after),
                # waited for in a worker thread, never on the loop.
                data = pending[0]
                self.offload(inbox.flush, (), lambda ok, value: self._inbox_written(
                    data, status, rcpttos))
                return
        super()._reply_to_message(status, rcpttos)

    def _inbox_written(self, data: Union[bytes, str], status: Any,
                       rcpttos: List[str]) -> None:
        self._inbox_held = (status, rcpttos)
        try:
            self._process_data(data)
        finally:
            self._inbox_held = None


class WebInboxServerMixin(CapabilityServerMixin):
    """Keep every message the server accepts in an :class:`Inbox` and show
    it on a web page with a Mailpit-compatible API.

    Put it among the bases of any server class (``class S(WebInboxServerMixin,
    DebuggingServer)``, in any order with the other capabilities) or use
    :class:`WebInboxServer`.  Keywords, each also read from the class
    attribute named in brackets when not given:

    ``web`` (``web_address``)
        where the page listens: ``(host, port)``, ``'[HOST:]PORT'`` or a
        port; default ``('127.0.0.1', 8025)``; port 0 picks a free one.
    ``inbox`` (``inbox``)
        an :class:`Inbox` to record into (e.g. shared by two servers);
        default a new one with ``web_max_messages`` (1,000) and
        ``web_max_bytes`` (256 MiB).
    ``web_max_messages``, ``web_max_bytes`` (the same names)
        the bounds of the new inbox: the newest messages, within a
        budget in bytes that counts all the inbox keeps for them.
    ``web_db`` (``web_db``)
        an SQLite file that keeps the new inbox, so the mail survives a
        restart (:mod:`smtpd_compat.web.db`); each message's reply waits
        until it is written there.  Default None: memory only.
    ``web_allowed_hosts`` (``web_allowed_hosts``)
        host names a request's ``Host`` header may name besides
        localhost, IP addresses and the name the page is bound to
        (comma-separated or a list; ``.example.org`` for a domain and
        its subdomains, ``*`` for any); others get a 403.
    ``web_relay`` (the same name)
        where ``POST /api/v1/message/{ID}/release`` relays a message:
        ``'HOST:PORT'``, ``(host, port)`` or an :class:`Upstream`; default
        None (release is off).
    ``web_relay_allowed`` (the same name)
        a regular expression that each release recipient's address must
        contain a match of; default None (any).

    After construction: ``inbox``, ``web_server`` and ``web_url``.  A
    message is recorded by :meth:`message_accepted`, which the channel
    layer calls once the server's own ``process_message`` accepted it, so
    DebuggingServer still prints and MaildirServer still stores first.
    Closing the server stops the web page.
    """

    channel_mixin = WebInboxChannelMixin
    # The prefix of composed class names (smtpd_compat._compose).
    capability_name = 'WebInbox'

    inbox: Inbox
    web_server: WebServer
    web_url: str
    #: Whether :meth:`message_accepted` records the message in
    #: ``self.inbox``.  False on a server whose own ``process_message``
    #: records every message there already, so that each is kept once: a
    #: :class:`smtpd_compat.controller.CapturingServer` sets it so on
    #: itself when it shares the inbox as its store.
    inbox_records_accepted = True

    def __init__(self, *args: Any,
                 web: Union[Address, str, int, None, Unset] = UNSET,
                 inbox: Union[Inbox[Any], None, Unset] = UNSET,
                 web_max_messages: Union[int, Unset] = UNSET,
                 web_max_bytes: Union[int, Unset] = UNSET,
                 web_relay: Union[str, Address, Upstream, None, Unset] = UNSET,
                 web_relay_allowed: Union[str, None, Unset] = UNSET,
                 web_db: Union[str, None, Unset] = UNSET,
                 web_allowed_hosts: Union[str, Iterable[str], None, Unset] = UNSET,
                 **kwargs: Any) -> None:
        # A keyword not given: the user's class attribute, else the default.
        values = settings(
            self,
            {'web_address': web, 'inbox': inbox,
             'web_max_messages': web_max_messages,
             'web_max_bytes': web_max_bytes, 'web_relay': web_relay,
             'web_relay_allowed': web_relay_allowed, 'web_db': web_db,
             'web_allowed_hosts': web_allowed_hosts},
            {'web_address': DEFAULT_ADDRESS, 'inbox': None,
             'web_max_messages': DEFAULT_MAX_MESSAGES,
             'web_max_bytes': DEFAULT_MAX_BYTES, 'web_relay': None,
             'web_relay_allowed': None, 'web_db': None,
             'web_allowed_hosts': None})
        address = parse_address(values['web_address'])
        upstream = make_upstream(values['web_relay'], values['web_relay_allowed'])
        allowed_hosts = parse_allowed_hosts(values['web_allowed_hosts'])
        self._own_inbox = values['inbox'] is None
        if self._own_inbox:
            self.inbox = Inbox(max_messages=values['web_max_messages'],
                               max_bytes=values['web_max_bytes'],
                               path=values['web_db'])
        elif values['web_db'] is not None:
            raise ValueError('web_db is for the inbox the server makes; give '
                             'your Inbox a path instead')
        if self.inbox.durable:
            # The replies wait for the database in the worker threads.
            self._extra_channel_mixins = tuple(
                getattr(self, '_extra_channel_mixins', ())) + (OffloadChannelMixin,)
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._close_inbox()
            raise
        try:
            self.web_server = WebServer(address, self.inbox, upstream, allowed_hosts)
        except OSError as e:
            self.close()
            raise OSError(e.errno, 'cannot serve the web inbox on %s port %s: %s'
                          % (address[0], address[1], e.strerror or e)) from e
        self.web_url = self.web_server.url
        self.web_server.start()
        log.info('web inbox at %s', self.web_url)

    def message_accepted(self, peer: Any, mailfrom: str, rcpttos: List[str],
                         data: Union[bytes, str]) -> None:
        """The after-accept hook: called on the loop thread with
        ``process_message``'s arguments once it accepted the message,
        before the client gets the reply (also when the client left while
        ``process_message`` ran in a worker thread).  Records the message
        in ``self.inbox`` (unless :attr:`inbox_records_accepted` is
        False); a subclass may extend it (and call ``super()``).
        An exception is logged, never answered: the message is delivered
        already.  A message handed to ``process_message`` by other code
        than an SMTP session is not recorded.
        """
        if self.inbox_records_accepted:
            self.inbox.add(data, mailfrom, rcpttos, peer, username=_smtp_user.get())

    def close(self) -> None:
        super().close()
        web_server = self.__dict__.pop('web_server', None)
        if web_server is not None:
            web_server.stop()
        self._close_inbox()

    def _close_inbox(self) -> None:
        # The inbox the server made ends with it (its database written).
        if self.__dict__.pop('_own_inbox', False):
            self.inbox.close()


class WebInboxServer(WebInboxServerMixin, _smtpd.SMTPServer):
    """An SMTP server that accepts every message and keeps it for the web
    inbox only (``-c WebInboxServer``; nothing printed, nothing relayed)."""

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str],
                        data: Union[bytes, str], **kwargs: Any) -> Optional[str]:
        return None

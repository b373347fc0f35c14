"""The inbox's HTTP side: the server, the request handler, the routes
(Mailpit's API v1, whose handlers are in :mod:`smtpd_compat.web.api`, and the
page) and the page's Content-Security-Policy.

:class:`WebServer` serves one :class:`~smtpd_compat.web.store.Inbox`
over the connections of :mod:`smtpd_compat.web.transport` (a bounded
number, answered by a bounded pool of threads, responses streamed): the
SMTP loop never waits for it.  A request is answered by a
:class:`Handler`, whose ``_send`` methods prepare the whole response
(status and headers decided, the body a shared object or made as it is
sent); nothing is written before the handler returns.  The page's HTML,
CSS and JavaScript are files of :mod:`smtpd_compat.web.static`.

Everything taken from a message is data: escaped server-side (JSON, header
values cleaned), set with ``textContent`` in the page, and a message's HTML
is only ever served under a Content-Security-Policy with ``sandbox`` and no
script source, inside an ``<iframe sandbox>`` without ``allow-scripts``.
"""
from __future__ import annotations

import http
import http.server
import ipaddress
import json
import logging
import re
import socket
import urllib.parse
from typing import (
    Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Pattern, Tuple, Union, cast)

from smtpd_compat._version import VERSION
# (The submodules themselves, not through their parent: smtpd_compat.web
# imports this module.)
import smtpd_compat.web.api as api
import smtpd_compat.web.events as events
import smtpd_compat.web.mailhog as mailhog
import smtpd_compat.web.openapi as openapi
import smtpd_compat.web.static as static
from smtpd_compat.web.api import (
    DATA_CSP, MESSAGE_CSP, BadRequest, Body, Forbidden, HTTPError,
    MethodNotAllowed, NotFound, PayloadTooLarge, parse_body)
from smtpd_compat.web.events import Hub
from smtpd_compat.web.release import Upstream
from smtpd_compat.web.store import Inbox
from smtpd_compat.web.transport import (
    DEFAULT_MAX_CONNECTIONS, DEFAULT_THREADS, DETACH, HEADER_TIMEOUT, IDLE_TIMEOUT,
    IO_TIMEOUT, Connection, IOThread, Response, ResponseBody, Server, Stream, json_chunks)

__all__ = [
    'WebServer', 'Handler', 'ROUTES', 'find_route', 'Address', 'PAGE_CSP',
    'MESSAGE_CSP', 'DATA_CSP', 'MAX_REQUEST_BODY', 'parse_allowed_hosts',
]

log = logging.getLogger(__name__)

#: ``(host, port)``.
Address = Tuple[str, int]

#: Request bodies (DELETE/PUT with a list of IDs) are small; refuse more.
MAX_REQUEST_BODY = 1024 * 1024

#: The page: scripts and styles only from this origin, no inline code, no
#: remote loads; message HTML only in frames from this origin.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
            "img-src 'self' data:; connect-src 'self'; frame-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# The page's files other than index.html, by extension.
_STATIC_TYPES = {'js': 'text/javascript; charset=utf-8',
                 'css': 'text/css; charset=utf-8'}

# A Host header: a name or an IPv4 address, or an IPv6 address in
# brackets, then an optional port.
_HOST = re.compile(r'^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*))(?::\d*)?$')
# What a response header value may hold: printable ASCII (RFC 9110
# section 5.5; no line break can end up in a header).
_HEADER_VALUE = re.compile(r'^[\x20-\x7e]*$')


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(',', ':')).encode('ascii')


def _small(chunks: Iterable[bytes], limit: int = 64 * 1024) -> Union[bytes, Stream]:
    """Bytes when ``chunks`` come to at most ``limit`` bytes (sent with a
    Content-Length), else a stream of them (sent chunked)."""
    head: List[bytes] = []
    size = 0
    it = iter(chunks)
    for chunk in it:
        head.append(chunk)
        size += len(chunk)
        if size > limit:
            return Stream(_chain(head, it))
    return b''.join(head)


def _chain(first: List[bytes], rest: Iterable[bytes]) -> Iterable[bytes]:
    yield from first
    yield from rest


class Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP request: :data:`ROUTES` picks the method that answers it.
    The inbox is the server's (``self.server.inbox``)."""

    server_version = 'smtpd_compat-web/' + VERSION
    # Keep-alive: every response has a length or is chunked.
    protocol_version = 'HTTP/1.1'

    #: The query string of the request being answered.
    query: Dict[str, List[str]]
    #: The response prepared (None until one is).
    response: Optional[Response] = None
    # Whether the request's body was read (else the connection closes).
    _body_read = False

    @property
    def web_server(self) -> WebServer:
        return cast(WebServer, self.server)

    @property
    def inbox(self) -> Inbox:
        return self.web_server.inbox

    # -- plumbing -------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug('web inbox: %s %s', self.address_string(), format % args)

    # -- transport: one request on a connection of web.transport -----------------

    def setup(self) -> None:
        conn = cast(Connection, self.request)
        self.connection = conn.sock
        conn.sock.settimeout(conn.io_timeout)
        self._input = conn.reader()
        self.rfile = self._input     # type: ignore[assignment]
        self.wfile = conn.writer()   # type: ignore[assignment]

    def handle(self) -> None:
        # One request; the connection's next one gets a new handler.
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        pass

    def handle_expect_100(self) -> bool:
        # The interim answer goes out at once (the rest waits for the
        # handler), so that the client sends its body.
        self.connection.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
        return True

    def _unread_body(self) -> bool:
        """Did the request have a body nobody read?  (What follows on the
        connection would be taken for the next request: close it.)"""
        return not self._body_read and (
            (self.headers.get('Content-Length') or '0').strip() not in ('', '0')
            or bool(self.headers.get('Transfer-Encoding')))

    def _send(self, status: int, body: ResponseBody, content_type: str,
              csp: str = DATA_CSP, headers: Iterable[Tuple[str, str]] = ()) -> None:
        """Prepare the response: ``body`` is bytes, text (sent as UTF-8)
        or a :class:`~smtpd_compat.web.transport.Stream`.  Every response
        carries the CSP and ``nosniff``; a header value that is not
        printable ASCII raises ValueError before anything is prepared
        (a Content-Type that is not becomes application/octet-stream).
        A second call replaces the first (nothing is written before the
        handler returns)."""
        if not _HEADER_VALUE.match(content_type):
            content_type = 'application/octet-stream'
        fields = [('Content-Type', content_type),
                  ('Content-Security-Policy', csp),
                  ('X-Content-Type-Options', 'nosniff'),
                  ('Referrer-Policy', 'no-referrer'),
                  ('Cache-Control', 'no-store')]
        fields += [(name, value) for name, value in headers]
        length = (len(body) if isinstance(body, bytes) else
                  body.length if isinstance(body, Stream) else None)
        close = self.close_connection or self._unread_body()
        chunked = False
        if length is not None:
            fields.append(('Content-Length', str(length)))
        elif self.request_version != 'HTTP/1.0':
            chunked = True
            fields.append(('Transfer-Encoding', 'chunked'))
        else:
            close = True
        if close:
            fields.append(('Connection', 'close'))
        for name, value in fields:
            if not _HEADER_VALUE.match(name + value):
                raise ValueError('not a header value: %s: %r' % (name, value))
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ''
        lines = ['%s %d %s' % (self.protocol_version, status, phrase),
                 'Server: ' + self.version_string(),
                 'Date: ' + self.date_time_string()]
        lines += ['%s: %s' % field for field in fields]
        head = ('\r\n'.join(lines) + '\r\n\r\n').encode('ascii')
        head_only = self.command == 'HEAD'
        self.close_connection = close
        self.response = Response(head, None if head_only else body,
                                 chunked and not head_only, close)
        self.log_request(status, '-' if length is None else length)

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        """The stdlib's errors (a bad request line, headers too long, ...)
        in plain text like every other answer, not its HTML page."""
        self.close_connection = True
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = 'Error'
        self._send_text(code, (message or phrase).replace('\r', ' ').replace('\n', ' '))

    def _send_json(self, value: Any) -> None:
        self._send(200, _small(json_chunks(value)), 'application/json; charset=utf-8')

    def _send_text(self, status: int, text: str) -> None:
        # A long text is encoded as it is sent, not copied here.
        self._send(status, text if len(text) > 65536 else text.encode('utf-8', 'replace'),
                   'text/plain; charset=utf-8')

    def _host_allowed(self) -> bool:
        # DNS rebinding: a web site whose name resolves to this machine
        # could otherwise read and delete the inbox through a browser.
        return self.web_server.host_allowed(self.headers.get('Host', ''))

    def _dispatch(self) -> None:
        try:
            if not self._host_allowed():
                self._send_text(403, 'Forbidden: unexpected Host header')
                return
            url = urllib.parse.urlsplit(self.path)
            self.query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            path = urllib.parse.unquote(url.path)
            self._body_read = False
            handler, args = find_route(self.command, path)
            if not self._origin_allowed(path):
                raise Forbidden('Blocked due to CORS violation')
            handler(self, *args)
        except HTTPError as e:
            if e.as_json:
                self._send(e.status, _json({'Error': str(e)}),
                           'application/json; charset=utf-8', headers=e.headers)
            else:
                self._send(e.status, str(e).encode('utf-8'),
                           'text/plain; charset=utf-8', headers=e.headers)
        except OSError:
            # The client went away, or its body did not come in time.
            self.response = None
        except Exception:
            log.exception('web inbox: error serving %s %r', self.command, self.path)
            # Whatever was prepared is dropped: the answer is whole.
            self.close_connection = True
            self._send_text(500, 'Internal error')
        finally:
            if not self._body_read and (
                    self.headers.get('Content-Length', '0').strip() not in ('', '0')
                    or self.headers.get('Transfer-Encoding')):
                # A body nobody read must not be taken for the next request.
                self.close_connection = True

    def __getattr__(self, name: str) -> Any:
        # Every method, also one no route has (PATCH, FOO), goes to the
        # route table: 405 or 404 in plain text, never the stdlib's HTML
        # "501 Unsupported method" page.
        if name.startswith('do_') and name[3:].isalpha() and name[3:].isupper():
            return self._dispatch
        raise AttributeError(name)

    do_GET = do_HEAD = do_DELETE = do_PUT = do_POST = do_OPTIONS = _dispatch

    def _origin_allowed(self, path: str) -> bool:
        """A browser page of another origin may not change the inbox nor
        listen to its events, as Mailpit refuses it: an ``Origin`` header,
        when there is one, must name the host the request was sent to.
        A GET is let through (no CORS header lets such a page read the
        answer): the message's own sandboxed frame, whose origin is
        ``null``, loads its inline images so."""
        origin = self.headers.get('Origin')
        if origin is None or not path.startswith('/api/') or (
                self.command in ('GET', 'HEAD') and path != '/api/events'):
            return True
        host = urllib.parse.urlsplit(origin).netloc
        return bool(host) and host.lower() == (self.headers.get('Host') or '').lower()

    @property
    def events(self) -> Hub:
        """The live events of the inbox (``/api/events``)."""
        return self.web_server.events

    @property
    def upstream(self) -> Optional[Upstream]:
        """Where released messages go (None: release is off)."""
        return self.web_server.upstream

    def _param(self, name: str, default: str = '') -> str:
        # The first value, as Go's Query().Get.
        values = self.query.get(name)
        return values[0] if values else default

    def _body(self, limit: int = MAX_REQUEST_BODY) -> Body:
        """The request body (Content-Length or chunked, at most ``limit``
        bytes) as Mailpit reads it: :func:`~smtpd_compat.web.api.parse_body`."""
        if 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower():
            data = self._read_chunked(limit)
        else:
            try:
                length = int(self.headers.get('Content-Length') or 0)
            except ValueError:
                raise BadRequest('invalid Content-Length') from None
            if length > limit:
                raise PayloadTooLarge('request body too large')
            data = self.rfile.read(length) if length > 0 else b''
        # (Read whole: the connection may go on.  Not read, or read in
        # part, it closes after the answer.)
        self._body_read = True
        return parse_body(data)

    def _read_chunked(self, limit: int) -> bytes:
        # RFC 9112 section 7.1: size line (hex, extensions after ';'),
        # data, CRLF; a 0 size ends it, then trailer lines up to an empty one.
        data = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b';')[0].strip(), 16)
            except ValueError:
                raise BadRequest('invalid chunked body') from None
            if size < 0:
                raise BadRequest('invalid chunked body')
            if size == 0:
                break
            if len(data) + size > limit:
                raise PayloadTooLarge('request body too large')
            data += self.rfile.read(size)
            self.rfile.readline(3)
        for _ in range(100):
            if self.rfile.readline(1024).strip() == b'':
                break
        return bytes(data)

    # -- the page -----------------------------------------------------------------

    def get_page(self, id: Optional[str] = None) -> None:
        self._send(200, static.read('index.html'), 'text/html; charset=utf-8',
                   csp=PAGE_CSP, headers=[('X-Frame-Options', 'DENY')])

    def get_static(self, name: str) -> None:
        """The page's script or style sheet."""
        self._send(200, static.read(name), _STATIC_TYPES[name.rpartition('.')[2]],
                   csp=PAGE_CSP)

    def get_state(self) -> None:
        # What the page polls while it has no event stream (a proxy
        # without websockets): cheap, and changes whenever the list does.
        stats = self.inbox.stats()
        self._send_json({'version': stats['version'], 'total': stats['total'],
                         'unread': stats['unread']})

    def get_livez(self) -> None:
        self._send_text(200, 'ok')


_ID = r'([A-Za-z0-9]+)'

#: ``(method, path pattern, handler method)``, tried in order; the
#: pattern's groups are the handler's arguments.  GET routes answer HEAD.
ROUTES: List[Tuple[str, Pattern[str], Callable[..., None]]] = [
    (method, re.compile('^' + pattern + '$'), handler)
    for method, pattern, handler in (
        ('GET', r'/', Handler.get_page),
        ('GET', r'/view/' + _ID, Handler.get_page),
        ('GET', r'/view/' + _ID + r'\.html', api.get_view_html),
        ('GET', r'/view/' + _ID + r'\.txt', api.get_view_text),
        ('GET', r'/(app\.js|app\.css)', Handler.get_static),
        ('GET', r'/livez', Handler.get_livez),
        ('GET', r'/readyz', Handler.get_livez),
        ('GET', r'/api/web/state', Handler.get_state),
        ('GET', r'/api/v1/info', api.get_info),
        ('GET', r'/api/v1/webui', api.get_webui),
        ('GET', r'/api/v1/swagger\.json', openapi.get_swagger),
        ('GET', r'/api/v1/tags', api.get_tags),
        ('PUT', r'/api/v1/tags', api.put_tags),
        ('PUT', r'/api/v1/tags/([^/]+)', api.put_tag),
        ('DELETE', r'/api/v1/tags/([^/]+)', api.delete_tag),
        ('GET', r'/api/v1/messages', api.get_messages),
        ('PUT', r'/api/v1/messages', api.put_messages),
        ('DELETE', r'/api/v1/messages', api.delete_messages),
        ('GET', r'/api/v1/search', api.get_search),
        ('DELETE', r'/api/v1/search', api.delete_search),
        ('POST', r'/api/v1/send', api.post_send),
        ('GET', r'/api/v1/message/' + _ID, api.get_message),
        ('GET', r'/api/v1/message/' + _ID + r'/headers', api.get_headers),
        ('GET', r'/api/v1/message/' + _ID + r'/raw', api.get_raw),
        ('GET', r'/api/v1/message/' + _ID + r'/part/([0-9.]+)', api.get_part),
        ('POST', r'/api/v1/message/' + _ID + r'/release', api.post_release),
        ('OPTIONS', r'/api/v1/.*', api.options),
        ('GET', r'/api/events', events.get_events),
        # MailHog's API (its v1 "delete all" is Mailpit's DELETE above).
        ('GET', r'/api/v2/messages', mailhog.get_messages),
        ('GET', r'/api/v2/search', mailhog.get_search),
        ('DELETE', r'/api/v1/messages/' + _ID, mailhog.delete_message),
        ('OPTIONS', r'/api/v2/.*', api.options),
    )
]


def find_route(method: str, path: str) -> Tuple[Callable[..., None], Tuple[str, ...]]:
    """The handler of a request and its arguments (the pattern's groups);
    NotFound when no route has the path, MethodNotAllowed (with the
    ``Allow`` header) when routes have it for other methods.  GET routes
    answer HEAD."""
    allowed: List[str] = []
    for route_method, pattern, handler in ROUTES:
        m = pattern.match(path)
        if m is None:
            continue
        if route_method == method or (route_method == 'GET' and method == 'HEAD'):
            return handler, m.groups()
        if route_method != 'OPTIONS':     # (any /api/v1/ path has it)
            allowed += [route_method, 'HEAD'] if route_method == 'GET' else [route_method]
    if not allowed:
        raise NotFound('Not found')
    raise MethodNotAllowed('Method Not Allowed', headers=[
        ('Allow', ', '.join(sorted(set(allowed))))])


def parse_allowed_hosts(value: Union[str, Iterable[str], None]) -> FrozenSet[str]:
    """Host names (a comma-separated string or names), lower case: a name,
    ``.example.org`` for it and its subdomains, or ``*`` for any."""
    if value is None:
        return frozenset()
    names = value.split(',') if isinstance(value, str) else list(value)
    hosts = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError('a host name must be a string, not %r' % (name,))
        name = name.strip().lower().rstrip('.')
        if name.startswith('[') and name.endswith(']'):
            name = name[1:-1]
        if not name or ' ' in name or '/' in name:
            if name:
                raise ValueError('not a host name: %r' % (name,))
            continue
        hosts.add(name)
    return frozenset(hosts)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class WebServer:
    """The inbox's HTTP server, serving ``inbox`` on ``address`` from its
    own threads once :meth:`start` is called.  :attr:`url` is where a
    browser finds it (the real port when 0 was asked for).

    ``upstream``: where released messages go (None: release is off).
    ``allowed_hosts``: host names requests may name in their ``Host``
    header besides localhost (and ``*.localhost``), IP addresses, and the
    name the server is bound to (see :func:`parse_allowed_hosts`); any
    other gets a 403, whatever address the server is bound to.
    ``max_connections``, ``threads`` and the timeouts: see
    :mod:`smtpd_compat.web.transport`.
    """

    def __init__(self, address: Address, inbox: Inbox,
                 upstream: Optional[Upstream] = None,
                 allowed_hosts: Union[str, Iterable[str], None] = None, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 threads: int = DEFAULT_THREADS,
                 header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT,
                 io_timeout: float = IO_TIMEOUT) -> None:
        host, port = address
        hosts = set(parse_allowed_hosts(allowed_hosts))
        if host not in ('', '0.0.0.0', '::') and not _is_ip(host):
            hosts.add(host.lower().rstrip('.'))
        #: The names allowed in Host headers (besides localhost and IP
        #: addresses).
        self.allowed_hosts: FrozenSet[str] = frozenset(hosts)
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.socket = sock
        self.server_address: Tuple[Any, ...] = sock.getsockname()
        self.inbox = inbox
        #: Where released messages go (None: release is off).
        self.upstream = upstream
        # The one thread that waits on this server's sockets: the HTTP
        # connections and the websockets.
        self._io = IOThread('smtpd_compat web')
        #: The live events (``/api/events``).
        self.events = Hub(inbox, self._io)
        self._server = Server(sock, self._answer, io=self._io,
                              max_connections=max_connections,
                              threads=threads, header_timeout=header_timeout,
                              idle_timeout=idle_timeout, io_timeout=io_timeout,
                              name='smtpd_compat web inbox')
        self._started = False
        shown = str(self.server_address[0])
        if shown in ('', '0.0.0.0'):
            shown = '127.0.0.1'
        elif shown == '::':
            shown = '::1'
        if ':' in shown:
            shown = '[%s]' % shown
        #: The inbox page's URL, e.g. ``http://127.0.0.1:8025/``.
        self.url = 'http://%s:%d/' % (shown, self.server_address[1])

    @property
    def connections(self) -> int:
        """The HTTP connections open now."""
        return self._server.connections

    def host_allowed(self, host: str) -> bool:
        """May a request with this ``Host`` header be answered?"""
        m = _HOST.match(host.strip())
        if m is None:
            return False
        name = (m.group(1) or m.group(2) or '').lower().rstrip('.')
        if not name:
            return False
        allowed = self.allowed_hosts
        if (name == 'localhost' or name.endswith('.localhost') or _is_ip(name)
                or '*' in allowed or name in allowed):
            return True
        return any(entry.startswith('.') and (name.endswith(entry) or name == entry[1:])
                   for entry in allowed)

    def start(self) -> WebServer:
        """Serve from the server's own threads; returns the server."""
        self._server.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving and close the socket and every connection (the
        websockets told the server is going away)."""
        self.events.close()
        if self._started:
            self._server.stop()
            self._started = False
        self._io.stop()
        self.socket.close()

    def _answer(self, conn: Connection) -> Optional[Response]:
        # In a worker: one request.
        handler = Handler(conn, conn.address, self)  # type: ignore[arg-type]
        if self.events.owns(conn.sock):
            # A websocket: its connection lives on in the events hub.
            return DETACH
        response = handler.response
        if response is not None and handler.close_connection:
            response.close = True
        return response

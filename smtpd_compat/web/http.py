"""The inbox's HTTP side: the server, the request handler, the routes
(Mailpit's API v1, whose handlers are in :mod:`smtpd_compat.web.api`, and the
page) and the page's Content-Security-Policy.

:class:`WebServer` is a :class:`http.server.ThreadingHTTPServer` that
serves one :class:`~smtpd_compat.web.store.Inbox` from a daemon thread (one
thread per request): the SMTP loop never waits for it.  The page's HTML,
CSS and JavaScript are files of :mod:`smtpd_compat.web.static`.

Everything taken from a message is data: escaped server-side (JSON, header
values cleaned), set with ``textContent`` in the page, and a message's HTML
is only ever served under a Content-Security-Policy with ``sandbox`` and no
script source, inside an ``<iframe sandbox>`` without ``allow-scripts``.
"""
from __future__ import annotations

import http.server
import ipaddress
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Pattern, Tuple, cast

from smtpd_compat._version import VERSION
from smtpd_compat.web import api, events, mailhog, openapi, static
from smtpd_compat.web.api import (
    DATA_CSP, MESSAGE_CSP, BadRequest, Body, Forbidden, HTTPError,
    MethodNotAllowed, NotFound, PayloadTooLarge, parse_body)
from smtpd_compat.web.events import Hub
from smtpd_compat.web.release import Upstream
from smtpd_compat.web.store import Inbox

__all__ = [
    'WebServer', 'Handler', 'ROUTES', 'find_route', 'Address', 'PAGE_CSP',
    'MESSAGE_CSP', 'DATA_CSP', 'MAX_REQUEST_BODY',
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

_LOOPBACK_HOSTS = re.compile(
    r'^(localhost|[^:]+\.localhost|127(\.\d{1,3}){3}|\[::1\]|::1)(:\d+)?$', re.I)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(',', ':')).encode('ascii')


class Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP request: :data:`ROUTES` picks the method that answers it.
    The inbox is the server's (``self.server.inbox``)."""

    server_version = 'smtpd_compat-web/' + VERSION
    # A client that stops sending is dropped after this many seconds.
    timeout = 60

    #: The query string of the request being answered.
    query: Dict[str, List[str]]
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

    def _send(self, status: int, body: bytes, content_type: str,
              csp: str = DATA_CSP, headers: Iterable[Tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Content-Security-Policy', csp)
        self.send_header('X-Content-Type-Options', 'nosniff')
        self.send_header('Referrer-Policy', 'no-referrer')
        self.send_header('Cache-Control', 'no-store')
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _send_json(self, value: Any) -> None:
        self._send(200, _json(value), 'application/json; charset=utf-8')

    def _send_text(self, status: int, text: str) -> None:
        self._send(status, text.encode('utf-8'), 'text/plain; charset=utf-8')

    def _host_allowed(self) -> bool:
        # DNS rebinding: a web site whose name resolves to 127.0.0.1 could
        # otherwise read a loopback-only inbox.  Only when bound to a
        # loopback address, every Host must be a loopback name.
        if not self.web_server.loopback_only:
            return True
        host = self.headers.get('Host', '')
        return bool(_LOOPBACK_HOSTS.match(host))

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
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception('web inbox: error serving %s %r', self.command, self.path)
            try:
                self._send_text(500, 'Internal error')
            except OSError:
                pass
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

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        """The stdlib's errors (a bad request line, headers too long, ...)
        in plain text like every other answer, not its HTML page."""
        self.close_connection = True
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = 'Error'
        text = (message or phrase).replace('\r', ' ').replace('\n', ' ')
        self._send(code, text.encode('utf-8', 'replace'), 'text/plain; charset=utf-8',
                   headers=[('Connection', 'close')])

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
        # What the page polls: cheap, and changes whenever the list does.
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


def _is_loopback(host: str) -> bool:
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebServer(http.server.ThreadingHTTPServer):
    """The inbox's HTTP server, serving ``inbox`` on ``address`` from a
    daemon thread once :meth:`start` is called.  :attr:`url` is where a
    browser finds it (the real port when 0 was asked for)."""

    daemon_threads = True

    def __init__(self, address: Address, inbox: Inbox,
                 upstream: Optional[Upstream] = None) -> None:
        host, port = address
        if ':' in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.inbox = inbox
        #: Where released messages go (None: release is off).
        self.upstream = upstream
        #: The live events (``/api/events``).
        self.events = Hub(inbox)
        self.loopback_only = _is_loopback(host)
        self._thread: Optional[threading.Thread] = None
        shown = str(self.server_address[0])
        if shown in ('', '0.0.0.0'):
            shown = '127.0.0.1'
        elif shown == '::':
            shown = '::1'
        if ':' in shown:
            shown = '[%s]' % shown
        #: The inbox page's URL, e.g. ``http://127.0.0.1:8025/``.
        self.url = 'http://%s:%d/' % (shown, self.server_address[1])

    def start(self) -> WebServer:
        """Serve from a daemon thread; returns the server."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={'poll_interval': 0.2},
            name='smtpd_compat web inbox %s' % self.url, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (requests under way finish
        in their own daemon threads)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        self.events.close()

    def shutdown_request(self, request: Any) -> None:
        # A websocket's connection lives on in the events hub.
        if not self.events.owns(request):
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr; log them instead.
        log.debug('web inbox: error with %s', client_address, exc_info=True)

"""The inbox's HTTP side: the server, the request handler, the routes
(Mailpit's API v1 and the page) and the Content-Security-Policies.

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
# (The subpackage itself, not through its parent: smtpd_compat.web imports
# this module.)
import smtpd_compat.web.static as static
from smtpd_compat.web.mime import decode_header, header_text, part_bytes
from smtpd_compat.web.store import Inbox, StoredMessage

__all__ = [
    'WebServer', 'Handler', 'ROUTES', 'Address', 'PAGE_CSP', 'MESSAGE_CSP',
    'DATA_CSP',
]

log = logging.getLogger(__name__)

#: ``(host, port)``.
Address = Tuple[str, int]

# Request bodies (DELETE/PUT with a list of IDs) are small; refuse more.
_MAX_REQUEST_BODY = 1024 * 1024

#: The page: scripts and styles only from this origin, no inline code, no
#: remote loads; message HTML only in frames from this origin.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
            "img-src 'self' data:; connect-src 'self'; frame-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: A message's HTML: no script at all (the CSP sandbox also applies when the
#: URL is opened directly, not only inside the page's sandboxed iframe), no
#: remote loads; images inline (data:) or from this inbox (cid: rewritten).
#: Links open in a new tab (allow-popups) that leaves the sandbox, so a link
#: to a web app works there; javascript: URLs cannot run (no script source).
MESSAGE_CSP = ("default-src 'none'; img-src 'self' data: cid:; "
               "style-src 'unsafe-inline'; font-src data:; "
               "frame-ancestors 'self'; "
               "sandbox allow-popups allow-popups-to-escape-sandbox")
#: Raw source and parts: never rendered as a document of this origin.
DATA_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"

# The page's files other than index.html, by extension.
_STATIC_TYPES = {'js': 'text/javascript; charset=utf-8',
                 'css': 'text/css; charset=utf-8'}

_LOOPBACK_HOSTS = re.compile(
    r'^(localhost|[^:]+\.localhost|127(\.\d{1,3}){3}|\[::1\]|::1)(:\d+)?$', re.I)


class _NotFound(Exception):
    pass


class _BadRequest(Exception):
    pass


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(',', ':')).encode('ascii')


def _public(summary: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in summary.items() if not k.startswith('_')}


def _content_disposition(kind: str, filename: str) -> str:
    """A Content-Disposition value that a hostile file name cannot break
    out of: an ASCII fallback of safe characters, and the full name in
    RFC 8187 encoding (RFC 6266 section 4.3)."""
    fallback = re.sub(r'[^A-Za-z0-9._ -]', '_', filename)[:100] or 'download'
    return "%s; filename=\"%s\"; filename*=UTF-8''%s" % (
        kind, fallback, urllib.parse.quote(filename[:200], safe=''))


def _inject_base(markup: str) -> str:
    """Links in the mail open in a new tab: a ``<base target=_blank>``
    after the <head> tag (or the doctype, or at the start)."""
    base = '<base target="_blank">'
    m = re.search(r'<head\b[^>]*>', markup, re.I)
    if m is None:
        m = re.match(r'\s*<!doctype[^>]*>', markup, re.I)
    if m is None:
        return base + markup
    return markup[:m.end()] + base + markup[m.end():]


class Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP request: :data:`ROUTES` picks the method that answers it.
    The inbox is the server's (``self.server.inbox``)."""

    server_version = 'smtpd_compat-web/' + VERSION
    # A client that stops sending is dropped after this many seconds.
    timeout = 60

    #: The query string of the request being answered.
    query: Dict[str, List[str]]

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
            self.query = urllib.parse.parse_qs(url.query)
            path = urllib.parse.unquote(url.path)
            for method, pattern, handler in ROUTES:
                if method != self.command and not (
                        method == 'GET' and self.command == 'HEAD'):
                    continue
                m = pattern.match(path)
                if m:
                    handler(self, *m.groups())
                    return
            self._send_text(404, 'Not found')
        except _NotFound as e:
            self._send_text(404, str(e) or 'Not found')
        except _BadRequest as e:
            self._send_text(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception('web inbox: error serving %s %r', self.command, self.path)
            try:
                self._send_text(500, 'Internal error')
            except OSError:
                pass

    do_GET = do_HEAD = do_DELETE = do_PUT = _dispatch

    def _param(self, name: str, default: str = '') -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def _int_param(self, name: str, default: int) -> int:
        text = self._param(name, '')
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise _BadRequest('invalid %s: %s' % (name, text)) from None
        if value < 0:
            raise _BadRequest('invalid %s: %s' % (name, text))
        return value

    def _body(self) -> Dict[str, Any]:
        """The request body as a dict: JSON (Mailpit's form; keys matched
        without regard to case, as Go's JSON decoder does) or a form
        (what some clients send)."""
        try:
            length = int(self.headers.get('Content-Length') or 0)
        except ValueError:
            raise _BadRequest('invalid Content-Length') from None
        if length > _MAX_REQUEST_BODY:
            raise _BadRequest('request body too large')
        data = self.rfile.read(length) if length > 0 else b''
        if not data.strip():
            return {}
        ctype = self.headers.get('Content-Type', '')
        if 'application/x-www-form-urlencoded' in ctype:
            form = urllib.parse.parse_qs(data.decode('utf-8', 'replace'))
            return {k.lower(): v for k, v in form.items()}
        try:
            value = json.loads(data)
        except ValueError:
            raise _BadRequest('invalid JSON body') from None
        if not isinstance(value, dict):
            raise _BadRequest('the body must be a JSON object')
        return {str(k).lower(): v for k, v in value.items()}

    def _message(self, id: str) -> StoredMessage:
        message = self.inbox.get(id)
        if message is None:
            raise _NotFound('Message not found')
        return message

    # -- Mailpit API ------------------------------------------------------------

    def _list(self, messages: List[StoredMessage]) -> None:
        start = self._int_param('start', 0)
        limit = self._int_param('limit', 50)
        page = messages[start:start + limit]
        stats = self.inbox.stats()
        items = []
        for m in page:
            item: Dict[str, Any] = {'ID': m.id, 'MessageID': '', 'Read': m.read}
            item.update(_public(self.inbox.summary(m)))
            items.append(item)
        self._send_json({
            'total': stats['total'],
            'unread': stats['unread'],
            'count': len(items),
            'messages_count': len(messages),
            'start': start,
            'tags': [],
            'messages': items,
        })

    def get_messages(self) -> None:
        self._list(self.inbox.newest_first())

    def get_search(self) -> None:
        query = self._param('query')
        if not query.strip():
            raise _BadRequest('no search query')
        self._list(self.inbox.search(query))

    def delete_search(self) -> None:
        query = self._param('query')
        if not query.strip():
            raise _BadRequest('no search query')
        self.inbox.delete([m.id for m in self.inbox.search(query)])
        self._send_text(200, 'ok')

    def delete_messages(self) -> None:
        ids = self._body().get('ids')
        if ids is None or ids == []:
            self.inbox.delete(None)
        elif isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            self.inbox.delete(ids)
        else:
            raise _BadRequest('IDs must be a list of strings')
        self._send_text(200, 'ok')

    def put_messages(self) -> None:
        body = self._body()
        ids = body.get('ids')
        read = body.get('read', False)
        if isinstance(read, list):      # a form
            read = read[-1].lower() in ('1', 'true', 'yes')
        if ids is not None and not (
                isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise _BadRequest('IDs must be a list of strings')
        self.inbox.set_read(ids or None, bool(read))
        self._send_text(200, 'ok')

    def get_message(self, id: str) -> None:
        message = self._message(id)
        details = dict(self.inbox.parsed(message).details)
        del details['_parts']
        if not message.read:
            self.inbox.set_read([message.id], True)
        result: Dict[str, Any] = {'ID': message.id, 'Read': True}
        result.update(details)
        self._send_json(result)

    def get_headers(self, id: str) -> None:
        msg = self.inbox.parsed(self._message(id)).msg
        headers: Dict[str, List[str]] = {}
        for name, value in msg.raw_items():
            text = decode_header(value)
            # Go's canonical form (textproto.CanonicalMIMEHeaderKey), as
            # Mailpit returns the keys: Message-Id, Content-Type.
            key = '-'.join(w[:1].upper() + w[1:].lower() for w in name.split('-'))
            headers.setdefault(key, []).append(text)
        self._send_json(dict(sorted(headers.items())))

    def get_raw(self, id: str) -> None:
        message = self._message(id)
        headers = []
        if self._param('dl'):
            headers.append(('Content-Disposition', _content_disposition(
                'attachment', message.id + '.eml')))
            ctype = 'message/rfc822'
        else:
            ctype = 'text/plain; charset=utf-8'
        self._send(200, message.raw, ctype, headers=headers)

    def get_part(self, id: str, part_id: str) -> None:
        message = self._message(id)
        parts = self.inbox.parsed(message).details['_parts']
        part = parts.get(part_id)
        if part is None:
            raise _NotFound('Part not found')
        ctype = part.get_content_type()
        charset = part.get_content_charset()
        if charset and ctype.startswith('text/') and re.match(r'^[\w.:-]+$', charset):
            ctype += '; charset=' + charset
        try:
            filename = header_text(part.get_filename() or '')
        except Exception:
            filename = ''
        kind = 'attachment' if self._param('dl') else 'inline'
        headers = [('Content-Disposition', _content_disposition(
            kind, filename or 'part-' + part_id))]
        self._send(200, part_bytes(part), ctype, headers=headers)

    def get_info(self) -> None:
        stats = self.inbox.stats()
        inbox = self.inbox
        self._send_json({
            'Version': 'smtpd_compat ' + VERSION,
            'LatestVersion': '',
            'Database': '',
            'DatabaseSize': stats['bytes'],
            'Messages': stats['total'],
            'Unread': stats['unread'],
            'Tags': {},
            'RuntimeStats': {
                'Memory': 0,
                'MessagesDeleted': inbox.deleted,
                'SMTPAccepted': inbox.accepted,
                'SMTPAcceptedSize': inbox.accepted_bytes,
                'SMTPIgnored': inbox.ignored,
                'SMTPRejected': 0,
                'Uptime': int(time.time() - inbox.started),
            },
        })

    def get_tags(self) -> None:
        self._send_json([])

    def get_view_html(self, id: str) -> None:
        message = self._message(id)
        details = self.inbox.parsed(message).details
        markup = details['HTML']
        if not markup:
            raise _NotFound('Message has no HTML part')
        # cid: references become this inbox's part URLs, so inline images
        # load from the same origin (and nothing from elsewhere).
        by_cid = {a['ContentID']: a['PartID']
                  for a in details['Inline'] + details['Attachments']
                  if a['ContentID']}

        def rewrite(m: 're.Match[str]') -> str:
            cid = urllib.parse.unquote(m.group(1))
            part_id = by_cid.get(cid)
            if part_id is None:
                return m.group(0)
            return '/api/v1/message/%s/part/%s' % (message.id, part_id)

        markup = re.sub(r'cid:([^"\'\s>)]+)', rewrite, markup, flags=re.I)
        if self._param('embed'):
            markup = _inject_base(markup)
        self._send(200, markup.encode('utf-8', 'replace'),
                   'text/html; charset=utf-8', csp=MESSAGE_CSP)

    def get_view_text(self, id: str) -> None:
        message = self._message(id)
        text = self.inbox.parsed(message).details['Text']
        self._send_text(200, text)

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
        ('GET', r'/view/' + _ID + r'\.html', Handler.get_view_html),
        ('GET', r'/view/' + _ID + r'\.txt', Handler.get_view_text),
        ('GET', r'/(app\.js|app\.css)', Handler.get_static),
        ('GET', r'/livez', Handler.get_livez),
        ('GET', r'/readyz', Handler.get_livez),
        ('GET', r'/api/web/state', Handler.get_state),
        ('GET', r'/api/v1/info', Handler.get_info),
        ('GET', r'/api/v1/tags', Handler.get_tags),
        ('GET', r'/api/v1/messages', Handler.get_messages),
        ('PUT', r'/api/v1/messages', Handler.put_messages),
        ('DELETE', r'/api/v1/messages', Handler.delete_messages),
        ('GET', r'/api/v1/search', Handler.get_search),
        ('DELETE', r'/api/v1/search', Handler.delete_search),
        ('GET', r'/api/v1/message/' + _ID, Handler.get_message),
        ('GET', r'/api/v1/message/' + _ID + r'/headers', Handler.get_headers),
        ('GET', r'/api/v1/message/' + _ID + r'/raw', Handler.get_raw),
        ('GET', r'/api/v1/message/' + _ID + r'/part/([0-9.]+)', Handler.get_part),
    )
]


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

    def __init__(self, address: Address, inbox: Inbox) -> None:
        host, port = address
        if ':' in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.inbox = inbox
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr; log them instead.
        log.debug('web inbox: error with %s', client_address, exc_info=True)

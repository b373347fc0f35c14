"""PROXY protocol (versions 1 and 2) in front of SMTP, opt-in.

A TCP load balancer such as HAProxy hides the client: the server sees the
balancer's address.  With ``send-proxy`` / ``send-proxy-v2`` the balancer
writes a small header before the client's first byte saying who the client
is (HAProxy's "PROXY protocol" specification).  This module has

* :func:`parse_proxy_header`, a sans-IO parser: a pure function over the
  bytes received so far that returns a :class:`ProxyHeader`, returns None
  when more bytes are needed, or raises :class:`ProxyProtocolError`;
* :class:`ProxyProtocolChannelMixin` and :class:`ProxyProtocolServerMixin`,
  which hold back the 220 greeting until the header has arrived, then make
  ``channel.peer`` (and so ``process_message``'s ``peer``) the original
  client and keep the balancer's address as ``channel.proxy_peer``.

A connection whose header is missing or malformed is closed without a
reply (the peer is not an SMTP client we can talk to) and a warning is
logged on the ``smtpd_compat`` logger.

Only enable this behind a balancer you control: whoever can connect
directly can claim any address.
"""
import ipaddress
import logging
import struct
from typing import NamedTuple, Optional, Tuple

import smtpd_compat as _smtpd
from smtpd_compat._compose import CapabilityServerMixin, UNSET, settings
from smtpd_compat.session import LAYERS

__all__ = [
    'ProxyHeader', 'ProxyProtocolError', 'parse_proxy_header',
    'ProxyProtocolChannelMixin', 'ProxyProtocolServerMixin',
    'ProxyProtocolServer', 'V2_SIGNATURE', 'CLI_OPTIONS', 'cli_configure',
]

logger = logging.getLogger(__name__)

# The twelve bytes that open a version 2 header: chosen by the spec so that
# they can never begin a valid text protocol exchange.
V2_SIGNATURE = b'\r\n\r\n\x00\r\nQUIT\n'
_V1_PREFIX = b'PROXY '
# A version 1 line is at most 107 bytes including CRLF (the longest form,
# TCP6 with two full addresses and ports); anything longer is not a header.
_V1_MAX = 107
_V2_FIXED = 16

# Version 2 address families (high nibble) and transports (low nibble).
_V2_FAMILIES = {
    0x00: ('UNSPEC', 0),
    0x11: ('TCP4', 12), 0x12: ('UDP4', 12),
    0x21: ('TCP6', 36), 0x22: ('UDP6', 36),
    0x31: ('UNIX_STREAM', 216), 0x32: ('UNIX_DGRAM', 216),
}


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


class ProxyHeader(NamedTuple):
    """A parsed PROXY header.

    version
        1 or 2.
    command
        'PROXY' (a relayed connection) or 'LOCAL' (the balancer's own
        connection, e.g. a health check: use the real TCP endpoints).
    family
        'TCP4', 'TCP6', 'UNKNOWN' (v1), or the v2 names 'UNSPEC',
        'UDP4', 'UDP6', 'UNIX_STREAM', 'UNIX_DGRAM'.
    source, destination
        (host, port) of the original client and of the address it
        connected to (a path string for UNIX families), or None when the
        header carries no address.
    length
        how many bytes the header took; what follows is the client's.
    tlvs
        v2 type-length-value extensions as (type, value) pairs.
    """
    version: int
    command: str
    family: str
    source: Optional[Tuple[str, int]]
    destination: Optional[Tuple[str, int]]
    length: int
    tlvs: tuple = ()


def parse_proxy_header(data: bytes) -> Optional[ProxyHeader]:
    """Parse a PROXY v1 or v2 header at the start of ``data``.

    Returns a :class:`ProxyHeader` (its ``length`` says where the client's
    own bytes start), or None if ``data`` is a valid beginning that is not
    complete yet.  Raises :class:`ProxyProtocolError` when ``data`` cannot
    be the start of a header.
    """
    data = bytes(data)
    if data[:1] == b'\r':
        return _parse_v2(data)
    if data[:1] == b'P' or not data:
        return _parse_v1(data)
    raise ProxyProtocolError('no PROXY protocol signature')


def _parse_v1(data):
    # "PROXY" SP family SP src SP dst SP sport SP dport CRLF, or
    # "PROXY UNKNOWN" [anything] CRLF.
    if len(data) < len(_V1_PREFIX):
        if _V1_PREFIX.startswith(data):
            return None
        raise ProxyProtocolError('no PROXY protocol signature')
    if not data.startswith(_V1_PREFIX):
        raise ProxyProtocolError('no PROXY protocol signature')
    end = data.find(b'\r\n', 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyProtocolError('PROXY v1 line longer than %d bytes'
                                     % _V1_MAX)
        if b'\n' in data or b'\r' in data[:-1]:
            raise ProxyProtocolError('PROXY v1 line has a bare CR or LF')
        return None
    line = data[:end]
    length = end + 2
    try:
        text = line.decode('ascii')
    except UnicodeDecodeError:
        raise ProxyProtocolError('PROXY v1 line is not ASCII') from None
    parts = text.split(' ')
    if len(parts) >= 2 and parts[1] == 'UNKNOWN':
        # The sender could not tell the addresses; the rest is ignored.
        return ProxyHeader(1, 'PROXY', 'UNKNOWN', None, None, length)
    if len(parts) != 6:
        raise ProxyProtocolError('PROXY v1 line has %d fields, not 6'
                                 % len(parts))
    _, family, src, dst, sport, dport = parts
    if family == 'TCP4':
        kind = ipaddress.IPv4Address
    elif family == 'TCP6':
        kind = ipaddress.IPv6Address
    else:
        raise ProxyProtocolError('unknown PROXY v1 family %r' % family)
    return ProxyHeader(1, 'PROXY', family,
                       (_v1_address(kind, src), _v1_port(sport)),
                       (_v1_address(kind, dst), _v1_port(dport)), length)


def _v1_address(kind, text):
    try:
        return str(kind(text))
    except ValueError:
        raise ProxyProtocolError('bad address %r in PROXY v1 line'
                                 % text) from None


def _v1_port(text):
    # Decimal, 0-65535, no sign, no leading zero (the spec's form).
    if (not text.isdigit() or not text.isascii() or len(text) > 5
            or (len(text) > 1 and text[0] == '0') or int(text) > 65535):
        raise ProxyProtocolError('bad port %r in PROXY v1 line' % text)
    return int(text)


def _parse_v2(data):
    head = data[:len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(head):
        raise ProxyProtocolError('no PROXY protocol signature')
    if len(data) < _V2_FIXED:
        if len(data) > len(V2_SIGNATURE) and data[12] >> 4 != 2:
            raise ProxyProtocolError('PROXY v2 version nibble is not 2')
        return None
    ver_cmd, fam, size = struct.unpack('!BBH', data[12:16])
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError('PROXY v2 version nibble is not 2')
    cmd = ver_cmd & 0x0F
    if cmd not in (0, 1):
        raise ProxyProtocolError('unknown PROXY v2 command %d' % cmd)
    if fam not in _V2_FAMILIES:
        raise ProxyProtocolError('unknown PROXY v2 family 0x%02x' % fam)
    family, addr_len = _V2_FAMILIES[fam]
    if size < addr_len:
        raise ProxyProtocolError('PROXY v2 address block too short for %s'
                                 % family)
    length = _V2_FIXED + size
    if len(data) < length:
        return None
    block = data[_V2_FIXED:length]
    command = 'LOCAL' if cmd == 0 else 'PROXY'
    source = destination = None
    if addr_len == 12:
        source = (str(ipaddress.IPv4Address(block[0:4])),
                  struct.unpack('!H', block[8:10])[0])
        destination = (str(ipaddress.IPv4Address(block[4:8])),
                       struct.unpack('!H', block[10:12])[0])
    elif addr_len == 36:
        source = (str(ipaddress.IPv6Address(block[0:16])),
                  struct.unpack('!H', block[32:34])[0])
        destination = (str(ipaddress.IPv6Address(block[16:32])),
                       struct.unpack('!H', block[34:36])[0])
    elif addr_len == 216:
        source = block[0:108].split(b'\0', 1)[0].decode('utf-8', 'replace')
        destination = block[108:216].split(b'\0', 1)[0].decode('utf-8',
                                                               'replace')
    return ProxyHeader(2, command, family, source, destination, length,
                       _v2_tlvs(block[addr_len:]))


def _v2_tlvs(rest):
    tlvs = []
    pos = 0
    while pos < len(rest):
        if len(rest) - pos < 3:
            raise ProxyProtocolError('truncated PROXY v2 TLV')
        kind, size = struct.unpack('!BH', rest[pos:pos + 3])
        value = rest[pos + 3:pos + 3 + size]
        if len(value) != size:
            raise ProxyProtocolError('truncated PROXY v2 TLV')
        tlvs.append((kind, value))
        pos += 3 + size
    return tuple(tlvs)


# The longest header we will wait for: the v2 fixed part plus the largest
# length its 16-bit field can state.  Input is never buffered beyond this.
_MAX_HEADER = _V2_FIXED + 0xFFFF


class ProxyProtocolChannelMixin:
    """Channel mixin: read a PROXY header before any SMTP.

    Until the header is complete nothing is sent (the 220 greeting is held
    back through the ``_greet()`` hook) and no SMTP command is read.  Then
    ``self.proxy_peer`` is the balancer's address (the TCP peer) and
    ``self.peer`` the client's as the header states; for a LOCAL command or
    an UNKNOWN/UNSPEC family ``self.peer`` stays the TCP peer.  Bytes that
    follow the header in the same read are SMTP input.

    Its layer is the outermost, so every other capability (per-address
    limits, the session log) sees the client's address in its own
    ``_greet()``.  Until the header is complete the connection's deadline
    is in the 'proxy' phase (``proxy_header_timeout``): when it passes the
    connection is closed without an SMTP reply, which only the balancer
    would read.
    """

    layer = LAYERS['proxy']
    capability_name = 'Proxy'
    proxy_header = None

    def _greet(self):
        if self.proxy_header is None:
            # Hold the greeting until _handle_input has read the header.
            self.proxy_peer = self.peer
            self._proxy_buffer = b''
            server = self.smtp_server
            self.set_deadline(getattr(server, 'proxy_header_timeout', None)
                              or getattr(server, 'idle_timeout', None),
                              'proxy')
            return
        super()._greet()

    def _handle_input(self, data):
        if self.proxy_header is not None:
            super()._handle_input(data)
            return
        buf = self._proxy_buffer + data
        try:
            header = parse_proxy_header(buf[:_MAX_HEADER])
        except ProxyProtocolError as e:
            logger.warning('PROXY protocol error from %s: %s; closing',
                           _format_peer(self.peer), e)
            self._proxy_buffer = b''
            self.close()
            return
        if header is None:
            self._proxy_buffer = buf
            return
        self._proxy_buffer = b''
        self.proxy_header = header
        self.reset_idle_deadline()
        if (header.command == 'PROXY' and isinstance(header.source, tuple)
                and header.family in ('TCP4', 'TCP6')):
            self.peer = header.source
        _smtpd_debug('PROXY header: %r' % (header,))
        self._greet()
        rest = buf[header.length:]
        if rest and self.connected:
            super()._handle_input(rest)


def _smtpd_debug(text):
    print(text, file=_smtpd.DEBUGSTREAM)


def _format_peer(peer):
    if isinstance(peer, tuple) and len(peer) >= 2:
        return '%s:%s' % (peer[0], peer[1])
    return repr(peer)


class ProxyProtocolServerMixin(CapabilityServerMixin):
    """Server mixin: every connection starts with a PROXY v1 or v2 header.
    Its channel mixin is the outermost layer whatever the order of the
    server's bases, so the other capabilities see the client's address.

    ``proxy_header_timeout`` (keyword-only, seconds, default 10): how long
    a connection may take to send its header before it is closed.
    """

    channel_mixin = ProxyProtocolChannelMixin

    def __init__(self, *args, proxy_header_timeout=UNSET, **kwargs):
        settings(self, {'proxy_header_timeout': proxy_header_timeout},
                 {'proxy_header_timeout': 10.0})
        super().__init__(*args, **kwargs)


class ProxyProtocolServer(ProxyProtocolServerMixin, _smtpd.SMTPServer):
    """An SMTPServer (subclass it and override process_message) behind a
    PROXY-protocol balancer."""


CLI_OPTIONS = (
    ('proxy-protocol', '',
     'Expect a PROXY protocol (v1 or v2) header on every connection, as sent '
     'by HAProxy\'s send-proxy / send-proxy-v2; X-Peer shows the original '
     'client.'),
)


def cli_configure(cli):
    """Add the PROXY mixin when --proxy-protocol is given."""
    if 'proxy-protocol' in cli.given:
        cli.mixins.append(ProxyProtocolServerMixin)

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

A connection whose header is missing, malformed or incomplete when the
connection's deadline passes is closed without a reply (the peer is not an
SMTP client we can talk to) and a warning is logged on the
``smtpd_compat`` logger.

Whoever can send the header can claim any address, so a header is only
honoured from the balancers named by ``proxy_trusted`` (default: loopback,
``127.0.0.0/8`` and ``::1/128``).  A connection from any other address is
closed at once, before anything is read or counted, and logged (at most one
line a second, with the number refused since the last one, so that a flood
cannot flood the log).  A connection over an AF_UNIX socket is local and
always trusted (its file permissions decide who may connect).

Only the header's own bytes are taken from the socket: the parser is shown
what the kernel holds with ``MSG_PEEK`` and exactly the header's length is
then read.  Whatever the client sent behind it in the same segment (with
implicit TLS, its ClientHello) stays in the kernel for the next reader,
which may be OpenSSL rather than this module.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import socket
import struct
from typing import (TYPE_CHECKING, Any, Dict, Iterable, List, NamedTuple,
                    Optional, Tuple, Type, Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat.compose import CapabilityServerMixin, UNSET, Unset, setting
from smtpd_compat.logging_ import LogEvery, format_peer, safe
from smtpd_compat.session import LAYERS

if TYPE_CHECKING:
    # Typed as what it is composed into (a SessionStateMixin, and so an
    # SMTPChannel); at run time a plain mixin.
    from smtpd_compat.session import SessionStateMixin as _ChannelBase
else:
    _ChannelBase = object

__all__ = [
    'ProxyHeader', 'ProxyProtocolError', 'parse_proxy_header',
    'ProxyProtocolChannelMixin', 'ProxyProtocolServerMixin',
    'ProxyProtocolServer', 'V2_SIGNATURE', 'DEFAULT_TRUSTED',
    'parse_networks',
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
_V2_FAMILIES: Dict[int, Tuple[str, int]] = {
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
    source: Union[Tuple[str, int], str, None]
    destination: Union[Tuple[str, int], str, None]
    length: int
    tlvs: Tuple[Tuple[int, bytes], ...] = ()


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


def _parse_v1(data: bytes) -> Optional[ProxyHeader]:
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
    kind: Type[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]
    if family == 'TCP4':
        kind = ipaddress.IPv4Address
    elif family == 'TCP6':
        kind = ipaddress.IPv6Address
    else:
        raise ProxyProtocolError('unknown PROXY v1 family %s' % safe(family))
    return ProxyHeader(1, 'PROXY', family,
                       (_v1_address(kind, src), _v1_port(sport)),
                       (_v1_address(kind, dst), _v1_port(dport)), length)


# An address in a v1 line is digits, dots and colons, nothing else: on
# Python 3.9+ ipaddress also accepts an IPv6 scope id ("fe80::1%eth0"),
# and a scope id may hold any character, a line feed included.  The spec
# has no scope ids; a header carrying one is refused.
_V1_ADDRESS = re.compile(r'[0-9A-Fa-f:.]{2,45}')


def _v1_address(kind: Type[Union[ipaddress.IPv4Address,
                                 ipaddress.IPv6Address]], text: str) -> str:
    if _V1_ADDRESS.fullmatch(text) is None:
        raise ProxyProtocolError('bad address %s in PROXY v1 line'
                                 % safe(text))
    try:
        return str(kind(text))
    except ValueError:
        raise ProxyProtocolError('bad address %s in PROXY v1 line'
                                 % safe(text)) from None


def _v1_port(text: str) -> int:
    # Decimal, 0-65535, no sign, no leading zero (the spec's form).
    if (not text.isdigit() or not text.isascii() or len(text) > 5
            or (len(text) > 1 and text[0] == '0') or int(text) > 65535):
        raise ProxyProtocolError('bad port %s in PROXY v1 line' % safe(text))
    return int(text)


def _parse_v2(data: bytes) -> Optional[ProxyHeader]:
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
    source: Union[Tuple[str, int], str, None] = None
    destination: Union[Tuple[str, int], str, None] = None
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


def _v2_tlvs(rest: bytes) -> Tuple[Tuple[int, bytes], ...]:
    tlvs: List[Tuple[int, bytes]] = []
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

#: The balancers trusted by default: this host only.
DEFAULT_TRUSTED: Tuple[str, ...] = ('127.0.0.0/8', '::1/128')

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_networks(spec: Union[str, Iterable[Union[str, _Network]]]
                   ) -> Tuple[_Network, ...]:
    """The networks in ``spec``: a string of comma-separated CIDRs
    (``'10.0.0.0/8,2001:db8::/32'``; a bare address is a /32 or /128) or
    an iterable of such strings or :mod:`ipaddress` network objects.
    Raises ValueError for anything that is not a network."""
    if isinstance(spec, str):
        spec = [part.strip() for part in spec.split(',')]
    networks: List[_Network] = []
    for item in spec:
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            networks.append(item)
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except (TypeError, ValueError) as e:
            raise ValueError('not a network (CIDR): %r (%s)' % (item, e)) from None
    if not networks:
        raise ValueError('no trusted network given')
    return tuple(networks)


def _trusted(addr: object, networks: Iterable[_Network]) -> bool:
    """True if the TCP peer ``addr`` lies in one of ``networks``."""
    if not isinstance(addr, tuple):
        return True     # AF_UNIX: a local process
    try:
        # The kernel may report a link-local peer with its scope.
        ip = ipaddress.ip_address(str(addr[0]).split('%', 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, 'ipv4_mapped', None)
    return any(ip in net or (mapped is not None and mapped in net)
               for net in networks)


class ProxyProtocolChannelMixin(_ChannelBase):
    """Channel mixin: read a PROXY header before any SMTP.

    Until the header is complete nothing is sent (the 220 greeting is held
    back through the ``_greet()`` hook) and no SMTP command is read.  Then
    ``self.proxy_peer`` is the balancer's address (the TCP peer) and
    ``self.peer`` the client's as the header states; for a LOCAL command or
    an UNKNOWN/UNSPEC family ``self.peer`` stays the TCP peer.  The bytes
    that follow the header are left in the socket for whoever reads next
    (the SMTP reader, or OpenSSL with implicit TLS).

    Its layer is the outermost, so every other capability (per-address
    limits, the session log) sees the client's address in its own
    ``_greet()``.  Until the header is complete the connection's deadline
    is in the 'proxy' phase (``proxy_header_timeout``): when it passes the
    connection is closed without an SMTP reply, which only the balancer
    would read.
    """

    layer = LAYERS['proxy']
    capability_name = 'Proxy'
    #: The header, once it has arrived (None until then).
    proxy_header: Optional[ProxyHeader] = None
    #: The TCP peer (the balancer); ``peer`` becomes the header's source.
    proxy_peer: Any
    _proxy_buffer = b''
    instance_state = ('proxy_header', '_proxy_buffer')

    def _greet(self) -> None:
        if self.proxy_header is None:
            # Hold the greeting until handle_read has read the header.
            self.proxy_peer = self.peer
            server = self.smtp_server
            self.set_deadline(getattr(server, 'proxy_header_timeout', None)
                              or getattr(server, 'idle_timeout', None),
                              'proxy')
            return
        super()._greet()

    def handle_read(self) -> None:
        if self.proxy_header is not None:
            super().handle_read()
            return
        sock = cast(socket.socket, self.socket)     # (a channel's is set)
        held = self._proxy_buffer
        try:
            # Look without taking: only the header's bytes are ours.
            peeked = sock.recv(_MAX_HEADER - len(held), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.handle_close()
            return
        if not peeked:
            self.handle_close()     # the peer left before its header
            return
        try:
            header = parse_proxy_header((held + peeked)[:_MAX_HEADER])
        except ProxyProtocolError as e:
            # Take what was seen, so that closing sends a FIN, not a reset.
            try:
                sock.recv(len(peeked))
            except OSError:
                pass
            self._proxy_refuse(e)
            return
        # Incomplete: every byte seen belongs to the header, take them all
        # (leaving them would make the socket readable forever).
        want = len(peeked) if header is None else header.length - len(held)
        try:
            taken = sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.handle_close()
            return
        self._proxy_buffer = held + taken
        if header is not None and len(taken) == want:
            self._proxy_accept(header)

    def _handle_input(self, data: bytes) -> None:
        # Bytes handed over by other code (not read by handle_read above):
        # the header is taken from them, the rest is SMTP input.
        if self.proxy_header is not None:
            super()._handle_input(data)
            return
        buf = self._proxy_buffer + data
        self._proxy_buffer = buf
        try:
            header = parse_proxy_header(buf[:_MAX_HEADER])
        except ProxyProtocolError as e:
            self._proxy_refuse(e)
            return
        if header is not None:
            self._proxy_accept(header)
            rest = buf[header.length:]
            if rest and self.connected:
                super()._handle_input(rest)

    def _proxy_refuse(self, error: ProxyProtocolError) -> None:
        logger.warning('PROXY protocol error from %s: %s; closing',
                       format_peer(self.peer), error)
        self._proxy_buffer = b''
        self.close()

    def _proxy_accept(self, header: ProxyHeader) -> None:
        self._proxy_buffer = b''
        self.proxy_header = header
        self.reset_idle_deadline()
        if (header.command == 'PROXY' and isinstance(header.source, tuple)
                and header.family in ('TCP4', 'TCP6')):
            # Validated by the parser: an address ipaddress accepted, no
            # scope id, nothing that could break a log line or X-Peer.
            self.peer = header.source
        _smtpd_debug('PROXY header: %r' % (header,))
        self._greet()

    def handle_timeout(self, phase: Optional[str]) -> None:
        if phase == 'proxy' and self.proxy_header is None:
            # The session closes it without a reply: the peer is a
            # balancer, a 421 would reach nobody who can read it.
            logger.warning('PROXY header from %s incomplete at the '
                           'deadline; closing', format_peer(self.peer))
        super().handle_timeout(phase)


def _smtpd_debug(text: str) -> None:
    print(text, file=_smtpd.DEBUGSTREAM)


class ProxyProtocolServerMixin(CapabilityServerMixin):
    """Server mixin: every connection starts with a PROXY v1 or v2 header.
    Its channel mixin is the outermost layer whatever the order of the
    server's bases, so the other capabilities see the client's address.

    Keyword-only arguments (the rest go to the next class):

    proxy_trusted
        the balancers whose headers are honoured: comma-separated CIDRs or
        an iterable of them (see :func:`parse_networks`).  Default: the
        class attribute ``proxy_trusted`` if the class sets one, else
        :data:`DEFAULT_TRUSTED` (loopback).  A connection from any other
        address is closed unread.  ``self.proxy_trusted`` holds the parsed
        networks.
    proxy_header_timeout
        seconds (default 10) a connection may take to send its header
        before it is closed.
    """

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = \
        ProxyProtocolChannelMixin
    proxy_header_timeout: Optional[float]
    #: The trusted balancers' networks (parsed from the keyword).
    proxy_trusted: Tuple[_Network, ...]
    _proxy_refused: LogEvery

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any,
                 proxy_header_timeout: Union[float, None, Unset] = UNSET,
                 proxy_trusted: Union[str, Iterable[str], Unset] = UNSET,
                 **kwargs: Any) -> None:
        self.proxy_header_timeout = setting(
            self, 'proxy_header_timeout', proxy_header_timeout, 10.0)
        # A bad value is a configuration mistake: raise before binding.
        self.proxy_trusted = parse_networks(setting(
            self, 'proxy_trusted', proxy_trusted, DEFAULT_TRUSTED))
        self._proxy_refused = LogEvery(1.0)
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    def handle_accepted(self, conn: socket.socket, addr: Any) -> None:
        if _trusted(addr, self.proxy_trusted):
            super().handle_accepted(conn, addr)
            return
        # Not a balancer of ours: whatever it would claim, it is not served
        # (and not counted under a claimed address by per-address limits).
        conn.close()
        refused = self._proxy_refused.count()
        if refused:
            logger.warning('refused %d connection(s) not from a trusted '
                           'PROXY balancer, last from %s',
                           refused, format_peer(addr))


class ProxyProtocolServer(ProxyProtocolServerMixin, _smtpd.SMTPServer):
    """An SMTPServer (subclass it and override process_message) behind a
    PROXY-protocol balancer."""

"""Releasing a captured message: relaying it to a configured upstream SMTP
server, as Mailpit's ``POST /api/v1/message/{ID}/release`` does with its
``--smtp-relay-config``.

Off unless an upstream is configured (:class:`Upstream`, the ``--web-relay``
option).  An ``allowed`` pattern limits the recipients, as Mailpit's
``allowed-recipients``.  The message goes as Mailpit sends it: without its
``Bcc`` header, with a new ``Date`` and ``Message-ID``, from the address
in its ``Sender`` (else ``From``) header, with CRLF line ends only
(:func:`smtpd_compat.relay.crlf_only`).  The upstream is spoken to with
:mod:`smtplib` from the HTTP request's own thread, never from the SMTP
loop, each step bounded by ``timeout`` seconds.
"""
import email.utils
import logging
import re
import smtplib
import time
from typing import Dict, List, Optional, Pattern, Sequence, Tuple

from smtpd_compat.relay import crlf_only

__all__ = ['Upstream', 'ReleaseError', 'parse_address']

log = logging.getLogger(__name__)

# The header section: up to the first empty line (RFC 5322 section 2.1).
_HEADER_END = re.compile(rb'\r?\n\r?\n')


class ReleaseError(Exception):
    """Why a message was not released (answered with 400 and this text)."""


def parse_address(text: str) -> Optional[str]:
    """The address in ``'Name <a@example.org>'`` or ``'a@example.org'``,
    or None when there is none (no ``@``, spaces, a line break)."""
    if any(c in text for c in '\r\n\0'):
        return None
    name, address = email.utils.parseaddr(text)
    local, at, domain = address.rpartition('@')
    if not (local and at and domain) or re.search(r'\s', address):
        return None
    return address


def _headers(raw: bytes) -> Tuple[List[bytes], bytes]:
    """The header section's lines (continuations joined to their header)
    and the rest of the message, the empty line included."""
    m = _HEADER_END.search(raw)
    head, rest = (raw[:m.start()], raw[m.start():]) if m else (raw, b'\r\n\r\n')
    lines: List[bytes] = []
    for line in re.split(rb'\r?\n', head):
        if line[:1] in (b' ', b'\t') and lines:
            lines[-1] += b'\r\n' + line
        else:
            lines.append(line)
    return lines, rest


def _name(line: bytes) -> bytes:
    return line.partition(b':')[0].strip().lower()


class Upstream:
    """Where released messages go: ``host``, ``port``, the recipients
    allowed (a regular expression searched in each address, or None for
    all), and the time-out of each step in seconds."""

    def __init__(self, host: str, port: int, allowed: Optional[str] = None,
                 timeout: float = 30.0) -> None:
        if not host or not 0 < int(port) < 65536:
            raise ValueError('the relay needs a host and a port, not %r:%r'
                             % (host, port))
        self.host = host
        self.port = int(port)
        try:
            self.allowed: Optional[Pattern[str]] = (
                re.compile(allowed) if allowed else None)
        except re.error as e:
            raise ValueError('invalid allowed-recipients pattern %r: %s'
                             % (allowed, e)) from None
        self.timeout = timeout

    def __repr__(self) -> str:
        return '<Upstream %s:%d>' % (self.host, self.port)

    def check(self, to: Sequence[str]) -> List[str]:
        """The addresses of ``to`` (each ``'a@example.org'`` or ``'Name
        <a@example.org>'``); ReleaseError when one is invalid or not
        allowed, or none is given."""
        addresses = []
        refused = []
        for text in to:
            address = parse_address(text)
            if address is None:
                raise ReleaseError('Invalid email address: %s' % text)
            if self.allowed is not None and not self.allowed.search(address):
                refused.append(text)
            addresses.append(address)
        if refused:
            raise ReleaseError('Failed: %s not allowed by the relay: %s' % (
                'address' if len(refused) == 1 else 'addresses',
                ', '.join(refused)))
        if not addresses:
            raise ReleaseError('No valid addresses found')
        return addresses

    def release(self, raw: bytes, to: Sequence[str]) -> None:
        """Relay ``raw`` to the recipients ``to`` (see :meth:`check`);
        ReleaseError with the reason when it cannot be done."""
        addresses = self.check(to)
        lines, rest = _headers(raw)
        by_name: Dict[bytes, bytes] = {}
        for line in lines:
            by_name.setdefault(_name(line), line.partition(b':')[2])
        sender = None
        for header in (b'sender', b'from'):
            if header in by_name:
                value = by_name[header].decode('utf-8', 'replace')
                sender = parse_address(' '.join(value.split()))
                if sender is None:
                    raise ReleaseError('Failed: unable to parse %s header'
                                       % header.decode().title())
                break
        if sender is None:
            raise ReleaseError('No From header found')
        # As Mailpit: no Bcc, a new Date and Message-ID (a provider may
        # drop a second message with the same Message-ID).
        kept = [line for line in lines
                if _name(line) not in (b'bcc', b'date', b'message-id')]
        kept += [b'Date: ' + email.utils.formatdate(time.time(), localtime=True).encode(),
                 b'Message-ID: ' + email.utils.make_msgid('smtpd_compat').encode()]
        message = crlf_only(b'\r\n'.join(kept) + rest)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as client:
                refused = client.sendmail(sender, addresses, message)
        except (OSError, smtplib.SMTPException, ValueError) as e:
            raise ReleaseError('SMTP error: %s' % (e,)) from None
        for address, (code, text) in refused.items():
            # As Mailpit (without forward-smtp-errors): the others got it.
            log.warning('web inbox: the relay refused %s: %s %r', address, code, text)

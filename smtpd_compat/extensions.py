"""Opt-in ESMTP extensions for new server classes.

PIPELINING (RFC 2920), CHUNKING and BINARYMIME (RFC 3030), DSN parameters
(RFC 3461) and ENHANCEDSTATUSCODES (RFC 2034, codes from RFC 3463).  Each is
advertised in the EHLO reply only when enabled; the stdlib classes never
see any of this.

Use :class:`ExtensionsMixin` in front of any server class (it composes
:class:`ExtensionsChannelMixin` onto the server's channel class), or
subclass :class:`ESMTPServer`::

    class Server(ExtensionsMixin, MaildirServer):
        pass

    Server(('127.0.0.1', 8025), None, maildir='/srv/mail',
           esmtp_extensions=('PIPELINING', 'CHUNKING', 'DSN'))

The wire-format parsers (:func:`parse_bdat`, :func:`parse_notify`,
:func:`parse_orcpt`, :func:`parse_ret`, :func:`parse_envid`,
:func:`xtext_decode`) are pure functions that return a value or raise
ValueError.
"""
from __future__ import annotations

import re
from typing import (TYPE_CHECKING, Any, Callable, ClassVar, Dict, FrozenSet,
                    Iterable, List, Optional, Tuple, Type, Union)

import smtpd_compat as _smtpd
from smtpd_compat.compose import CapabilityServerMixin, UNSET, Unset, setting
from smtpd_compat.message import MessageChannelMixin
from smtpd_compat.session import LAYERS


__all__ = [
    'EXTENSIONS', 'ExtensionsMixin', 'ExtensionsChannelMixin', 'ESMTPServer',
    'parse_bdat', 'parse_notify', 'parse_orcpt', 'parse_ret', 'parse_envid',
    'xtext_decode', 'enhance_reply',
]

#: Every extension this module implements, in EHLO order.
EXTENSIONS: Tuple[str, ...] = ('PIPELINING', 'CHUNKING', 'BINARYMIME', 'DSN',
              'ENHANCEDSTATUSCODES')


# ---------------------------------------------------------------------------
# Sans-IO parsers

_DIGITS = re.compile(r'[0-9]{1,18}\Z')


def parse_bdat(arg: Optional[str]) -> Tuple[int, bool]:
    """Parse the argument of BDAT: ``chunk-size [SP "LAST"]`` (RFC 3030
    section 2).  Returns ``(size, last)``; raises ValueError."""
    parts = (arg or '').split()
    if not 1 <= len(parts) <= 2 or not _DIGITS.match(parts[0]):
        raise ValueError('BDAT needs a chunk size')
    if len(parts) == 2 and parts[1].upper() != 'LAST':
        raise ValueError('BDAT takes only LAST after the size')
    return int(parts[0]), len(parts) == 2


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 section 4 xtext: printable ASCII except "+" and "=",
    with "+XX" (two upper-case hex digits) for any other octet."""
    out: List[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == '+':
            hexpair = text[i + 1:i + 3]
            if len(hexpair) != 2 or not re.match(r'[0-9A-F]{2}\Z', hexpair):
                raise ValueError('bad xtext escape')
            out.append(chr(int(hexpair, 16)))
            i += 3
            continue
        if not '!' <= c <= '~' or c == '=':
            raise ValueError('character not allowed in xtext')
        out.append(c)
        i += 1
    return ''.join(out)


_NOTIFY_VALUES = ('SUCCESS', 'FAILURE', 'DELAY')


def parse_notify(value: str) -> Tuple[str, ...]:
    """NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY (RFC 3461
    section 4.1); returns the keywords upper-cased."""
    items = value.upper().split(',')
    if items == ['NEVER']:
        return ('NEVER',)
    if len(set(items)) != len(items) or not all(
            item in _NOTIFY_VALUES for item in items):
        raise ValueError('NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY')
    return tuple(items)


def parse_orcpt(value: str) -> Tuple[str, str]:
    """ORCPT=addr-type;xtext (RFC 3461 section 4.2, at most 500
    characters); returns (addr-type, decoded address)."""
    addr_type, semi, address = value.partition(';')
    if (not semi or not address or len(value) > 500
            or not re.match(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+\Z", addr_type)):
        raise ValueError('ORCPT must be addr-type;address')
    return addr_type, xtext_decode(address)


def parse_ret(value: str) -> str:
    """RET=FULL or RET=HDRS (RFC 3461 section 4.3)."""
    value = value.upper()
    if value not in ('FULL', 'HDRS'):
        raise ValueError('RET must be FULL or HDRS')
    return value


def parse_envid(value: str) -> str:
    """ENVID=xtext of at most 100 characters (RFC 3461 section 4.4);
    returns it decoded."""
    if len(value) > 100:
        raise ValueError('ENVID is longer than 100 characters')
    return xtext_decode(value)


# ---------------------------------------------------------------------------
# Enhanced status codes (RFC 3463)

_HAS_ESC = re.compile(r'[245]\.[0-9]{1,3}\.[0-9]{1,3}( |\Z)')
_REPLY = re.compile(r'([245])([0-9][0-9])([ -]|\Z)(.*)\Z', re.S)
# Codes whose meaning does not depend on the command.
_ESC_BY_CODE = {
    '500': '5.5.2',   # syntax error, command unrecognised
    '501': '5.5.4',   # invalid command arguments
    '502': '5.5.1',   # invalid command
    '503': '5.5.1',   # bad sequence of commands
    '504': '5.5.4',
    '552': '5.3.4',   # message too big for system
    '555': '5.5.4',
    '451': '4.3.0',   # other or undefined mail system status
}
_ESC_250_BY_VERB: Dict[Optional[str], str] = {'MAIL': '2.1.0',
                                              'RCPT': '2.1.5'}
# RFC 2034 section 3: no enhanced code on the greeting or on the replies to
# HELO and EHLO (nor LHLO, its LMTP twin).
_PLAIN_VERBS = (None, 'HELO', 'EHLO', 'LHLO')

# enhance_reply's results for the replies seen so far, keyed by (line,
# verb): at most _ENHANCED_MAX lines of at most _ENHANCED_LINE_MAX
# characters (ExtensionsChannelMixin.push).
_ENHANCED: Dict[Tuple[str, Optional[str]], str] = {}
_ENHANCED_MAX = 256
_ENHANCED_LINE_MAX = 200


def enhance_reply(line: str, verb: Optional[str] = None) -> str:
    """Put an RFC 3463 enhanced status code after the reply code of a 2xx,
    4xx or 5xx reply line that does not carry one yet.  ``verb`` is the
    command being answered ('.' for the end of DATA); it picks 2.1.0 /
    2.1.5 for MAIL / RCPT successes."""
    m = _REPLY.match(line)
    if not m or _HAS_ESC.match(m.group(4)):
        return line
    code = line[:3]
    esc = _ESC_BY_CODE.get(code)
    if esc is None:
        esc = _ESC_250_BY_VERB.get(verb, '%s.0.0' % code[0]) \
            if code[0] == '2' else '%s.0.0' % code[0]
    text = m.group(4)
    return '%s%s%s%s' % (code, m.group(3) or ' ', esc,
                         ' ' + text if text else '')


# ---------------------------------------------------------------------------
# Channel side

# How much longer DSN parameters may make MAIL and RCPT lines (see
# extra_ehlo_keywords): RFC 3461's 100 and 500 characters of ENVID and
# ORCPT values, plus " ENVID=" and " RET=HDRS", " ORCPT=" and
# " NOTIFY=SUCCESS,FAILURE,DELAY".
_DSN_MAIL_EXTRA = 100 + len(' ENVID=') + len(' RET=HDRS')
_DSN_RCPT_EXTRA = 500 + len(' ORCPT=') + len(' NOTIFY=SUCCESS,FAILURE,DELAY')

# The reply to a BDAT whose size cannot be parsed.  The chunk's length is
# unknown, so its bytes cannot be skipped; read as commands they could
# carry a whole smuggled transaction.  The stream is out of step: answer
# and close (RFC 5321 section 3.8: 421 before closing).
_BDAT_OUT_OF_STEP = ('421 4.5.0 %s Error: BDAT needs a chunk size, '
                     'closing connection')


class ExtensionsChannelMixin(MessageChannelMixin):
    """Channel half of the extensions; reads the enabled set from
    ``self.smtp_server.esmtp_extensions``.

    States: COMMAND and DATA as in the stdlib, plus BDAT while the counted
    bytes of a chunk are read.  A BDAT transaction runs from the first
    accepted chunk to the LAST one; its chunks collect in ``_chunks`` (the
    total checked against data_size_limit before a chunk is read, so memory
    stays bounded).  A refused BDAT still has its chunk read and thrown
    away: the client sent those bytes and they must not be taken as
    commands (RFC 3030 section 2); a BDAT whose size cannot be parsed
    closes the connection, since its chunk cannot be skipped.  The cost
    of a chunk does not depend on how many came before it (the received
    count is kept, not recomputed), so n chunks cost O(n)."""

    layer = LAYERS['extensions']
    capability_name = 'Extensions'
    #: smtp_state while a BDAT chunk is read.
    BDAT: ClassVar[int] = 2
    # The command being answered (upper case; '.' for the end of DATA);
    # None until the first one.
    _verb: Optional[str] = None
    _chunks: List[bytes]
    _chunk_received: int
    _bdat_size: int
    _bdat_refusal: Optional[str]
    _bdat_last: bool
    _bdat_started: bool
    instance_state = ('_verb', '_chunks', '_chunk_received', '_bdat_size',
                      '_bdat_refusal', '_bdat_last', '_bdat_started')

    def _enabled(self, name: str) -> bool:
        return name in getattr(self.smtp_server, 'esmtp_extensions', ())

    def extra_ehlo_keywords(self) -> List[str]:
        keywords = super().extra_ehlo_keywords()
        if self._enabled('DSN'):
            # RFC 3461 section 4: the DSN parameters lengthen MAIL by up to
            # 100 characters (ENVID) and RCPT by up to 500 (ORCPT), plus
            # their names and RET/NOTIFY.  Called once per successful EHLO,
            # as the core grows MAIL's limit for SIZE.
            limits = self.command_size_limits
            limits['MAIL'] += _DSN_MAIL_EXTRA
            limits['RCPT'] += _DSN_RCPT_EXTRA
        return keywords + [name for name in EXTENSIONS if self._enabled(name)]

    def receiving_message(self) -> bool:
        # A BDAT transaction is one message from its first chunk to its
        # LAST: limits keep the data deadline and graceful shutdown lets it
        # finish, between chunks as well as inside one.
        return (self.smtp_state == self.BDAT or self._bdat_started
                or super().receiving_message())

    # A property over the core's class attribute, which it only reads.
    @property
    def _accepted_body_types(self) -> Tuple[str, ...]:  # type: ignore[override]
        types = super()._accepted_body_types
        # (_enabled(), inlined: asked for every MAIL.)
        if 'BINARYMIME' in getattr(self.smtp_server, 'esmtp_extensions', ()):
            types = tuple(types) + ('BINARYMIME',)
        return types

    # SMTPChannel.push takes a reply line (str), async_chat's takes bytes.
    def push(self, msg: str) -> None:  # type: ignore[override]
        verb = self._verb
        # (_enabled(), inlined: this runs for every reply.)
        if verb not in _PLAIN_VERBS and 'ENHANCEDSTATUSCODES' in getattr(
                self.smtp_server, 'esmtp_extensions', ()):
            # Speed fix: most replies are the same few lines, so each
            # (line, verb) is enhanced once and then looked up.
            key = (msg, verb)
            enhanced = _ENHANCED.get(key)
            if enhanced is None:
                enhanced = enhance_reply(msg, verb)
                if len(msg) <= _ENHANCED_LINE_MAX:
                    if len(_ENHANCED) >= _ENHANCED_MAX:
                        # Replies that echo client text are many and
                        # seldom repeat: the table is bounded.
                        _ENHANCED.clear()
                    _ENHANCED[key] = enhanced
            msg = enhanced
        super().push(msg)

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self._chunks = []
        self._chunk_received = 0
        self._bdat_size = 0
        self._bdat_refusal = None
        self._bdat_last = False
        self._bdat_started = False

    def found_terminator(self) -> None:
        state = self.smtp_state
        if state == self.BDAT:
            self._end_chunk()
            return
        if state == self.COMMAND:
            self._verb = self._command_verb()
        else:
            self._verb = '.'
        super().found_terminator()

    def collect_incoming_data(self, data: bytes) -> None:
        if self.smtp_state != self.BDAT:
            super().collect_incoming_data(data)
        elif self._bdat_refusal is None:
            self._chunks.append(data)
            self._chunk_received += len(data)

    # DSN (RFC 3461)

    def _take_dsn_params(
            self, params: _smtpd._Params, options: List[str], keyword: str,
            parsers: Iterable[Tuple[str, Callable[[str], object]]]
    ) -> Optional[str]:
        # The parameters as written, parsed only when one of these is given.
        original: Optional[Dict[str, List[str]]] = None
        for name, parse in parsers:
            if name not in params:
                continue
            del params[name]
            if original is None:
                original = self._command_address(keyword)[1]
            values = original.get(name, [])
            if len(values) != 1:
                return '501 Error: duplicate %s parameter' % name
            value = values[0]
            try:
                parse(value)
            except ValueError as e:
                return '501 Error: %s' % e
            # Hand the value on as written (case matters in xtext).
            prefix = name + '='
            options[:] = [prefix + value if o.startswith(prefix) else o
                          for o in options]
        return None

    def check_mail_parameters(self, params: _smtpd._Params) -> Optional[str]:
        # (Without parameters there is nothing to take.)
        if params and self._enabled('DSN'):
            refusal = self._take_dsn_params(
                params, self.mail_options, 'FROM:',
                (('RET', parse_ret), ('ENVID', parse_envid)))
            if refusal:
                return refusal
        return super().check_mail_parameters(params)

    def check_rcpt_parameters(self, params: _smtpd._Params) -> Optional[str]:
        # (Without parameters there is nothing to take.)
        if params and self._enabled('DSN'):
            refusal = self._take_dsn_params(
                params, self.rcpt_options, 'TO:',
                (('NOTIFY', parse_notify), ('ORCPT', parse_orcpt)))
            if refusal:
                return refusal
        return super().check_rcpt_parameters(params)

    # CHUNKING and BINARYMIME (RFC 3030)

    def _binarymime(self) -> bool:
        return 'BODY=BINARYMIME' in (self.mail_options or ())

    def smtp_DATA(self, arg: str) -> None:
        if self.mailfrom and self._bdat_started:
            # RFC 3030 section 2: DATA may not follow BDAT in a transaction.
            self.push('503 Error: BDAT transaction in progress')
            return
        if self.mailfrom and self._binarymime():
            # RFC 3030 section 3: a BINARYMIME body can only go by BDAT.
            self.push('503 Error: BODY=BINARYMIME requires BDAT')
            return
        super().smtp_DATA(arg)

    def smtp_BDAT(self, arg: str) -> None:
        if not self._enabled('CHUNKING'):
            self.push('500 Error: command "BDAT" not recognized')
            return
        try:
            size, last = parse_bdat(arg)
        except ValueError:
            self._close_out_of_step()
            return
        refusal: Optional[str] = None
        if not self.seen_greeting:
            refusal = '503 Error: send HELO first'
        elif not self.mailfrom:
            refusal = '503 Error: need MAIL command'
        elif not self.rcpttos:
            refusal = '503 Error: need RCPT command'
        elif self.data_size_limit and \
                self._bdat_size + size > self.data_size_limit:
            refusal = '552 Error: Too much mail data'
        self._bdat_refusal = refusal
        self._bdat_last = last
        self._chunk_received = 0
        if size == 0:
            # An int terminator of 0 would mean "no terminator" to the
            # reader: end the (empty) chunk right away.
            self._end_chunk()
        else:
            self.smtp_state = self.BDAT
            self.set_terminator(size)

    def _close_out_of_step(self) -> None:
        # hang_up (the shared session state) drops the rest of the input
        # already read and reads nothing more.
        self.hang_up(_BDAT_OUT_OF_STEP % self.fqdn, 'BDAT out of step')

    def _end_chunk(self) -> None:
        self.smtp_state = self.COMMAND
        self.set_terminator(b'\r\n')
        refusal = self._bdat_refusal
        self._bdat_refusal = None
        if refusal:
            if refusal.startswith('552'):
                # The message can no longer be complete: end the
                # transaction, as DATA's 552 does.
                self._set_post_data_state()
            self.push(refusal)
            return
        chunk_size = self._chunk_received
        self._chunk_received = 0
        self._bdat_size += chunk_size
        self._bdat_started = True
        if not self._bdat_last:
            self.push('250 OK %d octets received' % chunk_size)
            return
        data = b''.join(self._chunks)
        self._chunks = []
        if not self._binarymime():
            # Same line ends as a DATA message hands to process_message;
            # a BINARYMIME body is passed on untouched.  BDAT content is
            # never dot-unstuffed (RFC 3030 section 2).
            data = data.replace(b'\r\n', b'\n')
        self._process_data(data)


# ---------------------------------------------------------------------------
# Server side

class ExtensionsMixin(CapabilityServerMixin):
    """Server mixin: ``esmtp_extensions`` (keyword-only) names the
    extensions to enable, from :data:`EXTENSIONS` (default: the server
    class's ``esmtp_extensions`` attribute if it has one, else all).
    BINARYMIME needs CHUNKING; CHUNKING needs decode_data=False."""

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = ExtensionsChannelMixin
    #: The enabled extensions (upper-case names from :data:`EXTENSIONS`).
    esmtp_extensions: FrozenSet[str]

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any,
                 esmtp_extensions: Union[str, Iterable[str], Unset] = UNSET,
                 **kwargs: Any) -> None:
        esmtp_extensions = setting(self, 'esmtp_extensions', esmtp_extensions,
                                   EXTENSIONS)
        if isinstance(esmtp_extensions, str):
            esmtp_extensions = esmtp_extensions.split(',')
        enabled = frozenset(name.strip().upper() for name in esmtp_extensions)
        unknown = enabled.difference(EXTENSIONS)
        if unknown:
            raise ValueError('unknown ESMTP extension(s): %s; known: %s'
                             % (', '.join(sorted(unknown)), ', '.join(EXTENSIONS)))
        if 'BINARYMIME' in enabled and 'CHUNKING' not in enabled:
            raise ValueError('BINARYMIME needs CHUNKING (RFC 3030 section 3)')
        # (positionally the sixth argument: localaddr, remoteaddr, then args)
        decode_data = kwargs.get('decode_data', len(args) > 3 and args[3])
        if 'CHUNKING' in enabled and decode_data:
            raise ValueError('CHUNKING needs decode_data=False')
        self.esmtp_extensions = enabled
        super().__init__(localaddr, remoteaddr, *args, **kwargs)


class ESMTPServer(ExtensionsMixin, _smtpd.SMTPServer):
    """An SMTPServer with the extensions enabled; override process_message.
    process_message also gets ``recipient_options``: one list of RCPT
    parameters per entry of rcpttos."""

"""SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms,
opt-in.

:class:`AuthServerMixin` takes an *authenticator*, a callable
``authenticator(mechanism, login, password, channel) -> bool`` that you
write (or :class:`FileAuthenticator`, which checks salted scrypt/PBKDF2
hashes from a file).  Then

* ``AUTH PLAIN LOGIN`` is advertised in the EHLO reply, but only on a TLS
  session (:mod:`smtpd_compat.tls`) unless ``auth_allow_plaintext=True``:
  on a plaintext session AUTH answers ``538 5.7.11``;
* a successful AUTH sets ``channel.auth_user`` (the login); servers whose
  ``auth_user_kwarg`` is true, such as :class:`SubmissionServer`, also get
  it as ``process_message(..., auth_user=...)``;
* ``auth_required=True`` answers MAIL with ``530 5.7.0 Authentication
  required`` until the client has authenticated;
* after ``auth_max_failures`` (3) rejected credentials the connection is
  closed with 421.

Secrets never reach DEBUGSTREAM or the log: the AUTH command's initial
response, every line of an AUTH exchange, and the lines a client may have
sent for an AUTH it did not wait on (even one answered 503 or 538) are
printed as ``***`` in the core's ``Data:`` debug line.

Password guessing is slowed down across connections by the server's
:class:`AuthThrottle`: after 10 failures from one address (IPv6: /64), one
check a second, ``454 4.7.0`` for the rest, and its checks wait behind
everyone else's; a login under attack delays (never refuses) addresses
that have failed before, so its owner gets in after a typo.

``python -m smtpd_compat.auth hash USER`` prints a ``USER:HASH`` line for
an auth file (the password is read from the terminal or stdin).
"""
from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import sys
import threading
import time
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, Hashable,
                    List, Literal, NamedTuple, Optional, OrderedDict,
                    Sequence, Tuple, Type, Union, cast)

import smtpd_compat as _smtpd
from smtpd_compat.compose import UNSET, CapabilityServerMixin, Unset, setting
from smtpd_compat.logging_ import format_peer, safe
from smtpd_compat.session import LAYERS
from smtpd_compat.threads import OffloadChannelMixin, address_key
from smtpd_compat.tls import TLSServerMixin

__all__ = [
    'AuthChannelMixin', 'AuthServerMixin', 'SubmissionServer',
    'FileAuthenticator', 'AuthThrottle', 'Verdict', 'normalise_login',
    'hash_password', 'verify_password',
    'decode_response', 'parse_plain', 'MECHANISMS', 'main',
]

logger = logging.getLogger(__name__)

MECHANISMS: Tuple[str, ...] = ('PLAIN', 'LOGIN')

# authenticator(mechanism, login, password, channel): True accepts.
_Authenticator = Callable[[str, str, str, 'AuthChannelMixin'], bool]

# A parsed auth-file hash: (scheme, parameters, salt, key).
_Parsed = Tuple[str, Dict[str, int], bytes, bytes]

# RFC 4954 section 4: an AUTH command line (with its initial response) and
# each line of the exchange may be up to 12288 octets; section 5: MAIL FROM
# grows by 500 for the AUTH= parameter.
_AUTH_LINE_LIMIT = 12288
_MAIL_AUTH_PARAM_EXTRA = 500

# The LOGIN mechanism's fixed challenges, "Username:" and "Password:".
_LOGIN_USER = '334 VXNlcm5hbWU6'
_LOGIN_PASSWORD = '334 UGFzc3dvcmQ6'

_REDACTED = '***'


# -- sans-IO payload parsing ---------------------------------------------

def decode_response(text: Union[str, bytes]) -> bytes:
    """Decode one client response of an AUTH exchange (a str or bytes
    line without CRLF): ``=`` is the empty response (RFC 4954 section 4),
    anything else must be strict base64.  Raises ValueError otherwise.
    The ``*`` cancel is the caller's to recognise first."""
    if isinstance(text, str):
        try:
            text = text.encode('ascii')
        except UnicodeEncodeError:
            raise ValueError('response is not base64') from None
    text = text.strip()
    if text == b'=':
        return b''
    if not text:
        raise ValueError('empty response (send "=" for an empty one)')
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError('response is not base64') from None


def parse_plain(payload: bytes) -> Tuple[str, str, str]:
    """Split a decoded PLAIN message (RFC 4616 section 2:
    ``[authzid] NUL authcid NUL passwd``, UTF-8) into (authzid, authcid,
    password).  Raises ValueError when it is malformed."""
    parts = payload.split(b'\0')
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError('malformed PLAIN message')
    try:
        authzid, authcid, password = (p.decode('utf-8') for p in parts)
    except UnicodeDecodeError:
        raise ValueError('PLAIN message is not UTF-8') from None
    return authzid, authcid, password


# -- password hashes -----------------------------------------------------
#
# An auth-file entry is "login:hash" with hash one of this module's
#   $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt hex>$<key hex>
#   $pbkdf2-sha256$i=<iterations>$<salt hex>$<key hex>
# or one of passlib's (passlib.hash.scrypt and pbkdf2_sha256), which use
# the same prefixes with base64 fields:
#   $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt b64>$<key b64>
#   $pbkdf2-sha256$<rounds>$<salt ab64>$<key ab64>
# (ab64 is base64 with "." for "+", no padding; the salt is used as the
# decoded bytes).  A 64-hex-digit key tells ours from passlib's 43 base64
# characters.  Bounds keep a mistyped (or hostile) file from making one
# check take minutes or gigabytes.

_SCRYPT_DEFAULT = {'ln': 14, 'r': 8, 'p': 1}
_PBKDF2_DEFAULT = {'i': 600000}
_BOUNDS = {'ln': (1, 20), 'r': (1, 32), 'p': (1, 16), 'i': (1000, 10 ** 7)}
_KEY_LEN = 32
_HEX_KEY = re.compile(r'[0-9a-fA-F]{%d}' % (2 * _KEY_LEN))
_B64_FIELD = re.compile(r'[A-Za-z0-9+/.]+')


def _have_scrypt() -> bool:
    # hashlib.scrypt needs OpenSSL 1.1+; some builds lack it.
    return hasattr(hashlib, 'scrypt')


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int) -> bytes:
    n = 1 << ln
    # hashlib.scrypt refuses anything above maxmem (32 MiB by default); the
    # algorithm needs 128 * r * (N + p) bytes.
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p,
                          maxmem=128 * r * (n + p) + (1 << 20), dklen=_KEY_LEN)


def _derive(scheme: str, params: Dict[str, int], password: str,
            salt: bytes) -> bytes:
    secret = password.encode('utf-8')
    if scheme == 'scrypt':
        return _scrypt(secret, salt, params['ln'], params['r'], params['p'])
    return hashlib.pbkdf2_hmac('sha256', secret, salt, params['i'], _KEY_LEN)


def _b64_field(text: str) -> bytes:
    if not _B64_FIELD.fullmatch(text):
        raise ValueError('salt and key must be hex or base64')
    text = text.replace('.', '+')
    return base64.b64decode(text + '=' * (-len(text) % 4))


def _parse_hash(encoded: str) -> _Parsed:
    """(scheme, params, salt, key) from an encoded hash; ValueError if it is
    not one this module reads."""
    fields = encoded.split('$')
    if len(fields) != 5 or fields[0]:
        raise ValueError('not a $scheme$params$salt$key hash')
    _, scheme, param_text, salt_text, key_text = fields
    expected = {'scrypt': _SCRYPT_DEFAULT,
                'pbkdf2-sha256': _PBKDF2_DEFAULT}.get(scheme)
    if expected is None:
        raise ValueError('unknown hash scheme %r (scrypt or pbkdf2-sha256)'
                         % scheme)
    if scheme == 'pbkdf2-sha256' and param_text.isdigit():
        param_text = 'i=' + param_text      # passlib: the bare rounds
    params: Dict[str, int] = {}
    for item in param_text.split(','):
        name, _, value = item.partition('=')
        if name not in expected or not value.isdigit():
            raise ValueError('bad parameter %r for %s' % (item, scheme))
        low, high = _BOUNDS[name]
        if not low <= int(value) <= high:
            raise ValueError('%s=%s is outside %d..%d' % (name, value, low, high))
        params[name] = int(value)
    if set(params) != set(expected):
        raise ValueError('%s needs parameters %s' % (scheme, ','.join(expected)))
    try:
        if _HEX_KEY.fullmatch(key_text):
            salt, key = bytes.fromhex(salt_text), bytes.fromhex(key_text)
        else:
            salt, key = _b64_field(salt_text), _b64_field(key_text)
    except (ValueError, binascii.Error):
        raise ValueError('salt and key must be hex or base64') from None
    if len(salt) < 8 or len(key) != _KEY_LEN:
        raise ValueError('salt too short or key of the wrong length')
    if scheme == 'scrypt' and not _have_scrypt():
        raise ValueError('scrypt hashes need hashlib.scrypt, which this '
                         'Python lacks (OpenSSL < 1.1); use pbkdf2-sha256')
    return scheme, params, salt, key


def hash_password(password: str, scheme: str = 'scrypt') -> str:
    """A salted hash of ``password`` for an auth file: ``scheme`` is
    'scrypt' (default) or 'pbkdf2-sha256' (for Pythons built without
    scrypt)."""
    if scheme == 'scrypt':
        if not _have_scrypt():
            raise ValueError('this Python has no hashlib.scrypt (OpenSSL < '
                             '1.1): use scheme pbkdf2-sha256')
        params = _SCRYPT_DEFAULT
        param_text = 'ln=%(ln)d,r=%(r)d,p=%(p)d' % params
    elif scheme in ('pbkdf2', 'pbkdf2-sha256'):
        scheme, params = 'pbkdf2-sha256', _PBKDF2_DEFAULT
        param_text = 'i=%(i)d' % params
    else:
        raise ValueError('unknown hash scheme %r' % (scheme,))
    salt = os.urandom(16)
    key = _derive(scheme, params, password, salt)
    return '$%s$%s$%s$%s' % (scheme, param_text, salt.hex(), key.hex())


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches the hash ``encoded`` (compared in
    constant time).  Raises ValueError for a malformed hash."""
    return _verify(password, _parse_hash(encoded))


def _verify(password: str, parsed: _Parsed) -> bool:
    scheme, params, salt, key = parsed
    return hmac.compare_digest(_derive(scheme, params, password, salt), key)


def _read_auth_file(path: str) -> Dict[str, _Parsed]:
    """{login: parsed hash} from an auth file; ValueError naming the line
    for a bad one (OSError if it cannot be read)."""
    users: Dict[str, _Parsed] = {}
    with open(path, encoding='utf-8') as f:
        try:
            lines = list(enumerate(f, 1))
        except UnicodeDecodeError:
            # The codec's message does not say which file.
            raise ValueError('%s is not a text file of login:hash lines '
                             '(not UTF-8)' % path) from None
        for number, raw in lines:
            line = raw.strip()
            if not line or line.startswith('#'):
                continue
            # Hashes hold no colon, so a login may.
            login, colon, encoded = line.rpartition(':')
            if not colon or not login:
                raise ValueError('%s line %d: expected login:hash'
                                 % (path, number))
            try:
                users[login] = _parse_hash(encoded)
            except ValueError as e:
                raise ValueError('%s line %d: %s' % (path, number, e)) from None
    return users


class FileAuthenticator:
    """An authenticator reading ``login:hash`` lines (blank lines and
    ``#`` comments ignored) from ``path`` at construction and on
    :meth:`reload`; a bad line raises ValueError naming it.  Make lines
    with ``python -m smtpd_compat.auth hash LOGIN`` (or passlib).

    Unknown and known logins take the same time: an unknown login is
    checked against a decoy entry of the same scheme and parameters as a
    real entry, picked by a keyed hash of the login, so that unknown
    logins are spread over the file's kinds of hash as the real ones are
    and the same login always costs the same.  The decoys derive nothing
    when they are made (no scrypt is called for a pbkdf2-only file).
    Thread-safe: a check reads one consistent snapshot of the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._state = self._load()

    def _load(self) -> Tuple[Dict[str, _Parsed], List[_Parsed], bytes]:
        users = _read_auth_file(self.path)
        kinds = [(scheme, tuple(sorted(params.items())))
                 for scheme, params, _, _ in users.values()]
        if not kinds:
            # An empty file: unknown logins still cost a real check.
            kinds = [('pbkdf2-sha256', tuple(sorted(_PBKDF2_DEFAULT.items())))]
        decoys = {kind: (kind[0], dict(kind[1]), os.urandom(16),
                         os.urandom(_KEY_LEN)) for kind in set(kinds)}
        # Sorted so that the order (and which kind a login maps to) does
        # not depend on which login came first.
        return users, [decoys[kind] for kind in sorted(kinds)], os.urandom(32)

    def reload(self) -> None:
        """Read the file again.  On any error (unreadable file, bad line)
        the entries in use are kept and the error is raised."""
        state = self._load()
        self._state = state     # one assignment: checks see old or new
        logger.info('reloaded the auth file %s (%d logins)', safe(self.path),
                    len(state[0]))

    def __call__(self, mechanism: str, login: str, password: str,
                 channel: object) -> bool:
        users, decoys, key = self._state
        parsed = users.get(login)
        if parsed is None:
            digest = hmac.new(key, login.encode('utf-8', 'surrogatepass'),
                              hashlib.sha256).digest()
            decoy = decoys[int.from_bytes(digest[:8], 'big') % len(decoys)]
            _verify(password, decoy)
            return False
        return _verify(password, parsed)


# -- throttling password guesses ----------------------------------------

class Verdict(NamedTuple):
    """What :meth:`AuthThrottle.assess` says about one password check."""

    #: False: answer ``454 4.7.0`` without checking.
    allowed: bool
    #: Allowed: seconds to wait before the check (the attacked login's
    #: delay for an address that has failed before).  Not allowed: 0.0, or
    #: when the refusal comes only from this address's checks still
    #: running (counted as failures until they succeed), the time within
    #: which to ask again instead of answering 454.
    delay: float = 0.0
    #: The check's priority in the worker pool
    #: (:meth:`smtpd_compat.threads.OffloadChannelMixin.offload`): 0 for an
    #: address without failures, 1 after one, 2 after more; the lower ones
    #: run only when no ordinary work waits, so a guesser's hashing does
    #: not hold up other clients' logins, and the owner after a typo goes
    #: before the guessers.
    priority: int = 0


# A login refused only for its address's checks still running asks the
# throttle again after _FIRST_RECHECK seconds, then after doubling waits,
# for at most the throttle's max_delay (or this, for a throttle without).
_FIRST_RECHECK = 0.05
_MAX_RECHECK_WAIT = 15.0


def _nothing() -> None:
    """The work of a wait in the worker pool (see _auth_check)."""


def normalise_login(login: str) -> str:
    """A login as the throttle counts it: ``Alice``, ``ALICE`` and
    ``" alice "`` are one login (case-folded, surrounding white space
    trimmed)."""
    return login.strip().casefold()


# Wider prefixes an address's failures are folded into when the table is
# full of throttled entries: IPv4 /24 then /16, IPv6 /48 then /32.
_WIDER = {4: (24, 16), 6: (48, 32)}


def _address_levels(address: object) -> List[str]:
    """The address's key (:func:`smtpd_compat.threads.address_key`: IPv6
    per /64), then its two wider prefixes.  Also for a key that is a
    prefix already (a folded entry's)."""
    key = address_key(address)
    try:
        net = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return [key]        # not an IP address (a UNIX socket's peer)
    return [key] + [str(net.supernet(new_prefix=min(bits, net.prefixlen)))
                    for bits in _WIDER[net.version]]


class AuthThrottle:
    """Slows password guessing across connections (RFC 4954 section 9 asks
    servers to), without locking the owner out; shared by every channel of
    a server, safe to call from any thread.

    Like Dovecot's authentication penalty, failures count per client
    address (an IPv6 address with its /64, which one host commonly holds):

    * an address with ``max_failures`` failed checks within ``window``
      seconds gets at most one check per ``interval`` seconds; its other
      guesses are answered ``454 4.7.0`` without looking at the password.
      Once it has failed, its checks run at a lower priority in the worker
      pool (:mod:`smtpd_compat.threads`): only when no ordinary work
      waits, an address that failed once before one that failed more
      often.  So a flood of guesses, each a slow hash, does not hold up
      the logins of clean addresses, and the owner after a typo goes
      before the guessers;
    * failures count per login too (case-folded and trimmed, so ``Alice``
      and ``"alice "`` are one), but a login under attack only *delays*:
      a check for it from an address that has failed before (and not yet
      ``max_failures`` times) waits ``interval`` seconds, doubled for each
      further failure of that address, at most ``max_delay`` (Dovecot's 15
      s).  An address that has not failed is never delayed, and a right
      password is never refused for the login's sake: after one typo the
      owner waits ``interval`` (1 s) and is in.

    At most ``max_entries`` addresses and logins are remembered.  When the
    table is full, entries that throttle nothing are forgotten first (the
    oldest first); when every entry throttles, the addresses are folded
    into wider prefixes (IPv4 /24 then /16, IPv6 /48 then /32), whose
    failures then count for every address in them; only when that is not
    enough are the oldest throttling entries forgotten.  About 1.3 KB an
    entry: some 26 MB at worst with the default.
    """

    def __init__(self, max_failures: int = 10, window: float = 300.0,
                 interval: float = 1.0, max_entries: int = 20000,
                 clock: Callable[[], float] = time.monotonic, *,
                 max_delay: float = 15.0) -> None:
        if not isinstance(max_failures, int) or max_failures < 1:
            raise ValueError('max_failures must be a positive integer')
        if not window > 0 or not interval > 0 or max_entries < 1 \
                or not max_delay > 0:
            raise ValueError('window, interval, max_entries and max_delay '
                             'must be positive')
        self.max_failures = max_failures
        self.window = window
        self.interval = interval
        self.max_entries = max_entries
        self.max_delay = max_delay
        self._clock = clock
        self._lock = threading.Lock()
        # key -> deque of the times of its last failures, oldest key first
        # (least recently touched).  A check is counted as a failure when
        # it is allowed, before its outcome is known, and withdrawn if it
        # succeeds: checks run in worker threads, and a burst of concurrent
        # guesses must not all pass while none has failed yet.
        self._entries: OrderedDict[Hashable, Deque[float]] = \
            collections.OrderedDict()
        # address key -> checks of that address let through and still
        # running (see check_done()): those of its counted failures that
        # may yet be withdrawn.
        self._in_flight: Dict[Hashable, int] = {}

    @staticmethod
    def _login_key(login: str) -> Tuple[str, bytes]:
        # A digest, not the login: a client may send logins of 12 KB.
        return ('login', hashlib.sha256(normalise_login(login).encode(
            'utf-8', 'surrogatepass')).digest()[:16])

    def _throttles(self, times: Optional[Deque[float]], since: float) -> bool:
        # max_failures failures within the window.
        return (times is not None and len(times) >= self.max_failures
                and times[-self.max_failures] > since)

    def _address_times(self, address: object, since: float, in_flight: int = 0
                       ) -> Tuple[List[Hashable], int, Optional[float]]:
        # The address's keys present (its own first: where failures are
        # recorded), its recent failures (the most of its own and of the
        # prefixes it was folded into) and the last of them.  ``in_flight``:
        # leave out that many of its own (checks still running).
        entries = self._entries
        levels = _address_levels(address)
        keys: List[Hashable] = [('address', levels[0])]
        count, last = 0, None
        for n, level in enumerate(levels):
            key = ('address', level)
            times = entries.get(key)
            if times is None or (n and level in levels[:n]):
                continue
            if n:
                keys.append(key)
            recent = sum(1 for t in times if t > since)
            if not n:
                recent -= in_flight
            if recent > count:
                count = recent
            if times and (last is None or times[-1] > last):
                last = times[-1]
        return keys, count, last

    def assess(self, address: object, login: Optional[str]) -> Verdict:
        """May a password from ``address`` for ``login`` be checked, when,
        and at which priority?  When allowed, the check is counted as a
        failure until :meth:`record` says it succeeded."""
        now = self._clock()
        since = now - self.window
        with self._lock:
            entries = self._entries
            keys, failures, last = self._address_times(address, since)
            if (failures >= self.max_failures and last is not None
                    and now < last + self.interval):
                # Over the limit: one check an interval, counted from the
                # last failure or allowed check.
                in_flight = self._in_flight.get(keys[0], 0)
                if in_flight and self._address_times(
                        address, since, in_flight)[1] < self.max_failures:
                    # ... but only by counting checks still running, which
                    # a burst of logins from one client (a mail server's
                    # parallel connections) has many of: ask again once
                    # they are done, when their successes are withdrawn,
                    # instead of refusing the right password.
                    return Verdict(False, self.interval)
                return Verdict(False)
            delay = 0.0
            if login is not None:
                login_key = self._login_key(login)
                if failures and self._throttles(entries.get(login_key), since):
                    # The login is under attack and this address has
                    # failed before: wait, never refuse (Dovecot doubles
                    # from 2 s up to 15 s; here from ``interval``).
                    delay = min(self.max_delay,
                                self.interval * 2 ** min(failures - 1, 30))
                keys.append(login_key)
            self._in_flight[keys[0]] = self._in_flight.get(keys[0], 0) + 1
            for key in keys:
                times = entries.get(key)
                if times is None:
                    # Room for counts withdrawn later (see record()).
                    times = entries[key] = collections.deque(
                        maxlen=2 * self.max_failures)
                else:
                    entries.move_to_end(key)
                times.append(now)
            if len(entries) > self.max_entries:
                self._shrink(since)
            return Verdict(True, delay, min(failures, 2))

    def allow(self, address: object, login: Optional[str]) -> bool:
        """``assess()``, as a yes or no (the delay and priority left to
        the caller)."""
        return self.assess(address, login).allowed

    def check_done(self, address: object) -> None:
        """A check from ``address`` that :meth:`assess` let through no
        longer runs (call it once per such check, before :meth:`record`,
        whatever became of it): while it ran, a refusal counting it was
        answered with a time to ask again (see :class:`Verdict`)."""
        key = ('address', address_key(address))
        with self._lock:
            count = self._in_flight.get(key, 0) - 1
            if count > 0:
                self._in_flight[key] = count
            else:
                self._in_flight.pop(key, None)

    def record(self, address: object, login: Optional[str],
               ok: Optional[bool]) -> None:
        """The outcome of a check ``assess()`` let through: True (or
        None, no verdict: the authenticator failed) withdraws the failure
        counted in advance; False leaves it."""
        if ok is False:
            return
        with self._lock:
            since = self._clock() - self.window
            keys = self._address_times(address, since)[0]
            if login is not None:
                keys.append(self._login_key(login))
            for key in keys:
                times = self._entries.get(key)
                if times:
                    times.pop()

    def _shrink(self, since: float) -> None:
        # Under the lock, the table over max_entries: down to 90% of it at
        # once, so that the scans below are paid once per many inserts.
        entries = self._entries
        target = max(1, self.max_entries * 9 // 10)
        # 1. Forget entries that throttle nothing, oldest first.
        for key in [key for key, times in entries.items()
                    if not self._throttles(times, since)]:
            if len(entries) <= target:
                return
            del entries[key]
        # 2. Every entry throttles: fold addresses into wider prefixes.
        for depth in (1, 2):
            if len(entries) <= target:
                return
            self._fold(depth)
        # 3. Still full of throttling entries: the oldest go.
        while len(entries) > target:
            entries.popitem(last=False)

    def _fold(self, depth: int) -> None:
        # Merge every address entry into its prefix ``depth`` levels wider.
        entries = self._entries
        for key in list(entries):
            kind, text = cast(Tuple[str, str], key)
            if kind != 'address':
                continue
            levels = _address_levels(text)
            if len(levels) <= depth or text == levels[depth]:
                continue
            wider = ('address', levels[depth])
            times = entries.pop(key)
            merged = entries.get(wider)
            if merged is None:
                entries[wider] = times
            else:
                both = sorted(list(merged) + list(times))
                merged.clear()
                merged.extend(both[-merged.maxlen:] if merged.maxlen else both)


# -- the channel ---------------------------------------------------------

class AuthChannelMixin(OffloadChannelMixin):
    """Channel mixin: the AUTH verb, MAIL's AUTH= parameter and the
    auth_required gate.  Reads its configuration from the server
    (``authenticator``, ``auth_mechanisms``, ``auth_required``,
    ``auth_allow_plaintext``, ``auth_max_failures``, ``auth_user_kwarg``).
    """

    layer = LAYERS['auth']
    capability_name = 'Auth'
    smtp_server: AuthServerMixin
    _auth_failures = 0
    # The exchange in progress: None, 'PLAIN' (waiting for the PLAIN
    # message), 'LOGIN-USER' or 'LOGIN-PASSWORD'.
    _auth_state: Optional[str] = None
    _auth_login: Optional[str] = None
    # Redaction (what -d prints): how many of the next command lines may be
    # responses the client sent for its last AUTH command without waiting
    # for our answer (LOGIN: user and password; PLAIN: the message; one
    # fewer with an initial response), and whether the current one is.
    # Counted for every AUTH line, accepted or refused (a client may send
    # its credentials behind an AUTH answered 503 or 538): such lines are
    # printed as '***' and still get their ordinary replies.
    _auth_pipelined = 0
    _auth_redact_line = False
    instance_state = ('_auth_failures', '_auth_state', '_auth_login',
                      '_auth_pipelined', '_auth_redact_line')

    def _auth_offered(self) -> bool:
        return (self.tls_active
                or self.smtp_server.auth_allow_plaintext)

    def extra_ehlo_keywords(self) -> List[str]:
        keywords = super().extra_ehlo_keywords()
        if not self._auth_offered():
            return keywords
        # Called only for a successful EHLO, so the limits grow once per
        # greeting, as the core grows MAIL's for SIZE.
        self.command_size_limits['AUTH'] = _AUTH_LINE_LIMIT
        self.command_size_limits['MAIL'] += _MAIL_AUTH_PARAM_EXTRA
        return keywords + ['AUTH ' + ' '.join(self.smtp_server.auth_mechanisms)]

    # -- keeping secrets out of the debug output ----------------------------

    def found_terminator(self) -> None:
        if self.closing:
            self.received_lines = []
            return
        if self.smtp_state != self.COMMAND:
            self._auth_redact_line = False
            super().found_terminator()
            return
        self._auth_redact_line = self._auth_pipelined > 0
        if self._auth_pipelined:
            self._auth_pipelined -= 1
        if self._auth_state is not None:
            sz, self.num_bytes = self.num_bytes, 0
            line = self._take_line()
            if _smtpd._debugging():
                print('Data:', repr(_REDACTED), file=_smtpd.DEBUGSTREAM)
            self._auth_continue(line, sz)
            return
        # If the line is an AUTH command (whatever its fate: too long,
        # refused, accepted), count the responses that may follow it.
        line = self._command_line()
        if type(line) is bytes and line[:4].upper() != b'AUTH' \
                and not line[:1].isspace():
            # Speed (issue 20): a line that starts with neither AUTH (in
            # any case) nor white space has another first word; its words
            # are not needed.  (Bytes only: str.upper() maps a few other
            # letters to ASCII ones.)
            super().found_terminator()
            return
        words = line.split(None, 2)
        if words and words[0].upper() in ('AUTH', b'AUTH'):
            mechanism = words[1].upper() if len(words) > 1 else ''
            count = 2 if mechanism in ('LOGIN', b'LOGIN') else 1
            self._auth_pipelined = count - (len(words) > 2)
        super().found_terminator()

    def _debug_line(self, line: Union[bytes, str, None]) -> None:
        # The core's "Data:" print: an initial response, or a line that may
        # be a pipelined credential, becomes '***'.
        if self._auth_redact_line:
            line = _REDACTED if isinstance(line, str) else _REDACTED.encode()
        elif isinstance(line, str):
            words = line.split(None, 2)
            if len(words) == 3 and words[0].upper() == 'AUTH':
                line = ' '.join((words[0], words[1], _REDACTED))
        elif line:
            bwords = line.split(None, 2)
            if len(bwords) == 3 and bwords[0].upper() == b'AUTH':
                line = b' '.join((bwords[0], bwords[1], _REDACTED.encode()))
        super()._debug_line(line)

    # -- the verb -----------------------------------------------------------

    def smtp_AUTH(self, arg: str) -> None:
        server = self.smtp_server
        if not self.seen_greeting:
            self.push('503 Error: send HELO first')
            return
        if not self.extended_smtp:
            self.push('503 5.5.1 Error: send EHLO first')
            return
        if not self.tls_active:
            if getattr(server, 'require_starttls', False):
                self.push('530 5.7.0 Must issue a STARTTLS command first')
                return
            if not server.auth_allow_plaintext:
                self.push('538 5.7.11 Encryption required for requested '
                          'authentication mechanism')
                return
        if self.auth_user is not None:
            self.push('503 5.5.1 Error: already authenticated')
            return
        if self.mailfrom:
            # RFC 4954 section 4: not permitted during a mail transaction.
            self.push('503 5.5.1 Error: AUTH not permitted during a mail '
                      'transaction')
            return
        parts = arg.split() if arg else []
        if not 1 <= len(parts) <= 2:
            self.push('501 5.5.4 Syntax: AUTH mechanism [initial-response]')
            return
        mechanism = parts[0].upper()
        if mechanism not in server.auth_mechanisms:
            self.push('504 5.5.4 Unrecognized authentication type')
            return
        self._auth_state = 'PLAIN' if mechanism == 'PLAIN' else 'LOGIN-USER'
        if len(parts) == 1:
            # RFC 4954 section 4: PLAIN's challenge is empty ("334 ").
            self._auth_challenge('334 ' if mechanism == 'PLAIN'
                                 else _LOGIN_USER)
        else:
            self._auth_continue(parts[1], 0)

    def _auth_continue(self, line: Union[bytes, str, None], size: int
                       ) -> None:
        """Take one client response (a continuation line, or the initial
        response of the AUTH command)."""
        if size > _AUTH_LINE_LIMIT:
            self._auth_end('500 5.5.6 Authentication Exchange line is too long')
            return
        if line is None:    # not UTF-8 on a decode_data channel
            self._auth_end('501 5.5.2 Cannot decode response')
            return
        if line.strip() in ('*', b'*'):
            # RFC 4954 section 4: the client cancels the exchange.
            self._auth_end('501 5.7.0 Authentication aborted')
            return
        login: Optional[str]
        password: str
        text: str
        try:
            data = decode_response(line)
            if self._auth_state == 'PLAIN':
                authzid, login, password = parse_plain(data)
                # Acting for another identity (authzid) is not supported:
                # such a request fails like bad credentials.
                if authzid and authzid != login:
                    login = None
            else:
                text = data.decode('utf-8')
        except (ValueError, UnicodeDecodeError):
            self._auth_end('501 5.5.2 Cannot decode response')
            return
        if self._auth_state == 'LOGIN-USER':
            self._auth_login = text
            self._auth_state = 'LOGIN-PASSWORD'
            self._auth_challenge(_LOGIN_PASSWORD)
            return
        if self._auth_state == 'LOGIN-PASSWORD':
            mechanism, login, password = 'LOGIN', self._auth_login, text
        else:
            mechanism = 'PLAIN'
        self._auth_state = self._auth_login = None
        self.reset_idle_deadline()
        self._auth_check(mechanism, login, password)

    def _auth_challenge(self, challenge: str) -> None:
        """Send a 334 challenge.  The client's answer is awaited under the
        connection's deadline in the 'auth' phase (the server's
        ``auth_timeout``, else its idle timeout)."""
        server = self.smtp_server
        self.set_deadline(getattr(server, 'auth_timeout', None)
                          or getattr(server, 'idle_timeout', None), 'auth')
        self.push(challenge)

    def _auth_end(self, reply: str) -> None:
        self._auth_state = self._auth_login = None
        self.reset_idle_deadline()
        self.push(reply)

    def _auth_check(self, mechanism: str, login: Optional[str],
                    password: Optional[str], waited: float = 0.0) -> None:
        """Check the credentials and answer (the throttle first: a
        throttled guess is answered 454 without looking at it).
        ``waited``: seconds this check has already waited for the
        address's other checks (see below)."""
        throttle = self.smtp_server.auth_throttle
        verdict = Verdict(True)
        finished = None
        if throttle:
            address = self._auth_address()
            verdict = throttle.assess(address, login)
            if not verdict.allowed:
                limit = getattr(throttle, 'max_delay', _MAX_RECHECK_WAIT)
                if verdict.delay > 0 and waited < limit and \
                        self.loop_services._running:
                    # Refused only for this address's checks still running
                    # (twenty connections of one mail server logging in at
                    # once): wait without reading, and ask again, first
                    # after 50 ms, then after twice as long as waited so
                    # far, up to the throttle's delay each time and
                    # max_delay in all (then 454).  (Under asyncore.loop,
                    # which runs no timers, the 454 comes at once.)
                    pause = min(verdict.delay, max(_FIRST_RECHECK, waited))
                    self.offload(_nothing, (),
                                 lambda done, value: self._auth_check(
                                     mechanism, login, password, waited + pause),
                                 delay=pause, what='AUTH wait')
                    return
                self._auth_result(mechanism, login, 'throttled')
                return
            check_done = getattr(throttle, 'check_done', None)
            if check_done is not None:
                finished = functools.partial(check_done, address)
        if login is None:
            if finished is not None:
                finished()
            self._auth_verdict(mechanism, login, True, False)
            return
        # The check may take long (a deliberately slow hash, or a user's
        # authenticator asking a database): it runs in the server's worker
        # threads while this session reads nothing more (smtpd_compat.threads),
        # after the throttle's delay, at its priority.
        self.offload(self.smtp_server.authenticator,
                     (mechanism, login, password, self),
                     lambda done, ok: self._auth_verdict(mechanism, login, done, ok),
                     finished=finished, priority=verdict.priority,
                     delay=verdict.delay, what='AUTH check')

    def _auth_address(self) -> object:
        # The client's address (the PROXY header's behind a balancer).
        return self.peer[0] if isinstance(self.peer, tuple) else self.peer

    def _auth_verdict(self, mechanism: str, login: Optional[str], done: bool,
                      ok: Any) -> None:
        """The authenticator's answer ``ok`` (``done`` False: it raised
        ``ok``)."""
        throttle = self.smtp_server.auth_throttle
        if not done:
            if throttle:
                throttle.record(self._auth_address(), login, None)
            # A bug in the authenticator, not the client's fault.  The
            # traceback goes to the log; the password is not in it
            # unless the authenticator puts it in its own message.
            logger.error('authenticator failed for %s', format_peer(self.peer),
                         exc_info=ok)
            self.push('454 4.7.0 Temporary authentication failure')
            return
        ok = bool(ok)
        if throttle:
            throttle.record(self._auth_address(), login, ok)
        self._auth_result(mechanism, login, ok)

    def _auth_result(self, mechanism: str, login: Optional[str],
                     ok: Union[bool, str]) -> None:
        """Answer the client: ``ok`` is True, False or 'throttled'."""
        if ok is True:
            self.auth_user = login
            logger.info('%s authenticated as %s (%s)', format_peer(self.peer),
                        safe(login), mechanism)
            print('auth user:', repr(login), file=_smtpd.DEBUGSTREAM)
            self.push('235 2.7.0 Authentication successful')
            return
        self._auth_failures += 1
        throttled = ok == 'throttled'
        logger.info('%s failed AUTH %s as %s (%d)%s', format_peer(self.peer),
                    mechanism, safe(login), self._auth_failures,
                    ' (throttled)' if throttled else '')
        if self._auth_failures >= self.smtp_server.auth_max_failures:
            self.hang_up('421 4.7.0 Too many failed authentication attempts, '
                         'closing connection', 'too many failed AUTH')
            return
        if throttled:
            # RFC 4954 section 6: a temporary failure; try later.
            self.push('454 4.7.0 Temporary authentication failure, '
                      'try again later')
            return
        self.push('535 5.7.8 Authentication credentials invalid')

    def reset_session(self) -> None:
        # RFC 3207 section 4.2: nothing learnt before TLS survives it.
        super().reset_session()
        self.auth_user = None
        self._auth_state = self._auth_login = None

    # -- mail commands ------------------------------------------------------

    def smtp_MAIL(self, arg: str) -> None:
        if self.smtp_server.auth_required and self.auth_user is None:
            if (getattr(self.smtp_server, 'require_starttls', False)
                    and not self.tls_active):
                self.push('530 5.7.0 Must issue a STARTTLS command first')
            else:
                self.push('530 5.7.0 Authentication required')
            return
        super().smtp_MAIL(arg)

    def check_mail_parameters(self, params: _smtpd._Params) -> Optional[str]:
        # RFC 4954 section 5: MAIL FROM's AUTH=<mailbox>|<> names who
        # submitted the message at a previous hop.  It is accepted and not
        # trusted (this server knows its client only through AUTH).
        if self._auth_offered():
            params.pop('AUTH', None)
        return super().check_mail_parameters(params)

    def _message_kwargs(self) -> Dict[str, Any]:
        kwargs = super()._message_kwargs()
        # Only servers that declare it accept the keyword (a stdlib-style
        # process_message would raise TypeError on it).
        if getattr(self.smtp_server, 'auth_user_kwarg', False):
            kwargs['auth_user'] = self.auth_user
        return kwargs


class AuthServerMixin(CapabilityServerMixin):
    """Server mixin: SMTP AUTH.

    Keyword-only arguments (the rest go to the next class):

    authenticator
        ``callable(mechanism, login, password, channel) -> bool``; required.
        It runs in the server's worker threads (:mod:`smtpd_compat.threads`),
        so it may be slow, but must be thread-safe and only read ``channel``.
        It should take the same time for unknown logins as for known ones
        (as :class:`FileAuthenticator` does), or the timing tells which
        exist.
    auth_required
        MAIL answers ``530 5.7.0 Authentication required`` until the client
        has authenticated (a submission server, RFC 6409).
    auth_allow_plaintext
        also offer AUTH on sessions without TLS.  Needed when there is no
        TLS at all; dangerous anywhere but a trusted network.
    auth_mechanisms
        a sequence from ``('PLAIN', 'LOGIN')``, advertised in that order.
    auth_max_failures
        rejected credentials after which the connection is closed with 421.
    auth_throttle
        an :class:`AuthThrottle` shared by all connections (default: a new
        one with its defaults: after 10 failures in 5 minutes from one
        address, one check a second); None or False switches throttling
        off.  A class attribute of that name is used when the keyword is
        not given.

    Set the class attribute ``auth_user_kwarg = True`` (as
    :class:`SubmissionServer` does) to have process_message called with an
    ``auth_user`` keyword argument (None when the client did not
    authenticate).  (The mixin defines no default for it, so a class
    attribute anywhere in the server's bases is seen, whatever their order.)
    """

    channel_mixin: Optional[Type[_smtpd.SMTPChannel]] = AuthChannelMixin
    authenticator: _Authenticator
    auth_required: bool
    auth_allow_plaintext: bool
    auth_mechanisms: Tuple[str, ...]
    auth_max_failures: int
    auth_throttle: Optional[AuthThrottle]

    def __init__(self, localaddr: _smtpd._Address,
                 remoteaddr: _smtpd._Address, *args: Any,
                 authenticator: Union[_Authenticator, None, Unset] = UNSET,
                 auth_required: Union[bool, Unset] = UNSET,
                 auth_allow_plaintext: Union[bool, Unset] = UNSET,
                 auth_mechanisms: Union[str, Sequence[str], Unset] = UNSET,
                 auth_max_failures: Union[int, Unset] = UNSET,
                 auth_throttle: Union[AuthThrottle, None, Literal[False], Unset] = UNSET,
                 **kwargs: Any) -> None:
        # Each keyword: as given, else the class attribute, else the
        # default (smtpd_compat.compose.setting); SubmissionServer's class
        # attribute makes auth_required default to True there.
        authenticator = setting(self, 'authenticator', authenticator, None)
        auth_required = setting(self, 'auth_required', auth_required, False)
        auth_allow_plaintext = setting(self, 'auth_allow_plaintext',
                                       auth_allow_plaintext, False)
        auth_mechanisms = setting(self, 'auth_mechanisms', auth_mechanisms,
                                  MECHANISMS)
        auth_max_failures = setting(self, 'auth_max_failures',
                                    auth_max_failures, 3)
        # The default is a throttle of this server's own.
        throttle: Union[AuthThrottle, None, Literal[False]] = setting(
            self, 'auth_throttle', auth_throttle, AuthThrottle())
        if not callable(authenticator):
            raise TypeError('authenticator must be a callable '
                            '(mechanism, login, password, channel) -> bool, '
                            'not %r' % (authenticator,))
        if isinstance(auth_mechanisms, str):
            auth_mechanisms = auth_mechanisms.split()
        mechanisms = tuple(m.upper() for m in auth_mechanisms)
        unknown = [m for m in mechanisms if m not in MECHANISMS]
        if unknown or not mechanisms:
            raise ValueError('auth_mechanisms must be taken from %s, not %r'
                             % (MECHANISMS, auth_mechanisms))
        if not isinstance(auth_max_failures, int) or auth_max_failures < 1:
            raise ValueError('auth_max_failures must be a positive integer, '
                             'not %r' % (auth_max_failures,))
        self.authenticator = authenticator
        self.auth_required = bool(auth_required)
        self.auth_allow_plaintext = bool(auth_allow_plaintext)
        self.auth_mechanisms = mechanisms
        self.auth_max_failures = auth_max_failures
        self.auth_throttle = throttle or None
        super().__init__(localaddr, remoteaddr, *args, **kwargs)
        # Checked after super().__init__ so that a TLS mixin on either side
        # of this one has set tls_context.
        if getattr(self, 'tls_context', None) is None and not auth_allow_plaintext:
            self.close()
            raise ValueError('AUTH is only offered over TLS: add TLSServerMixin '
                             'with a tls_context, or pass '
                             'auth_allow_plaintext=True')


class SubmissionServer(AuthServerMixin, TLSServerMixin, _smtpd.SMTPServer):
    """A message submission server (RFC 6409 on port 587 with STARTTLS, or
    RFC 8314 on port 465 with ``implicit_tls=True``): TLS and AUTH, with
    ``auth_required=True`` by default.  Subclass it and override
    ``process_message(self, peer, mailfrom, rcpttos, data, auth_user=None,
    **kwargs)``."""

    auth_user_kwarg = True
    #: The default of the auth_required keyword here.
    auth_required = True

    def process_message(self, peer: _smtpd._Address, mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        raise NotImplementedError


# -- python -m smtpd_compat.auth hash LOGIN ------------------------------

def _read_password() -> str:
    import getpass
    if sys.stdin.isatty():
        first = getpass.getpass('Password: ')
        if getpass.getpass('Again: ') != first:
            raise SystemExit('Passwords differ.')
        return first
    return sys.stdin.readline().rstrip('\r\n')


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m smtpd_compat.auth hash [--pbkdf2] LOGIN``: print an
    auth-file line for LOGIN, reading the password from the terminal (or
    the first line of stdin)."""
    import argparse
    parser = argparse.ArgumentParser(prog='python -m smtpd_compat.auth')
    commands = parser.add_subparsers(dest='command', required=True)
    make = commands.add_parser('hash', help='print a login:hash line')
    make.add_argument('login')
    make.add_argument('--pbkdf2', action='store_true',
                      help='PBKDF2-SHA256 instead of scrypt (the default '
                      'where hashlib has no scrypt)')
    args = parser.parse_args(argv)
    password = _read_password()
    if not password:
        raise SystemExit('Empty password refused.')
    scheme = 'pbkdf2-sha256' if args.pbkdf2 or not _have_scrypt() else 'scrypt'
    print('%s:%s' % (args.login, hash_password(password, scheme)))


if __name__ == '__main__':
    main()

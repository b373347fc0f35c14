"""The AUTH throttle slows guessers, never the owner (issue 21).

Anchored on Dovecot's documented authentication penalty
(doc.dovecot.org, "Authentication Penalty"): penalties are tracked per
client IP; the delay starts small, doubles, and stops at 15 seconds; an
address without failures has no penalty.  Where we differ we say so: IPv6
counts per /64 here (Dovecot: /48), and a login under attack adds a delay
only for addresses that have failed themselves."""
import base64
import smtplib
import threading
import time

import pytest

from conftest import RecordingServer
from test_auth import FakeClock

from smtpd_compat import auth
from smtpd_compat.auth import AuthThrottle, Verdict, normalise_login

WAIT = 10.0


def fail(throttle, address, login):
    verdict = throttle.assess(address, login)
    assert verdict.allowed
    throttle.record(address, login, False)
    return verdict


def test_penalty_is_per_address_like_dovecot():
    # Dovecot: "tracks authentication penalties for different IPs".
    throttle = AuthThrottle(clock=FakeClock())
    for _ in range(30):
        throttle.record('192.0.2.66', 'alice', throttle.allow('192.0.2.66', 'alice') and False)
    assert not throttle.allow('192.0.2.66', 'alice')
    # Another address, with no failures of its own: no penalty at all, for
    # the attacked login too.
    assert throttle.assess('198.51.100.7', 'alice') == Verdict(True, 0.0, False)


@pytest.mark.parametrize('attackers', [1, 20], ids=['one-attacker', 'twenty'])
def test_owner_after_one_typo_is_delayed_never_refused(attackers):
    clock = FakeClock()
    throttle = AuthThrottle(clock=clock)
    owner = '203.0.113.5'
    fail(throttle, owner, 'alice')                      # the typo
    for round_ in range(12):
        for n in range(attackers):
            verdict = throttle.assess('192.0.2.%d' % n, 'alice')
            if verdict.allowed:
                throttle.record('192.0.2.%d' % n, 'alice', False)
        clock.now += 0.5
        # Right password, every time while the attack goes on: checked,
        # after one interval (1 s, well within the 2 s target).
        verdict = throttle.assess(owner, 'Alice')
        assert verdict.allowed and verdict.delay <= 1.0, round_
        throttle.record(owner, 'Alice', True)


def test_delay_doubles_up_to_dovecots_15_seconds():
    # Dovecot: the delay doubles (2 -> 4 -> 8) and stops at 15 seconds.
    clock = FakeClock()
    throttle = AuthThrottle(max_failures=10, clock=clock)
    for n in range(10):
        fail(throttle, '192.0.2.%d' % n, 'alice')       # alice under attack
    delays = []
    for _ in range(8):
        delays.append(fail(throttle, '203.0.113.9', 'alice').delay)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    # Past max_failures the address itself is held to one check a second.
    for _ in range(2):
        fail(throttle, '203.0.113.9', 'alice')
    assert not throttle.allow('203.0.113.9', 'alice')


@pytest.mark.parametrize('variant', ['Alice', 'ALICE', ' alice ', 'alice\t',
                                     'ALİCE'.replace('İ', 'I')])
def test_login_variants_count_as_one(variant):
    clock = FakeClock()
    throttle = AuthThrottle(max_failures=5, clock=clock)
    for n in range(5):
        fail(throttle, '192.0.2.%d' % n, 'alice')
    fail(throttle, '203.0.113.1', 'bob')
    # The variant is the attacked login: the failed address is delayed.
    assert throttle.assess('203.0.113.1', variant).delay == 1.0
    assert normalise_login(variant) == 'alice'


def test_failures_lower_the_priority():
    # 0 for a clean address, 1 after one failure (the owner's typo), 2
    # after more (the guessers): the pool runs 1 before 2.
    throttle = AuthThrottle(clock=FakeClock())
    priorities = [fail(throttle, '192.0.2.1', 'u%d' % n).priority
                  for n in range(4)]
    assert priorities == [0, 1, 2, 2]
    assert throttle.assess('192.0.2.2', 'u9').priority == 0


def test_ipv6_counts_per_slash64():
    throttle = AuthThrottle(max_failures=2, clock=FakeClock())
    fail(throttle, '2001:db8:1:2::1', 'x')
    fail(throttle, '2001:db8:1:2:ffff::9', 'y')
    assert not throttle.allow('2001:db8:1:2::77', 'z')
    assert throttle.allow('2001:db8:1:3::1', 'z')


def test_a_full_table_never_lets_a_throttled_address_escape():
    clock = FakeClock()
    throttle = AuthThrottle(max_failures=3, max_entries=100, clock=clock)
    for _ in range(3):
        fail(throttle, '192.0.2.1', 'x')
    assert not throttle.allow('192.0.2.1', 'x')
    # 2,000 other /64s, each failing once: forgotten before it is.
    for n in range(2000):
        fail(throttle, '2001:db8:%x::1' % n, 'x')
        assert len(throttle._entries) <= 100
    assert not throttle.allow('192.0.2.1', 'x')
    # Every entry throttling: addresses are folded into their prefixes,
    # and stay throttled there.
    for n in range(300):
        for _ in range(3):
            throttle.record('10.%d.%d.1' % (n // 250, n % 250), None,
                            throttle.allow('10.%d.%d.1' % (n // 250, n % 250), None) and False)
        assert len(throttle._entries) <= 100
    assert not throttle.allow('192.0.2.1', 'x')
    assert not throttle.allow('10.0.7.1', None)


def test_assessment_is_thread_safe():
    throttle = AuthThrottle(max_failures=10 ** 6, max_entries=50)

    def work(n):
        for i in range(300):
            throttle.record('192.0.%d.%d' % (n, i), 'u%d' % i,
                            throttle.allow('192.0.%d.%d' % (n, i), 'u%d' % i) and False)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(throttle._entries) <= 50


# -- live: the owner logs in while addresses guess her password ------------

class Server(auth.AuthServerMixin, RecordingServer):
    pass


def check(mechanism, login, password, channel):
    return login == 'alice' and password == 'right'


def attempt(address, password, source):
    client = smtplib.SMTP(timeout=WAIT, source_address=(source, 0))
    try:
        client.connect(*address)
        client.ehlo()
        code, _ = client.docmd('AUTH', 'PLAIN ' + base64.b64encode(
            b'\0alice\0' + password.encode()).decode())
        return code
    finally:
        client.close()


@pytest.mark.parametrize('attackers', [1, 20], ids=['one-attacker', 'twenty'])
def test_live_owner_gets_235_after_a_typo_during_an_attack(live_server, attackers):
    live = live_server(Server, authenticator=check,
                       auth_allow_plaintext=True, loop='smtpd_compat',
                       auth_throttle=AuthThrottle(max_failures=2, interval=1.0,
                                                  max_delay=0.05))
    sources = ['127.0.1.%d' % (n + 1) for n in range(attackers)]
    assert attempt(live.address, 'typo', '127.0.0.2') == 535
    for _ in range(3):
        for source in sources:
            assert attempt(live.address, 'guess', source) in (535, 454)
    # Dovecot's rule: the penalty belongs to the guessers' addresses.
    assert attempt(live.address, 'right', '127.0.0.3') == 235
    started = time.monotonic()
    assert attempt(live.address, 'right', '127.0.0.2') == 235
    assert time.monotonic() - started < WAIT    # (did not hang)


# -- a burst of logins from one client --------------------------------------

def test_a_refusal_only_for_checks_in_flight_says_when_to_ask_again():
    clock = FakeClock()
    throttle = AuthThrottle(max_failures=3, clock=clock)
    address = '192.0.2.40'
    for _ in range(3):
        assert throttle.assess(address, 'alice').allowed
    # Three checks run, none has failed: not a plain refusal.
    assert throttle.assess(address, 'alice') == Verdict(False, 1.0, 0)
    # Two succeed: their counts are withdrawn, and the next is checked.
    for _ in range(2):
        throttle.check_done(address)
        throttle.record(address, 'alice', True)
    assert throttle.assess(address, 'alice').allowed
    # Both running checks fail, and a third: three real failures, a plain
    # refusal.
    for _ in range(2):
        throttle.check_done(address)
        throttle.record(address, 'alice', False)
    assert throttle.assess(address, 'alice').allowed
    throttle.check_done(address)
    throttle.record(address, 'alice', False)
    assert throttle.assess(address, 'alice') == Verdict(False)
    assert throttle._in_flight == {}


def test_guesses_in_flight_are_refused_once_they_have_failed():
    clock = FakeClock()
    throttle = AuthThrottle(max_failures=10, clock=clock)
    address = '192.0.2.41'
    assert sum(throttle.allow(address, 'alice') for _ in range(100)) == 10
    for _ in range(10):
        throttle.check_done(address)
        throttle.record(address, 'alice', False)
    # The burst's other 90, asking again: refused outright.
    assert all(throttle.assess(address, 'alice') == Verdict(False)
               for _ in range(90))


def slow_check(mechanism, login, password, channel):
    time.sleep(0.2)
    return check(mechanism, login, password, channel)


def at_once(n, fn):
    """The results of ``fn()`` called in ``n`` threads started together."""
    barrier = threading.Barrier(n)
    results = []

    def run():
        barrier.wait()
        results.append(fn())

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_live_parallel_logins_of_one_client_all_succeed(live_server):
    # A mail server submitting over many connections at once logs them in
    # at the same moment from one address: more checks in flight than
    # max_failures must make the later ones wait, not answer 454.
    live = live_server(Server, authenticator=slow_check,
                       auth_allow_plaintext=True, loop='smtpd_compat',
                       auth_throttle=AuthThrottle(max_failures=3))
    codes = at_once(12, lambda: attempt(live.address, 'right', '127.0.0.1'))
    assert codes == [235] * 12
    # Guessers from one address are still refused once they have failed.
    guesses = at_once(12, lambda: attempt(live.address, 'guess', '127.0.0.5'))
    assert sorted(guesses).count(535) == 3 and guesses.count(454) == 9
    assert live.server.auth_throttle._in_flight == {}

"""Tests for smtpd_compat.loop: the selectors-based loop and its timers."""
import collections
import logging
import selectors
import signal
import smtplib
import socket
import threading
import time

import pytest

import smtpd_compat
from smtpd_compat import loop as loopmod
from smtpd_compat.loop import call_later, loop, raise_fd_limit, update

from conftest import RecordingServer, recv_reply


def drive(map, until, limit=10.0):
    """Run loop() on map until until() is true (bounded in time)."""
    deadline = time.monotonic() + limit
    while not until():
        assert time.monotonic() < deadline, 'timed out'
        loop(timeout=0.01, map=map, count=1)


def in_thread(func):
    result = {}

    def run():
        try:
            result['value'] = func()
        except BaseException as e:   # handed to the test thread
            result['error'] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


SELECTORS = [loopmod._KeySelector]
if hasattr(loopmod.select, 'epoll'):
    SELECTORS.insert(0, loopmod._EpollSelector)


@pytest.fixture(autouse=True, params=SELECTORS, ids=lambda c: c.__name__)
def selector_class(request, monkeypatch):
    """Every test here runs on Linux's direct epoll selector and on the
    selectors-module one used elsewhere."""
    monkeypatch.setattr(loopmod, '_Selector', request.param)
    return request.param


def test_selector_reports_hangup_and_forgets_closed_fds(selector_class):
    sel = selector_class()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        sel.register(a.fileno(), loopmod._READ)
        sel.register(c.fileno(), loopmod._READ)
        assert sel.select(0) == []
        b.close()       # hang-up: readable (recv then returns b'')
        ready = sel.select(1.0)
        assert [(fd, mask & loopmod._READ) for fd, mask in ready] == \
            [(a.fileno(), loopmod._READ)]
        sel.modify(a.fileno(), loopmod._READ | loopmod._WRITE)
        assert dict(sel.select(1.0))[a.fileno()] & loopmod._WRITE
        fd = c.fileno()
        c.close()       # closed while registered: unregistering is quiet
        sel.unregister(fd)
        sel.unregister(a.fileno())
        assert sel.select(0) == []
    finally:
        sel.close()
        for s in (a, c, d):
            s.close()


@pytest.fixture
def served():
    """A RecordingServer on its own map; closed at teardown."""
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    yield server, map
    smtpd_compat.asyncore.close_all(map=map)
    loopmod._services.pop(id(map), None)


def test_transaction_under_loop(served):
    server, map = served
    port = server.socket.getsockname()[1]

    def client():
        with smtplib.SMTP('127.0.0.1', port, timeout=5) as c:
            code, text = c.ehlo('me')
            c.sendmail('a@example.org', ['b@example.org', 'c@example.org'],
                       b'Subject: x\r\n\r\n.dot\r\nbody\r\n')
            return code, text
    t, result = in_thread(client)
    drive(map, lambda: not t.is_alive())
    assert 'error' not in result
    code, text = result['value']
    assert code == 250 and text.endswith(b'\n8BITMIME\nHELP')
    (peer, mailfrom, rcpttos, data, kwargs), = server.messages
    assert (mailfrom, rcpttos) == ('a@example.org', ['b@example.org', 'c@example.org'])
    assert data == b'Subject: x\n\n.dot\nbody'
    assert kwargs == {'mail_options': ['SIZE=26'], 'rcpt_options': []}


def test_loop_returns_when_map_empty_and_count_bounds():
    assert loop(timeout=5, map={}) is None      # at once, map is empty
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    try:
        start = time.monotonic()
        loop(timeout=0.05, map=map, count=3)
        elapsed = time.monotonic() - start
        # Three waits of 0.05 s; an ignored timeout would wait 30 s each
        # (the bound leaves room for a loaded machine).
        assert 0.1 <= elapsed < 10
    finally:
        server.close()
        loop(map=map, count=1)
    assert id(map) not in loopmod._services


def test_timers_order_cancel_and_nesting():
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    fired = []
    call_later(0.03, fired.append, 'b', map=map)
    call_later(0.01, fired.append, 'a', map=map)
    call_later(0.03, fired.append, 'c', map=map)        # tie: after 'b'
    dropped = call_later(0.02, fired.append, 'never', map=map)
    dropped.cancel()
    dropped.cancel()                                    # harmless twice

    def inner():
        fired.append('inner')
        server.close()      # empties the map: the loop ends

    def nested():
        fired.append('outer')
        # Scheduled for "now": it runs at the next wake-up, not in the
        # batch of timers being run.
        call_later(0, inner, map=map)
    call_later(0.04, nested, map=map)
    start = time.monotonic()
    loop(timeout=30, map=map)
    elapsed = time.monotonic() - start
    assert fired == ['a', 'b', 'c', 'outer', 'inner']
    # The loop slept until each deadline, not for its 30 s timeout.
    assert elapsed < 20
    assert not map


def test_timers_follow_the_injected_clock():
    """The map's clock decides when timers are due: a test moves it
    forward and runs what is due, without sleeping."""
    map = {}
    services = loopmod.services(map)
    now = [1000.0]
    services.clock = lambda: now[0]
    fired = []
    services.call_later(300, fired.append, 'late')
    services.call_at(1010.0, fired.append, 'at')
    assert services.run_timers() == 10.0
    assert fired == []
    now[0] = 1010.0
    assert services.run_timers() == 290.0
    assert fired == ['at']
    now[0] += 290
    assert services.run_timers() is None
    assert fired == ['at', 'late']
    assert loopmod.services(map) is services
    loop(map=map, count=1)      # empty, nothing scheduled: released
    assert id(map) not in loopmod._services


def test_idle_timeout_fires_on_the_injected_clock():
    """A connection's deadline (limits' idle timeout) is on the map's
    clock: moved 301 s forward, the 300 s idle timeout has passed."""
    from smtpd_compat.limits import LimitsServerMixin

    class Limited(LimitsServerMixin, RecordingServer):
        pass
    map = {}
    services = loopmod.services(map)
    now = [5000.0]
    services.clock = lambda: now[0]
    server = Limited(('127.0.0.1', 0), None, map=map, idle_timeout=300)
    client = socket.create_connection(server.socket.getsockname()[:2],
                                      timeout=10)
    try:
        drive(map, lambda: len(map) == 2)
        assert recv_reply(client).startswith(b'220 ')
        channel = next(obj for obj in map.values() if obj is not server)
        assert channel.deadline == 5300.0
        now[0] += 299
        services.run_timers()
        assert channel.connected
        now[0] += 2
        services.run_timers()
        assert recv_reply(client).startswith(b'421 4.4.2 ')
        assert not channel.connected
    finally:
        client.close()
        smtpd_compat.asyncore.close_all(map=map)
        loop(map=map, count=1)


@pytest.mark.parametrize('use_timers', [True, False],
                         ids=['smtpd_compat.loop', 'asyncore'])
def test_call_soon_threadsafe_wakes_the_loop(use_timers):
    """Another thread hands work to the loop thread through the map's one
    wake-up, under both loops; held, the wake-up keeps the loop running,
    released, it leaves the map and the loop ends."""
    map = {}
    services = loopmod.services(map)
    services.hold()
    ran = []

    def on_loop_thread(value):
        ran.append((value, threading.get_ident()))
        services.release()
    run = loop if use_timers else smtpd_compat.asyncore.loop
    runner, result = in_thread(lambda: run(timeout=30, map=map))
    try:
        time.sleep(0.05)        # (it need not be waiting yet)
        assert services.call_soon_threadsafe(on_loop_thread, 'x')
        runner.join(10)
        assert not runner.is_alive(), 'the loop was not woken'
        assert ran == [('x', runner.ident)]
        assert map == {}
        # No loop serves the map now: a late call is refused.
        assert not services.call_soon_threadsafe(ran.append, 'late')
    finally:
        if runner.is_alive():
            smtpd_compat.asyncore.close_all(map=map)
            runner.join(10)
    assert 'error' not in result


def test_stop_from_another_thread_ends_the_loop():
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    services = loopmod.services(map)
    services.enable_wakeup()
    runner, result = in_thread(lambda: loop(timeout=30, map=map))
    try:
        time.sleep(0.05)
        services.stop()
        runner.join(10)
        assert not runner.is_alive(), 'stop() did not wake the loop'
        assert server in map.values()       # stopped, not emptied
        assert 'error' not in result
    finally:
        smtpd_compat.asyncore.close_all(map=map)
        loop(map=map, count=1)


def _sigusr1_soon():
    """A started thread that sends itself SIGUSR1 in 0.2 s (the loop is
    waiting by then, or soon): the C handler runs there, the Python
    handler in the main thread."""
    def send():
        time.sleep(0.2)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    sender = threading.Thread(target=send)
    sender.start()
    return sender


@pytest.mark.skipif(not hasattr(signal, 'pthread_kill'),
                    reason='POSIX signals needed')
def test_signal_wakes_the_loop_at_once():
    """A signal whose C handler runs in another thread does not interrupt
    the loop's wait (no EINTR in the loop thread): only the wake-up
    written by the C handler (signal.set_wakeup_fd) ends it, and the
    callback runs on the loop thread.  Without it the loop would sleep
    out its 30 s timeout."""
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    services = loopmod.services(map)
    got = []

    def on_signal():
        got.append(threading.get_ident())
        services.stop()
    services.add_signal_handler(signal.SIGUSR1, on_signal)
    sender = _sigusr1_soon()
    try:
        started = time.monotonic()
        loop(timeout=30, map=map)
        assert time.monotonic() - started < 20
        assert got == [threading.get_ident()]
    finally:
        sender.join(10)
        assert services.remove_signal_handler(signal.SIGUSR1)
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        server.close()
        loop(map=map, count=1)
    assert id(map) not in loopmod._services


@pytest.mark.skipif(not hasattr(signal, 'pthread_kill'),
                    reason='POSIX signals needed')
def test_call_soon_from_signal_runs_on_the_loop():
    """A Python-level signal handler hands work to the loop without a lock
    (it may run while the loop thread holds one): the callback runs on
    the loop thread at the wake-up this causes, even when the handler's
    own signal raised nothing the loop would see."""
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    services = loopmod.services(map)
    got = []

    def on_loop():
        got.append(threading.get_ident())
        services.stop()

    def handler(signum, frame):
        assert services.call_soon_from_signal(on_loop)

    previous = signal.signal(signal.SIGUSR1, handler)
    services.enable_wakeup()
    sender = _sigusr1_soon()
    try:
        started = time.monotonic()
        with services.wake_on_signals():
            loop(timeout=30, map=map)
        assert time.monotonic() - started < 20
        assert got == [threading.get_ident()]
    finally:
        sender.join(10)
        signal.signal(signal.SIGUSR1, previous)
        server.close()
        loop(map=map, count=1)
    # No wake-up in the map any more: refused.
    assert not services.call_soon_from_signal(got.append, 'late')


class _WatchedSocket:
    """A wake-up's write socket that notes, when it is closed, which
    descriptor signals were writing to (signal.set_wakeup_fd)."""

    def __init__(self, sock, seen):
        self.sock, self.seen = sock, seen

    def fileno(self):
        return self.sock.fileno()

    def send(self, data):
        return self.sock.send(data)

    def close(self):
        current = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(current)
        self.seen.append((current, self.sock.fileno()))
        self.sock.close()


@pytest.mark.skipif(not hasattr(signal, 'SIGUSR1'), reason='POSIX signals needed')
def test_signals_stop_writing_to_a_wakeup_before_it_closes():
    """The wake-up's socket closes only once signals write elsewhere: a
    signal in between had the C handler write to a closed descriptor
    ("Exception ignored ... Bad file descriptor" on stderr, seen in a
    shutdown under a storm of signals)."""
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    services = loopmod.services(map)
    services.add_signal_handler(signal.SIGUSR1, lambda: None)
    waker = services._waker
    seen = []
    waker._wsock = _WatchedSocket(waker._wsock, seen)
    try:
        waker.close()
        [(writing_to, closed)] = seen
        assert writing_to != closed
    finally:
        assert services.remove_signal_handler(signal.SIGUSR1)
        server.close()
        if services._waker is not None:
            services._waker.close()
        loop(map=map, count=1)
    assert signal.set_wakeup_fd(-1) == -1


def test_timer_exception_logged_loop_survives(caplog):
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)
    fired = []
    call_later(0, lambda: 1 / 0, map=map)
    call_later(0.01, fired.append, 'after', map=map)
    call_later(0.02, server.close, map=map)
    with caplog.at_level(logging.ERROR, logger='smtpd_compat'):
        loop(timeout=1, map=map)
    assert fired == ['after']
    assert any('ZeroDivisionError' in (r.exc_text or '') or
               (r.exc_info and r.exc_info[0] is ZeroDivisionError)
               for r in caplog.records)


def test_exitnow_from_a_handler_leaves_the_loop_as_in_asyncore():
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)

    def handle_accept():
        raise smtpd_compat.asyncore.ExitNow
    server.handle_accept = handle_accept
    client = socket.create_connection(server.socket.getsockname()[:2])
    try:
        with pytest.raises(smtpd_compat.asyncore.ExitNow):
            loop(timeout=1, map=map)
        assert server in map.values()      # not closed by handle_error
    finally:
        client.close()
        server.close()
        loop(map=map, count=1)


def test_keyboard_interrupt_from_timer_propagates():
    map = {}
    server = RecordingServer(('127.0.0.1', 0), None, map=map)

    def stop():
        raise KeyboardInterrupt
    call_later(0, stop, map=map)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop(timeout=1, map=map)
    finally:
        server.close()


def test_timer_closes_channel_and_fd_is_reused(served):
    """A timer closes an idle channel; the next connection may get the
    same fd number and must be served, not ignored."""
    server, map = served
    port = server.socket.getsockname()[1]
    first = socket.create_connection(('127.0.0.1', port), timeout=5)
    drive(map, lambda: len(map) == 2)
    channel = next(obj for obj in map.values() if obj is not server)
    old_fd = channel._fileno
    call_later(0, channel.close, map=map)
    drive(map, lambda: len(map) == 1)
    first.settimeout(5)
    assert recv_reply(first).startswith(b'220 ')
    assert first.recv(100) == b''           # closed by the server
    first.close()

    def client():
        with smtplib.SMTP('127.0.0.1', port, timeout=5) as c:
            return c.noop()
    t, result = in_thread(client)
    drive(map, lambda: not t.is_alive())
    assert result.get('value') == (250, b'OK')
    # The test is only meaningful if the fd number came back; it usually
    # does (lowest free number), so at least check the map is consistent.
    assert old_fd is not None


def test_channel_that_closed_itself_is_dropped_without_unregistering(
        served, selector_class, monkeypatch):
    """A channel that closed its own socket in a handler: the kernel has
    dropped its epoll registration, so the loop only forgets it (no
    system call that would fail); other selectors unregister it.  The
    next connection is served either way."""
    server, map = served
    port = server.socket.getsockname()[1]
    calls = []
    for name in ('unregister', 'closed'):
        real = getattr(selector_class, name)
        monkeypatch.setattr(selector_class, name,
                            lambda self, fd, real=real, name=name:
                            (calls.append(name), real(self, fd))[1])

    def client():
        with smtplib.SMTP('127.0.0.1', port, timeout=5) as c:
            return c.noop()
    for _ in range(2):
        t, result = in_thread(client)
        drive(map, lambda: not t.is_alive() and len(map) == 1)
        assert result.get('value') == (250, b'OK')
    assert calls == ['closed', 'closed']
    selector = loopmod.services(map)._selector
    if selector_class is getattr(loopmod, '_EpollSelector', None):
        assert selector._registered == 1       # the listening socket
    else:
        assert len(selector._selector.get_map()) == 1


def test_dispatcher_added_by_timer_is_served(served):
    """A second server created inside a timer callback gets registered."""
    server, map = served
    created = []

    def add():
        created.append(RecordingServer(('127.0.0.1', 0), None, map=map))
    call_later(0, add, map=map)
    drive(map, lambda: created)
    port = created[0].socket.getsockname()[1]

    def client():
        with smtplib.SMTP('127.0.0.1', port, timeout=5) as c:
            c.sendmail('a@x.org', ['b@x.org'], b'hello\r\n')
    t, result = in_thread(client)
    drive(map, lambda: not t.is_alive())
    assert 'error' not in result
    assert created[0].messages[0][3] == b'hello'


def test_push_to_other_channel_with_update(served):
    """A channel that gets output from outside its own handlers is
    served after update() (and, without it, at the latest by timeout)."""
    server, map = served
    port = server.socket.getsockname()[1]
    a = socket.create_connection(('127.0.0.1', port), timeout=5)
    drive(map, lambda: len(map) == 2)
    assert recv_reply(a).startswith(b'220 ')
    channel = next(obj for obj in map.values() if obj is not server)

    def queue():
        # Queue output without sending it (as when the socket buffer is
        # full); nothing ties this callback to the channel but update().
        channel.producer_fifo.append(b'250 queued\r\n')
        update(channel)
    call_later(0, queue, map=map)
    start = time.monotonic()
    loop(timeout=30, map=map, count=2)   # 1: runs the timer, 2: writes
    assert time.monotonic() - start < 20  # no wait for the 30 s timeout
    assert recv_reply(a) == b'250 queued\r\n'
    a.close()


def test_plain_asyncore_loop_still_works(recording_server, raw_client):
    sock, greeting = raw_client(recording_server.address)
    assert greeting.startswith(b'220 ')
    sock.sendall(b'HELO x\r\n')
    assert recv_reply(sock).startswith(b'250 ')


def test_more_than_1024_connections(served):
    """select() cannot watch fd numbers >= 1024; the loop can."""
    n = 1100
    if raise_fd_limit() < n + 200:
        pytest.skip('RLIMIT_NOFILE too low for this test')
    server, map = served
    port = server.socket.getsockname()[1]
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(('127.0.0.1', port))
            socks.append(s)
        drive(map, lambda: len(map) == n + 1, limit=20)
        last = socks[-1]
        assert last.fileno() >= 1024
        last.setblocking(True)
        last.settimeout(5)
        # The greeting was sent at accept; a command round trip proves the
        # high fd is watched for reading too.
        t, result = in_thread(lambda: (recv_reply(last),
                                       last.sendall(b'NOOP\r\n'),
                                       recv_reply(last)))
        drive(map, lambda: not t.is_alive())
        assert result['value'][2] == b'250 OK\r\n'
    finally:
        for s in socks:
            s.close()


class _Counting(smtpd_compat.asyncore.dispatcher):
    """A dispatcher on one end of a socketpair that counts how often the
    loop asks it what it wants."""

    def __init__(self, sock, map):
        super().__init__(sock, map=map)
        self.asked = 0
        self.want_write = False
        self.wrote = 0

    def readable(self):
        self.asked += 1
        return True

    def writable(self):
        return self.want_write

    def handle_write(self):
        self.wrote += 1
        self.want_write = False

    def handle_read(self):
        self.recv(100)


def test_repeated_loop_calls_do_not_ask_everyone_each_time(monkeypatch):
    """loop(count=1) called over and over (a legacy driver, a test harness)
    asks every dispatcher at most every _ASK_EVERYONE_INTERVAL seconds, not
    on every call; a change made behind the loop's back is still noticed
    once that interval has passed."""
    assert loopmod._ASK_EVERYONE_INTERVAL == 0.1
    map = {}
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        dispatchers = [_Counting(a, map) for a, _ in pairs]
        poke = pairs[0][1]

        def one_call():
            poke.send(b'x')         # an event, so no wake-up by timeout
            loop(timeout=1, map=map, count=1)

        one_call()
        first = [d.asked for d in dispatchers[1:]]
        assert min(first) >= 1
        # Within the interval (made long here, so that a slow machine
        # cannot make the calls outlast it): only the dispatcher that had
        # an event is asked again.
        monkeypatch.setattr(loopmod, '_ASK_EVERYONE_INTERVAL', 60.0)
        for _ in range(10):
            one_call()
        assert [d.asked for d in dispatchers[1:]] == first
        assert dispatchers[0].asked > 10
        dispatchers[5].want_write = True        # no update(): unseen yet
        one_call()
        assert dispatchers[5].wrote == 0
        # Once the interval has passed, the next call asks everyone.
        monkeypatch.setattr(loopmod, '_ASK_EVERYONE_INTERVAL', 0.0)
        one_call()
        again = [d.asked - n for d, n in zip(dispatchers[1:], first)]
        # (the one that wrote was asked once more after its handler)
        assert again[:4] + again[5:] == [1] * 18 and again[4] == 2
        assert dispatchers[5].wrote == 1
    finally:
        smtpd_compat.asyncore.close_all(map=map)
        for a, b in pairs:
            b.close()
        loopmod._services.pop(id(map), None)


def _quit_in_one_wakeup(served, channel_class=None):
    """Connect, greet, send QUIT and run the loop for one wake-up that
    reads it.  Returns (the client socket, the channel)."""
    server, map = served
    if channel_class is not None:
        server.channel_class = channel_class
    client = socket.create_connection(server.socket.getsockname(), timeout=5)
    drive(map, lambda: len(map) == 2)
    channel = next(obj for obj in map.values() if obj is not server)
    assert recv_reply(client).startswith(b'220 ')
    client.sendall(b'QUIT\r\n')
    loop(timeout=5, map=map, count=1)
    return client, channel


def test_quit_closes_in_the_wakeup_that_read_it(served):
    # After QUIT, the channel's only output is close_when_done's marker,
    # and its write event would only close it: the loop gives it that
    # event at once instead of waiting for the socket to be reported
    # writable (asyncore's loop gave it on its next pass).
    closes = []

    class Channel(smtpd_compat.SMTPChannel):
        def handle_close(self):
            closes.append(self.producer_fifo.copy())
            super().handle_close()

    client, channel = _quit_in_one_wakeup(served, Channel)
    try:
        assert channel not in served[1].values()
        assert closes == [collections.deque()]   # once, from the marker
        assert recv_reply(client) == b'221 Bye\r\n'
        assert client.recv(100) == b''
    finally:
        client.close()


def test_quit_waits_for_a_channel_that_is_never_writable(served):
    # A channel whose writable() says False never gets a write event from
    # asyncore, so it stays open after QUIT: so it does here.
    class Channel(smtpd_compat.SMTPChannel):
        def writable(self):
            return False

    client, channel = _quit_in_one_wakeup(served, Channel)
    try:
        assert recv_reply(client) == b'221 Bye\r\n'
        loop(timeout=0.05, map=served[1], count=2)
        assert channel in served[1].values()
        assert list(channel.producer_fifo) == [None]
    finally:
        client.close()


def test_quit_with_a_reply_still_queued_waits_for_the_socket(served):
    # Output not yet sent (a full socket buffer) is written when the
    # socket is reported writable, never ahead of that.
    sent = []

    class Channel(smtpd_compat.SMTPChannel):
        def send(self, data):
            if data.startswith(b'221'):
                sent.append('held')
                return 0        # as if the buffer were full
            return super().send(data)

    client, channel = _quit_in_one_wakeup(served, Channel)
    try:
        assert channel in served[1].values()
        assert list(channel.producer_fifo) == [b'221 Bye\r\n', None]
        assert loopmod.services(served[1])._events[channel._fileno] & loopmod._WRITE
    finally:
        client.close()


def test_selector_events_of_reads_writes_and_hangups(selector_class):
    # What select() reports, on both selectors: a read as EVENT_READ, a
    # write as EVENT_WRITE, a hang-up as both (the epoll selector hands
    # back epoll's own pairs when every event is a plain read).
    read = selectors.EVENT_READ
    write = selectors.EVENT_WRITE
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    selector = selector_class()
    try:
        selector.register(a.fileno(), read)
        selector.register(c.fileno(), read)
        assert selector.select(0) == []
        b.send(b'x')
        assert sorted(selector.select(0)) == [(a.fileno(), read)]
        d.send(b'y')
        assert sorted(selector.select(0)) == sorted([(a.fileno(), read),
                                                     (c.fileno(), read)])
        selector.modify(c.fileno(), read | write)
        assert sorted(selector.select(0)) == sorted(
            [(a.fileno(), read), (c.fileno(), read | write)])
        selector.modify(c.fileno(), write)
        assert sorted(selector.select(0)) == sorted(
            [(a.fileno(), read), (c.fileno(), write)])
        a.recv(10)
        b.close()
        a.shutdown(socket.SHUT_WR)
        selector.modify(c.fileno(), read)
        c.recv(10)
        ready = dict(selector.select(0))
        # The hang-up: readable (and, with epoll, writable too).
        assert ready[a.fileno()] & read and c.fileno() not in ready
    finally:
        selector.close()
        for s in (a, c, d):
            s.close()

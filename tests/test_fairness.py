"""The worker pool under load from one address (smtpd_compat.threads):
fair queueing per client address, the per-address cap, the handler
timeout, and what becomes of work whose client is gone.

Clients bind their own loopback source address (127.0.0.1 and 127.0.0.2
are both loopback on Linux), so "another address" is real.  Nothing here
measures time beyond "it did not hang"; the figures live in
benchmarks/adversarial.py."""
import logging
import smtplib
import socket
import struct
import threading
import time

import pytest

from conftest import RecordingServer, recv_reply
from smtpd_compat import SMTPChannel, threads
from smtpd_compat.relay import RelayServer
from smtpd_compat.session import INTERNAL_ERROR

WAIT = 10.0


def wait_for(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def pool_of(live):
    return live.server.__dict__.get('_smtpd_compat_pool')


class GatedServer(threads.ThreadedServerMixin, RecordingServer):
    """Messages from 127.0.0.1 wait for ``gate``; others go straight on.
    ``order`` records the client address of each message as it starts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.order = []
        self.lock = threading.Lock()

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        with self.lock:
            self.order.append(peer[0])
        if peer[0] == '127.0.0.1':
            self.gate.wait(WAIT)
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


def client_from(source, live):
    client = smtplib.SMTP(timeout=WAIT, source_address=(source, 0))
    client.connect(*live.address)
    client.ehlo('c')
    return client


def start_message(client, body=b'x\r\n'):
    """MAIL, RCPT, DATA and the content, without reading the final reply."""
    assert client.mail('a@x')[0] == 250
    assert client.rcpt('b@x')[0] == 250
    assert client.docmd('DATA')[0] == 354
    client.send(body + b'.\r\n')


@pytest.mark.parametrize('threads_, per_address', [(1, None), (2, 1)],
                         ids=['one-thread', 'two-threads-cap-1'])
def test_one_address_cannot_starve_another(live_server, threads_, per_address):
    class Server(GatedServer):
        offload_per_address = per_address
    live = live_server(Server, process_message_threads=threads_)
    flood = [client_from('127.0.0.1', live) for _ in range(4)]
    other = client_from('127.0.0.2', live)
    try:
        for n, client in enumerate(flood, 1):
            start_message(client)
            wait_for(lambda: pool_of(live) and pool_of(live).in_flight == n,
                     'the flood was not submitted')
        start_message(other)
        if threads_ == 2:
            # The cap keeps the flood on one thread: the other address gets
            # the second one at once, while the flood is stuck.
            assert other.getreply()[0] == 250
            assert live.server.order == ['127.0.0.1', '127.0.0.2']
            live.server.gate.set()
        else:
            # (Opened only once the other address's message is queued too:
            # opened earlier, the flood ran before it was read, FIFO or not.)
            wait_for(lambda: pool_of(live).in_flight == 5,
                     'the other message was not submitted')
            live.server.gate.set()
            assert other.getreply()[0] == 250
            # Round-robin: at most one more flood message went first (FIFO
            # would have run all four).
            assert live.server.order.index('127.0.0.2') <= 2
        for client in flood:
            assert client.getreply()[0] == 250
    finally:
        live.server.gate.set()
        for client in flood + [other]:
            client.close()
    assert len(live.server.messages) == 5


def test_parked_client_waits_with_input_paused(live_server):
    class Server(GatedServer):
        offload_per_address = 1
    live = live_server(Server, process_message_threads=2)
    first = client_from('127.0.0.1', live)
    second = client_from('127.0.0.1', live)
    try:
        start_message(first)
        wait_for(lambda: live.server.order, 'the first message did not start')
        # Pipelined after the message: answered in order, once it ran.
        start_message(second)
        second.send(b'NOOP\r\n')
        wait_for(lambda: pool_of(live).in_flight == 2, 'not submitted')
        assert live.server.order == ['127.0.0.1']     # parked, not running
        live.server.gate.set()
        assert second.getreply()[0] == 250     # the message
        assert second.getreply()[0] == 250     # the NOOP
        assert first.getreply()[0] == 250
    finally:
        live.server.gate.set()
        first.close()
        second.close()


def test_address_key_counts_ipv6_per_64():
    key = threads.address_key
    assert key(('2001:db8:1:2:aaaa::1', 25, 0, 0)) == key('2001:db8:1:2:ffff::9')
    assert key('2001:db8:1:2::1') == '2001:db8:1:2::/64'
    assert key('2001:db8:1:3::1') != key('2001:db8:1:2::1')
    assert key(('::ffff:192.0.2.7', 1)) == '192.0.2.7'
    assert key(('192.0.2.7', 1)) == '192.0.2.7'
    assert key('fe80::1%eth0') == 'fe80::/64'
    assert key('/run/smtp.sock') == '/run/smtp.sock'


class StuckServer(threads.ThreadedServerMixin, RecordingServer):
    """A message whose body says "stuck" waits for ``gate``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.done = threading.Event()

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if b'stuck' in data:
            self.gate.wait(WAIT)
            self.done.set()
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


def test_handler_timeout_answers_451_and_drops_the_late_result(live_server, caplog):
    live = live_server(StuckServer, loop='smtpd_compat', handler_timeout=0.3,
                       process_message_threads=1)
    with caplog.at_level(logging.INFO, logger='smtpd_compat.threads'):
        with smtplib.SMTP(*live.address, timeout=WAIT) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail('a@x', ['b@x'], b'stuck\r\n')
            assert (info.value.smtp_code, info.value.smtp_error.decode()) == \
                (451, INTERNAL_ERROR[4:])
            # The session goes on, and the stuck thread does not take the
            # pool's only thread from the next message (a spare stands in).
            assert client.noop()[0] == 250
            assert client.sendmail('a@x', ['b@x'], b'fine\r\n') == {}
            live.server.gate.set()
            assert live.server.done.wait(WAIT)
            wait_for(lambda: any('result dropped' in r.getMessage()
                                 for r in caplog.records), 'no drop logged')
            assert client.noop()[0] == 250
    # Stored once it finished (the handler's own doing), never answered 250.
    assert [m[3] for m in live.server.messages] == [b'fine', b'stuck']
    assert any('handler timeout' in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


@pytest.mark.parametrize('value', [0, -1, 'x', True])
def test_handler_timeout_must_be_positive(value):
    with pytest.raises(ValueError):
        StuckServer(('127.0.0.1', 0), None, map={}, handler_timeout=value)


def test_one_reply_for_a_failing_handler():
    # PROCESSING_FAILED was a second 451 text for the same failure.
    assert threads.PROCESSING_FAILED is INTERNAL_ERROR


class DropRecordingChannel(SMTPChannel):
    dropped = []

    def _message_dropped(self, ok, value):
        DropRecordingChannel.dropped.append((ok, value))


class DropServer(threads.ThreadedServerMixin, RecordingServer):
    channel_class = DropRecordingChannel
    delay = 0.3

    def process_message(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().process_message(*args, **kwargs)


def reset_during_data(address, body=b'gone\r\n'):
    sock = socket.create_connection(address, timeout=WAIT)
    recv_reply(sock)
    sock.sendall(b'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n')
    data = b''
    while data.count(b'\r\n') < 4:
        data += sock.recv(4096)
    assert b'354' in data
    sock.sendall(body + b'.\r\n')
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    sock.close()


def test_message_dropped_reaches_the_channel_class(live_server):
    # OffloadChannelMixin's own _message_dropped swallowed the call.
    DropRecordingChannel.dropped = []
    live = live_server(DropServer)
    reset_during_data(live.address)
    wait_for(lambda: DropRecordingChannel.dropped, '_message_dropped not called')
    assert DropRecordingChannel.dropped == [(True, None)]


class SlowUpstream(RecordingServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def process_message(self, *args, **kwargs):
        self.gate.wait(WAIT)
        return super().process_message(*args, **kwargs)


def test_relay_closes_upstream_when_client_left_during_data(live_server):
    upstream = live_server(SlowUpstream)
    relay = live_server(RelayServer, remoteaddr=upstream.address, relay_timeout=5)

    def upstream_sessions():
        return [c for c in list(upstream.map.values())
                if c is not upstream.server and isinstance(c, SMTPChannel)]
    reset_during_data(relay.address)
    wait_for(lambda: upstream_sessions(), 'no upstream session')
    upstream.server.gate.set()
    # The upstream took the message; the relay's session to it is quit
    # (it stayed open before: the relay's _message_dropped never ran).
    wait_for(lambda: upstream.server.messages, 'upstream got nothing')
    wait_for(lambda: not upstream_sessions(), 'upstream session left open')


def test_relay_handler_timeout_leaves_the_session_to_the_worker(live_server):
    upstream = live_server(SlowUpstream)
    relay = live_server(RelayServer, remoteaddr=upstream.address, relay_timeout=5,
                        handler_timeout=0.3, loop='smtpd_compat')
    with smtplib.SMTP(*relay.address, timeout=WAIT) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail('a@x', ['b@x'], b'slow\r\n')
        assert info.value.smtp_code == 451
        assert client.noop()[0] == 250
        upstream.server.gate.set()
        # The worker finished its DATA on the session, then it was quit.
        wait_for(lambda: upstream.server.messages, 'upstream got nothing')
        wait_for(lambda: not [c for c in list(upstream.map.values())
                              if isinstance(c, SMTPChannel)],
                 'upstream session left open')

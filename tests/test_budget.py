"""The process-wide memory budget for message content
(smtpd_compat.budget, ``max_message_memory`` of the limits): messages held
by worker threads count until their work ends, DATA past the budget gets
452 4.3.1, a message that goes past it is read to its end and refused
with the same words, and the session goes on."""
import smtplib
import threading
import time

import pytest

from conftest import RecordingServer
from smtpd_compat import SMTPServer
from smtpd_compat.budget import (INSUFFICIENT_STORAGE, MIN_ROOM, PROCESS_BUDGET,
                                 MessageBudget)
from smtpd_compat.cli_options import _size
from smtpd_compat.extensions import ExtensionsMixin
from smtpd_compat.limits import LimitsServerMixin
from smtpd_compat.threads import ThreadedServerMixin

WAIT = 10.0
REPLY = INSUFFICIENT_STORAGE[4:].encode()


def wait_for(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


class HeldServer(LimitsServerMixin, ThreadedServerMixin, RecordingServer):
    """Messages whose body starts with "hold" wait for ``gate`` in a worker."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.holding = threading.Event()

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if data.startswith(b'hold'):
            self.holding.set()
            self.gate.wait(WAIT)
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


def body(prefix, size):
    line = b'x' * 78 + b'\r\n'
    return prefix + b'\r\n' + line * (size // len(line))


@pytest.fixture
def held(live_server):
    assert PROCESS_BUDGET.used == 0
    servers = []

    def start(limit):
        live = live_server(HeldServer, max_message_memory=limit)
        servers.append(live)
        return live
    yield start
    for live in servers:
        live.server.gate.set()
    wait_for(lambda: PROCESS_BUDGET.used == 0, 'budget not released')


def send_held(live):
    client = smtplib.SMTP(*live.address, timeout=WAIT)
    client.ehlo()
    client.mail('a@x')
    client.rcpt('b@x')
    assert client.docmd('DATA')[0] == 354
    client.send(body(b'hold', 120000).replace(b'\r\n.', b'\r\n..') + b'.\r\n')
    assert live.server.holding.wait(WAIT)
    return client


def test_message_past_the_budget_is_read_and_refused(held):
    live = held(200000)
    holder = send_held(live)
    try:
        # The held message counts while its worker has it.
        assert PROCESS_BUDGET.used > 120000
        with smtplib.SMTP(*live.address, timeout=WAIT) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail('a@x', ['b@x'], body(b'big', 120000))
            assert (info.value.smtp_code, info.value.smtp_error) == (452, REPLY)
            # Read to its end: the session goes on in step.
            assert client.noop()[0] == 250
            assert client.sendmail('a@x', ['b@x'], b'small\r\n') == {}
        live.server.gate.set()
        assert holder.getreply()[0] == 250
    finally:
        holder.close()
    assert [m[3][:4] for m in live.server.messages] == [b'smal', b'hold']


def test_data_refused_when_the_budget_is_spent_and_allowed_again(held):
    live = held(120000 + MIN_ROOM)
    holder = send_held(live)
    try:
        with smtplib.SMTP(*live.address, timeout=WAIT) as client:
            client.ehlo()
            client.mail('a@x')
            client.rcpt('b@x')
            assert client.docmd('DATA') == (452, REPLY)
            # The transaction stays: once the budget is free, DATA works.
            live.server.gate.set()
            assert holder.getreply()[0] == 250
            wait_for(lambda: PROCESS_BUDGET.used == 0, 'not released')
            assert client.data(b'now\r\n')[0] == 250
    finally:
        holder.close()


def test_bdat_past_the_budget_is_refused(live_server):
    class Server(LimitsServerMixin, ExtensionsMixin, RecordingServer):
        pass
    live = live_server(Server, max_message_memory=70000)
    with smtplib.SMTP(*live.address, timeout=WAIT) as client:
        client.ehlo()
        client.mail('a@x')
        client.rcpt('b@x')
        chunk = b'y' * 40000
        client.send(b'BDAT %d\r\n' % len(chunk) + chunk)
        assert client.getreply()[0] == 250
        client.send(b'BDAT %d LAST\r\n' % len(chunk) + chunk)
        assert client.getreply() == (452, REPLY)
        assert client.noop()[0] == 250
        assert client.sendmail('a@x', ['b@x'], b'fits\r\n') == {}
    assert [m[3] for m in live.server.messages] == [b'fits']
    assert PROCESS_BUDGET.used == 0


def test_client_gone_mid_message_releases_its_bytes(live_server):
    live = live_server(HeldServer, max_message_memory=10 ** 6)
    client = smtplib.SMTP(*live.address, timeout=WAIT)
    client.ehlo()
    client.mail('a@x')
    client.rcpt('b@x')
    client.docmd('DATA')
    client.send(b'z' * 100000)
    wait_for(lambda: PROCESS_BUDGET.used >= 100000, 'not charged')
    client.close()
    wait_for(lambda: PROCESS_BUDGET.used == 0, 'not released on close')


def test_without_the_option_nothing_is_charged(live_server):
    for cls, kwargs in ((RecordingServer, {}),
                        (HeldServer, {'max_message_memory': None})):
        live = live_server(cls, **kwargs)
        with smtplib.SMTP(*live.address, timeout=WAIT) as client:
            assert client.sendmail('a@x', ['b@x'], body(b'any', 300000)) == {}
    assert PROCESS_BUDGET.used == 0
    assert not hasattr(SMTPServer, 'max_message_memory')


def test_budget_bookkeeping():
    budget = MessageBudget()
    assert budget.charge(10, 15) and not budget.charge(10, 15)
    assert budget.used == 10
    budget.release(10)
    assert budget.used == 0 and not budget.full(MIN_ROOM)
    assert budget.full(MIN_ROOM - 1)


@pytest.mark.parametrize('text, size', [('1000', 1000), ('4k', 4096),
                                        ('256M', 256 << 20), ('1G', 1 << 30)])
def test_cli_sizes(text, size):
    assert _size(text) == size


def test_a_refused_message_frees_its_share_for_the_others(live_server):
    # Many messages at once: the one that runs out is refused and lets go
    # of what it held, so the others finish (instead of all running out).
    class Server(LimitsServerMixin, RecordingServer):
        pass
    live = live_server(Server, max_message_memory=250000)
    a, b = (smtplib.SMTP(*live.address, timeout=WAIT) for _ in range(2))
    try:
        for client in (a, b):
            client.ehlo()
            client.mail('a@x')
            client.rcpt('b@x')
            assert client.docmd('DATA')[0] == 354
        chunk = (b'y' * 998 + b'\r\n') * 100
        a.send(chunk)
        b.send(chunk)
        wait_for(lambda: PROCESS_BUDGET.used >= 200000, 'not charged')
        a.send(chunk)           # a runs out: refused, its share freed
        wait_for(lambda: PROCESS_BUDGET.used < 150000, 'not freed')
        b.send(chunk + b'.\r\n')
        assert b.getreply()[0] == 250
        a.send(b'.\r\n')
        assert a.getreply() == (452, REPLY)
    finally:
        a.close()
        b.close()
    assert len(live.server.messages) == 1
    wait_for(lambda: PROCESS_BUDGET.used == 0, 'not released')

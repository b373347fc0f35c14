"""Controller (a server in a background thread) and message capture."""
import copy
import email.message
import errno
import os
import smtplib
import socket
import threading

import pytest

import smtpd_compat
from smtpd_compat import controller as controller_module
from smtpd_compat.controller import (
    CapturedMessage, CapturingServer, Controller, Mailbox, with_capture)
from smtpd_compat.web import Inbox, StoredMessage

from conftest import recv_reply

MESSAGE = (
    'From: Ann <ann@example.org>\r\n'
    'To: Bob <bob@example.org>\r\n'
    'Subject: Quarterly report\r\n'
    '\r\n'
    'Figures attached.\r\n'
    '.leading dot\r\n'
)


def send(controller, message=MESSAGE, mailfrom='ann@example.org',
         rcpttos=('bob@example.org',), **kwargs):
    with smtplib.SMTP(controller.hostname, controller.port, timeout=5) as client:
        return client.sendmail(mailfrom, list(rcpttos), message, **kwargs)


def open_fds():
    return set(os.listdir('/proc/self/fd'))

# Leak checks compare with `<=`: no thread or descriptor may be added; one
# that another test's leftover closes meanwhile must not fail this one.


# -- capture -----------------------------------------------------------------

def test_capture_records_envelope_data_and_parsed_message():
    with Controller() as c:
        send(c, rcpttos=['bob@example.org', 'eve@example.org'])
        assert len(c.messages) == 1
        m = c.messages[0]
    assert m.mailfrom == 'ann@example.org'
    assert m.rcpttos == ['bob@example.org', 'eve@example.org']
    assert m.peer[0] == '127.0.0.1' and m.peer[1] > 0
    # Dot-stuffing undone, line ends are newlines, the final one is not
    # part of the data (as in the stdlib), bytes by default.
    assert m.data == MESSAGE.replace('\r\n', '\n')[:-1].encode()
    assert m.mail_options == ['SIZE=%d' % len(MESSAGE)]
    assert m.rcpt_options == []
    assert isinstance(m.message, email.message.EmailMessage)
    # Item access and attributes reach the parsed message.
    assert m['Subject'] == 'Quarterly report'
    assert m['To'].addresses[0].username == 'bob'
    assert 'From' in m and 'Cc' not in m
    assert m.get_content() == 'Figures attached.\n.leading dot'
    assert "from 'ann@example.org'" in repr(m)


def test_capture_with_decode_data_gives_str_and_no_options():
    with Controller(decode_data=True) as c:
        send(c)
        m = c.messages[0]
    assert isinstance(m.data, str)
    assert m.mail_options == [] and m.rcpt_options == []
    assert m['Subject'] == 'Quarterly report'


def test_capture_smtputf8():
    message = 'Subject: Grüße\r\n\r\nnaïve\r\n'.encode('utf-8')
    with Controller(enable_SMTPUTF8=True) as c:
        send(c, message, mailfrom='jörg@example.org',
             rcpttos=['zoë@example.org'], mail_options=['SMTPUTF8'])
        m = c.messages[0]
    assert m.mailfrom == 'jörg@example.org'
    assert m.rcpttos == ['zoë@example.org']
    assert 'SMTPUTF8' in m.mail_options
    assert m['Subject'] == 'Grüße'


def test_capture_reply_refuses_but_records():
    with Controller(reply='550 No such user here') as c:
        with pytest.raises(smtplib.SMTPDataError) as info:
            send(c)
        assert info.value.smtp_code == 550
        assert info.value.smtp_error == b'No such user here'
        assert len(c.messages) == 1


@pytest.mark.parametrize('reply', ['No such user', 550, ''], ids=['text', 'int', 'empty'])
def test_capture_bad_reply_raises_at_construction(reply):
    with pytest.raises(ValueError, match='reply'):
        Controller(reply=reply).start()


def test_mailbox_clear_and_wait_for_across_threads():
    with Controller() as c:
        send(c)
        c.clear()
        assert len(c.messages) == 0 and list(c.messages) == []
        sender = threading.Thread(target=send, args=(c,))
        sender.start()
        got = c.wait_for(1)
        sender.join()
        assert [m['Subject'] for m in got] == ['Quarterly report']
        with pytest.raises(TimeoutError, match='expected 2 message.*got 1'):
            c.wait_for(2, timeout=0.05)


def test_mailbox_iteration_is_a_snapshot():
    box = Mailbox()
    box.append(CapturedMessage(None, 'a', ['b'], b'Subject: 1\n\n'))
    seen = []
    for m in box:
        seen.append(m)
        # Appending while iterating neither fails nor loops.
        box.append(CapturedMessage(None, 'a', ['b'], b'Subject: 2\n\n'))
    assert len(seen) == 1 and len(box) == 2
    assert box[-1]['Subject'] == '2' and box[0] is seen[0]
    # A message is kept once (the store is keyed by its ID).
    with pytest.raises(ValueError, match='already'):
        box.append(seen[0])
    assert len(box) == 2


def test_mailbox_compares_equal_to_lists():
    box = Mailbox()
    assert box == [] and [] == box and not box != []
    m = CapturedMessage(None, 'a', ['b'], b'Subject: 1\n\n')
    box.append(m)
    assert box == [m] and box != [] and box != [m, m]
    assert box != (m,)      # as a list is not equal to a tuple
    other = Mailbox()
    other.append(m)
    assert box == other
    with pytest.raises(TypeError):
        hash(box)           # it changes, as a list does


@pytest.mark.parametrize('count,index,message', [
    (0, 0, r'^no message has arrived \(the mailbox is empty\); .*wait_for\(1, timeout=5\)$'),
    (0, -1, r'^no message has arrived .*wait_for\(1, timeout=5\)$'),
    (2, 2, r'^message 2 has not arrived: 2 so far; .*wait_for\(3, timeout=5\)$'),
    (1, -3, r'^message -3 has not arrived: 1 so far; .*wait_for\(3, timeout=5\)$'),
], ids=['empty', 'empty-last', 'past-the-end', 'negative'])
def test_missing_message_says_so_and_how_to_wait(count, index, message):
    box = Mailbox()
    for _ in range(count):
        box.append(CapturedMessage(None, 'a', ['b'], b'Subject: 1\n\n'))
    with pytest.raises(IndexError, match=message):
        box[index]
    assert box[:5] == list(box)


def test_mailbox_index_of_another_type_is_a_type_error_as_for_a_list():
    box = Mailbox()
    box.append(CapturedMessage(None, 'a', ['b'], b'Subject: 1\n\n'))
    for index in ('0', 0.0, None):
        with pytest.raises(TypeError, match='indices must be integers or slices, not'):
            box[index]
    assert box[False] is box[0]     # (an int, as for a list)


def test_captured_message_private_names_and_copy():
    m = CapturedMessage(None, 'a', ['b'], b'Subject: s\n\nbody\n')
    with pytest.raises(AttributeError):
        m._nothing
    assert copy.copy(m)['Subject'] == 's'
    with pytest.raises(AttributeError):
        m.no_such_method_on_email_message


def test_the_mailbox_is_an_unbounded_inbox_that_starts_no_thread():
    # One store type: the web inbox's, without bounds and without ingest
    # (nothing parsed until a test asks, no thread started).
    box = Mailbox()
    assert isinstance(box, Inbox)
    assert (box.max_messages, box.max_bytes, box.ingest) == (None, None, False)
    for i in range(1200):       # more than a web inbox keeps by default
        box.append(CapturedMessage(None, 'a', ['b'], b'Subject: %d\n\n' % i))
    assert len(box) == 1200 and box[0]['Subject'] == '0' and box[-1]['Subject'] == '1199'
    assert box[1:3] == [box[1], box[2]]
    assert box._worker._thread is None
    # Every message has an ID of the shape of Mailpit's, as in the web inbox.
    assert len({m.id for m in box}) == 1200
    assert all(len(m.id) == 22 and m.id.isalnum() for m in box[:10])
    # What it holds is what a web page shows: summaries on demand.
    assert box.summary(box[-1])['Subject'] == '1199'


def test_captured_message_is_a_stored_message():
    m = CapturedMessage(('127.0.0.1', 1), 'a@example.org', ['b@example.org'],
                        'Subject: s\n\nnaïve\n', auth_user='ann')
    assert isinstance(m, StoredMessage)
    assert m.raw == 'Subject: s\n\nnaïve\n'.encode('utf-8')
    assert m.data == 'Subject: s\n\nnaïve\n'       # as received (decode_data)
    assert (m.username, m.auth_user) == ('ann', 'ann')
    assert m.read is False and m.tags == [] and m.size == len(m.raw)
    raw = b'Subject: b\n\nbytes\n'
    assert CapturedMessage(None, 'a', ['b'], raw).raw is raw     # not copied


def test_with_capture_composes_on_a_server_class():
    cls = with_capture(smtpd_compat.DebuggingServer)
    assert issubclass(cls, CapturingServer)
    assert issubclass(cls, smtpd_compat.DebuggingServer)
    assert with_capture(CapturingServer) is CapturingServer
    assert with_capture(cls) is cls
    with pytest.raises(TypeError):
        with_capture(int)
    with Controller(cls) as c:
        send(c)
        assert c.messages[0]['Subject'] == 'Quarterly report'


# -- what the Controller runs ------------------------------------------------

def test_runs_any_server_class(capsys):
    # The stdlib's DebuggingServer prints the message to stdout.
    with Controller(smtpd_compat.DebuggingServer) as c:
        send(c)
        with pytest.raises(AttributeError, match='does not capture'):
            c.messages
    out = capsys.readouterr().out
    assert '---------- MESSAGE FOLLOWS ----------' in out
    assert "b'Subject: Quarterly report'" in out


def test_runs_a_plain_callable():
    calls = []

    def handler(peer, mailfrom, rcpttos, data, **kwargs):
        calls.append((mailfrom, rcpttos, data, kwargs))
        if 'nobody@example.org' in rcpttos:
            return '550 No such user'
        return None

    with Controller(handler) as c:
        send(c)
        with pytest.raises(smtplib.SMTPDataError) as info:
            send(c, rcpttos=['nobody@example.org'])
    assert info.value.smtp_code == 550
    assert [call[1] for call in calls] == [['bob@example.org'], ['nobody@example.org']]
    assert calls[0][3] == {'mail_options': ['SIZE=%d' % len(MESSAGE)], 'rcpt_options': []}


@pytest.mark.parametrize('handler', [42, int, 'x'], ids=['int', 'class', 'str'])
def test_rejects_what_it_cannot_run(handler):
    with pytest.raises(TypeError, match='SMTPServer subclass or'):
        Controller(handler)


def test_serves_with_the_loop_module(monkeypatch):
    calls = []
    real = smtpd_compat.loop.loop

    def loop(timeout, use_poll, map, count=None):
        calls.append(count)
        real(timeout, use_poll, map, count)

    monkeypatch.setattr(smtpd_compat.loop, 'loop', loop)
    with Controller() as c:
        send(c)
        assert c.messages[0]['Subject'] == 'Quarterly report'
    assert calls


def test_loop_failure_surfaces_in_start(monkeypatch):
    def loop(timeout, use_poll, map, count=None):
        raise ZeroDivisionError('broken loop')

    monkeypatch.setattr(controller_module, '_default_loop', lambda: loop)
    threads = set(threading.enumerate())
    fds = open_fds()
    c = Controller()
    with pytest.raises(RuntimeError, match='failed') as info:
        c.start()
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert set(threading.enumerate()) <= threads
    assert open_fds() <= fds


# -- addresses and errors ----------------------------------------------------

def test_port_zero_gives_a_real_port_and_address():
    with Controller() as c:
        assert c.port > 0
        assert c.address == (c.hostname, c.port) == (c.host, c.port)
        assert c.server.socket.getsockname()[1] == c.port
        assert 'running' in repr(c)
    assert 'stopped' in repr(c)


def test_wildcard_bind_gives_a_connectable_hostname():
    with Controller(hostname='0.0.0.0') as c:
        assert c.hostname == '127.0.0.1'
        assert c.server.socket.getsockname()[0] == '0.0.0.0'
        send(c)
        assert len(c.messages) == 1


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip('no IPv6')
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(('::1', 0))
    except OSError:
        pytest.skip('no IPv6 loopback')
    with Controller(hostname='::1') as c:
        send(c)
        assert c.messages[0].peer[0] == '::1'


def test_bind_error_raises_in_caller_with_address():
    threads = set(threading.enumerate())
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        fds = open_fds()
        with pytest.raises(OSError) as info:
            Controller(port=port).start()
        assert info.value.errno == errno.EADDRINUSE
        assert '127.0.0.1 port %d' % port in str(info.value)
        assert open_fds() <= fds
    assert set(threading.enumerate()) <= threads


def test_unassigned_address_raises_with_address():
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never a local address.
    with pytest.raises(OSError, match='192.0.2.1 port 0') as info:
        Controller(hostname='192.0.2.1').start()
    assert info.value.errno == errno.EADDRNOTAVAIL


def test_bad_server_configuration_raises_in_caller():
    fds = open_fds()
    with pytest.raises(ValueError, match='decode_data and enable_SMTPUTF8'):
        Controller(decode_data=True, enable_SMTPUTF8=True).start()
    with pytest.raises(TypeError):
        Controller(no_such_keyword=1).start()
    assert open_fds() <= fds


# -- life cycle and races ----------------------------------------------------

def test_start_twice_raises_and_restart_after_stop_works():
    c = Controller()
    c.start()
    try:
        with pytest.raises(RuntimeError, match='already started'):
            c.start()
        send(c)
    finally:
        c.stop()
    first = c.server
    assert len(c.messages) == 1    # still readable after stop
    c.start()
    try:
        assert c.server is not first
        send(c)
        assert len(c.messages) == 1
    finally:
        c.stop()


def test_stop_is_idempotent_and_safe_before_start():
    c = Controller()
    c.stop()
    c.start()
    c.stop()
    c.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(c.address, timeout=5).close()


def test_concurrent_stop_from_many_threads():
    threads_before = set(threading.enumerate())
    c = Controller().start()
    errors = []

    def stopper():
        try:
            c.stop()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    stoppers = [threading.Thread(target=stopper) for _ in range(8)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(10)
    assert errors == []
    assert set(threading.enumerate()) <= threads_before


def test_stop_closes_open_sessions():
    c = Controller().start()
    idle = socket.create_connection(c.address, timeout=5)
    mid_data = socket.create_connection(c.address, timeout=5)
    try:
        for sock in (idle, mid_data):
            assert recv_reply(sock).startswith(b'220 ')
        for line in (b'HELO x', b'MAIL FROM:<a@x>', b'RCPT TO:<b@y>', b'DATA'):
            mid_data.sendall(line + b'\r\n')
            assert recv_reply(mid_data)[:1] in (b'2', b'3')
        mid_data.sendall(b'Subject: half\r\n')
        c.stop()
        for sock in (idle, mid_data):
            # The server end is closed: EOF (or a reset), never a hang.
            try:
                assert sock.recv(100) == b''
            except ConnectionResetError:
                pass
    finally:
        c.stop()
        idle.close()
        mid_data.close()
    assert len(c.messages) == 0


def test_stop_from_inside_a_handler():
    holder = []

    def handler(peer, mailfrom, rcpttos, data, **kwargs):
        holder[0].stop()    # must not deadlock joining its own thread
        return None

    c = Controller(handler)
    holder.append(c)
    c.start()
    send(c)
    c.stop()                # joins the thread the handler asked to end
    assert c._thread is None


def test_two_controllers_side_by_side():
    with Controller() as one, Controller() as two:
        assert one.port != two.port
        send(one, 'Subject: one\r\n\r\n1\r\n')
        send(two, 'Subject: two\r\n\r\n2\r\n')
        send(two, 'Subject: two again\r\n\r\n2\r\n')
        assert [m['Subject'] for m in one.messages] == ['one']
        assert [m['Subject'] for m in two.messages] == ['two', 'two again']
        one.stop()
        send(two, 'Subject: still here\r\n\r\n3\r\n')
        assert two.messages[-1]['Subject'] == 'still here'


def test_two_controllers_started_and_stopped_concurrently():
    controllers = [Controller() for _ in range(4)]
    errors = []

    def cycle(c):
        try:
            for _ in range(10):
                with c:
                    send(c, 'Subject: %d\r\n\r\nx\r\n' % c.port)
                    assert c.messages[0]['Subject'] == str(c.port)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=cycle, args=(c,)) for c in controllers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='needs /proc/self/fd')
def test_200_start_stop_cycles_leak_no_thread_or_socket():
    # One cycle first, so lazy imports and caches do not count as leaks.
    with Controller() as c:
        send(c)
    threads = set(threading.enumerate())
    fds = open_fds()
    for i in range(200):
        c = Controller()
        c.start()
        # Ready means ready: a client connecting right away, with no retry,
        # is greeted.
        with socket.create_connection(c.address, timeout=5) as client:
            assert recv_reply(client).startswith(b'220 ')
            if i % 2:
                # Half the cycles stop with a session still open.
                c.stop()
        if i % 50 == 0:
            send(c)
        c.stop()
    assert set(threading.enumerate()) <= threads
    assert open_fds() <= fds


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='needs /proc/self/fd')
def test_plain_asyncore_loop_is_woken_and_stopped_alike(monkeypatch):
    # The map's wake-up (smtpd_compat.loop's services) also wakes a plain
    # asyncore.loop: started and stopped the same way.
    monkeypatch.setattr(controller_module, '_default_loop',
                        lambda: smtpd_compat.asyncore.loop)
    threads = set(threading.enumerate())
    fds = open_fds()
    for _ in range(20):
        with Controller() as c:
            session = socket.create_connection(c.address, timeout=5)
            assert recv_reply(session).startswith(b'220 ')
            send(c)
            assert c.messages[0]['Subject'] == 'Quarterly report'
        with session:
            assert session.recv(100) == b''     # closed by stop()
    assert set(threading.enumerate()) <= threads
    assert open_fds() <= fds

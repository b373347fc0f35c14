"""Log hygiene: whatever a client sends, a log line stays one line without
control characters (issue 12, finding 2)."""
import contextlib
import logging
import os
import re
import smtplib
import socket
import sys
import threading
import time
import warnings
from unittest import mock

import pytest

import smtpd_compat
from smtpd_compat import logfmt, logging_
from smtpd_compat.limits import LimitedServer
from smtpd_compat.logging_ import format_peer, safe
from smtpd_compat.proxy_protocol import ProxyProtocolServerMixin

from conftest import RecordingServer, read_to_eof, recv_reply
from helpers import start_server

# Every character a client could use to end a line or move the cursor.
CONTROLS = [chr(c) for c in list(range(0x20)) + list(range(0x7f, 0xa0))] + [
    '\u2028', '\u2029', '\u200e', '\ufeff']


@pytest.mark.parametrize('value, expected', [
    ('plain text', 'plain text'),
    ('a\r\nFAKE line', 'a\\x0d\\x0aFAKE line'),
    ('tab\there', 'tab\\x09here'),
    ('\x1b[31mred', '\\x1b[31mred'),
    ('del\x7f c1\x85', 'del\\x7f c1\\x85'),
    ('back\\slash', 'back\\\\slash'),
    ('caf\xe9 \u65e5\u672c', 'caf\xe9 \u65e5\u672c'),
    ('sep\u2028x\u2029', 'sep\\u2028x\\u2029'),
    (b'bytes\n\xff\xc3\xa9', 'bytes\\x0a\\xff\xe9'),
    (('fe80::2', 25), "('fe80::2', 25)"),
    (None, 'None'),
], ids=['plain', 'crlf', 'tab', 'escape', 'del-c1', 'backslash', 'unicode',
        'separators', 'bytes', 'tuple', 'none'])
def test_safe(value, expected):
    assert safe(value) == expected


def test_safe_leaves_nothing_that_breaks_a_line():
    text = safe(''.join(CONTROLS) + 'x')
    assert text.isprintable() and text.endswith('x')
    # Distinct inputs stay distinct: a literal "\x0a" typed by a client is
    # not confused with a line feed.
    assert safe('\\x0a') != safe('\n')


def test_format_peer():
    assert format_peer(('192.0.2.1', 25)) == '192.0.2.1:25'
    assert format_peer(('2001:db8::1', 25, 0, 0)) == '[2001:db8::1]:25'
    assert format_peer('/run/smtp\n.sock') == '/run/smtp\\x0a.sock'
    assert format_peer(('fe80::2%\nFAKE', 1)) == '[fe80::2%\\x0aFAKE]:1'


class ProxiedLimited(ProxyProtocolServerMixin, LimitedServer):
    process_message = RecordingServer.process_message

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []


def test_hostile_session_logs_one_line_per_record(live_server, caplog):
    caplog.set_level(logging.DEBUG)
    server = live_server(ProxiedLimited, max_errors=None)
    server.server.reply = '550 refused <a\x1b[2J\rFAKE@x>'
    hostile = [
        b'PROXY TCP4 192.0.2.7 198.51.100.1 1234 25\r\n',
        b'EHLO evil\x0bhost\x1b[31m\xc2\x85\r\n',
        b'MAIL FROM:<a\nFAKE: line@b>\r\n',
        b'MAIL FROM:<x\x1b]0;t\x07@b>\r\n',
        b'RSET\r\n', b'MAIL FROM:<ok@b>\r\n',
        b'RCPT TO:<r\xe2\x80\xa8@b>\r\n', b'RCPT TO:<ok@b>\r\n',
        b'DATA\r\n', b'Subject: \x1b\r\n\r\nbody\r\n.\r\n', b'QUIT\r\n',
    ]
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        sock.sendall(b''.join(hostile))
        replies = read_to_eof(sock)
    server.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("reply='550 refused" in m for m in messages), (messages, replies)
    for message in messages:
        assert message.isprintable(), repr(message)


_MESSAGE_LINE = re.compile(
    r"^message from 127\.0\.0\.1:\d+: id=([0-9A-F]{12}) from=<(.*)> "
    r"size=(\d+) recipients=(\d+) reply='(.*)'$")


class Limited(LimitedServer):
    process_message = RecordingServer.process_message
    reply = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []


def test_message_line_names_id_sender_recipients_and_size(live_server, caplog):
    caplog.set_level(logging.INFO, logger='smtpd_compat')
    server = live_server(Limited)
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        recv_reply(sock)
        for sender, body in ((b'"a\x1b[2J"@b', b'x'), (b'', b'12345')):
            for line in (b'EHLO c', b'MAIL FROM:<' + sender + b'>',
                         b'RCPT TO:<r1@b>', b'RCPT TO:<r2@b>', b'DATA'):
                sock.sendall(line + b'\r\n')
                recv_reply(sock)
            sock.sendall(body + b'\r\n.\r\n')
            assert recv_reply(sock) == b'250 OK\r\n'
            sock.sendall(b'RSET\r\n')
            recv_reply(sock)
    server.stop()
    lines = [m.groups() for m in (_MESSAGE_LINE.match(r.getMessage())
                                  for r in caplog.records) if m]
    assert [line[1:] for line in lines] == [
        ('"a\\x1b[2J"@b', '1', '2', '250 OK'),
        ('', '5', '2', '250 OK')]
    # A new id for every message.
    assert lines[0][0] != lines[1][0]


class Text(str):
    """A str subclass: safe() escapes it the long way."""


@pytest.mark.parametrize('value', [chr(c) + 'x' for c in range(0x80)] + [
    '', 'a b', Text('sub\nclass'), Text('plain')],
    ids=['ascii-%02x' % c for c in range(0x80)] + [
        'empty', 'space', 'subclass-control', 'subclass-plain'])
def test_safe_fast_path_agrees_with_the_escape(value):
    # Printable ASCII without a backslash is returned as it is; every other
    # string gets the same escapes as before.
    assert safe(value) == logfmt._UNSAFE.sub(logfmt._escape, str(value))
    assert type(safe(value)) is str


def in_forked_child(work):
    """(pid, text): ``work()``'s text, returned in a forked child."""
    if not hasattr(os, 'fork'):
        pytest.skip('needs os.fork()')
    read, write = os.pipe()
    with warnings.catch_warnings():
        # (3.12+ warns about fork() while other tests' servers run threads;
        # the child only does ``work`` and writes its text.)
        warnings.simplefilter('ignore', DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.write(write, work().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return pid, text


def test_message_ids_are_new_in_a_forked_child():
    first = logging_._message_id()      # the batch is drawn now
    _, child = in_forked_child(logging_._message_id)
    ours = [logging_._message_id() for _ in range(200)]
    assert re.fullmatch('[0-9A-F]{12}', child)
    # The child drew a batch of its own, not the parent's next id.
    assert child not in ours
    assert len(set(ours + [first])) == 201


# -- log_info: the command line's handler the short way (issue 20) ------------

class _Stream:
    """A stream that notes, for each line, whether the stdlib's logging
    wrote it (StreamHandler.emit) or log_info itself."""

    def __init__(self):
        self.lines = []
        self.flushes = 0

    def write(self, text):
        caller = sys._getframe(1).f_code.co_filename
        self.lines.append((text, 'stdlib' if caller == logging.__file__ else
                           os.path.basename(caller)))

    def flush(self):
        self.flushes += 1


@pytest.fixture
def cli_log():
    """The command line's handler (logfmt.stream_handler) on the
    package's logger, which alone gets its lines (see _isolate); the clock
    stands still.  Restored after."""
    package = logging.getLogger('smtpd_compat')
    saved = (package.handlers[:], package.level, package.propagate,
             logfmt._own_handler)
    stream = _Stream()
    package.handlers[:] = [logfmt.stream_handler(stream)]
    package.setLevel(logging.INFO)
    package.propagate = False
    ns = 1_700_000_000_123_456_789
    with mock.patch('time.time', return_value=ns / 1e9), \
            mock.patch('time.time_ns', return_value=ns):
        yield stream
    package.handlers[:], package.level, package.propagate, \
        logfmt._own_handler = saved


LINE = ("message from %s: id=%s from=<%s> size=%d recipients=%d reply='%s'",
        '192.0.2.1:25', '5E0C3A9F17B2', 'a@b', 12, 1, '250 OK')


def _isolate():
    # pytest adds its capture handler to the root logger and, once a test
    # runs, to every logger that does not propagate: taken off again here.
    package = logging.getLogger('smtpd_compat')
    package.handlers[:] = [logfmt._own_handler]


def _both_ways(stream):
    """The line written by log_info and by logger.info."""
    _isolate()
    logfmt.log_info(logging_.logger, *LINE)
    logging_.logger.info(*LINE)
    return stream.lines


def test_log_info_writes_the_stdlib_line_itself(cli_log):
    (fast, by_fast), (slow, by_slow) = _both_ways(cli_log)
    assert (by_fast, by_slow) == ('logfmt.py', 'stdlib')
    assert fast == slow
    assert re.fullmatch(
        r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,123 smtpd_compat\.logging_\[%d\] INFO '
        r"message from 192\.0\.2\.1:25: id=5E0C3A9F17B2 from=<a@b> size=12 "
        r"recipients=1 reply='250 OK'\n" % os.getpid(), fast)
    assert cli_log.flushes == 2     # each line flushed, as emit() does


def test_log_info_names_the_process_as_logging_does(cli_log):
    # The id is kept, not asked of the kernel for every line: a patched
    # os.getpid is still asked, as LogRecord asks it.
    with mock.patch('os.getpid', return_value=4242):
        (fast, _), (slow, _) = _both_ways(cli_log)
    assert '[4242] INFO' in fast and fast == slow


def test_log_info_names_a_forked_child(cli_log):
    _isolate()

    def line():
        logfmt.log_info(logging_.logger, *LINE)
        return cli_log.lines[-1][0]
    pid, child = in_forked_child(line)
    assert '[%d] INFO' % pid in child
    logfmt.log_info(logging_.logger, *LINE)
    assert '[%d] INFO' % os.getpid() in cli_log.lines[-1][0]


def test_log_info_follows_what_logging_reads_at_call_time(cli_log):
    # Not patches of the machinery: the converter, the level's name and
    # the handlers' terminator are read as the stdlib reads them.
    with mock.patch.object(logging.Formatter, 'converter', time.gmtime), \
            mock.patch.object(logging.StreamHandler, 'terminator', '\r\n'), \
            mock.patch.dict('logging._levelToName', {logging.INFO: 'NOTE'}):
        (fast, by_fast), (slow, by_slow) = _both_ways(cli_log)
    assert (by_fast, by_slow) == ('logfmt.py', 'stdlib')
    assert fast == slow and ' NOTE ' in fast and fast.endswith('\r\n')


def _patch_logger_method(stack, seen):
    stack.enter_context(mock.patch.object(
        logging.Logger, 'makeRecord', autospec=True,
        side_effect=lambda *a, **k: seen.append('makeRecord')
        or _MAKE_RECORD(*a, **k)))


_MAKE_RECORD = logging.Logger.makeRecord


def _patch_instance(stack, seen):
    handle = logging_.logger.handle
    stack.enter_context(mock.patch.object(
        logging_.logger, 'handle',
        side_effect=lambda record: seen.append('handle') or handle(record)))


def _handler_filter(stack, seen):
    handler = logging.getLogger('smtpd_compat').handlers[0]
    seen_filter = lambda record: seen.append('filter') or True  # noqa: E731
    handler.addFilter(seen_filter)
    stack.callback(handler.removeFilter, seen_filter)


def _logger_filter(stack, seen):
    seen_filter = lambda record: seen.append('filter') or True  # noqa: E731
    logging_.logger.addFilter(seen_filter)
    stack.callback(logging_.logger.removeFilter, seen_filter)


def _root_handler(stack, seen):
    class Seen(logging.Handler):
        def emit(self, record):
            seen.append('emit')
    package = logging.getLogger('smtpd_compat')
    package.propagate = True
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [Seen()]
    stack.callback(root.handlers.__setitem__, slice(None), saved)


def _record_factory(stack, seen):
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(
        lambda *a, **k: seen.append('factory') or factory(*a, **k))
    stack.callback(logging.setLogRecordFactory, factory)


def _emit_patched(stack, seen):
    emit = logging.StreamHandler.emit
    stack.enter_context(mock.patch.object(
        logging.StreamHandler, 'emit', autospec=True,
        side_effect=lambda self, record: seen.append('emit') or emit(self, record)))


def _own_format(stack, seen):
    handler = logging.getLogger('smtpd_compat').handlers[0]
    formatter = handler.formatter

    class Seen(logging.Formatter):
        def format(self, record):
            seen.append('format')
            return super().format(record)
    handler.setFormatter(Seen(logfmt.LINE_FORMAT))
    stack.callback(handler.setFormatter, formatter)


@pytest.mark.parametrize('change', [
    _patch_logger_method, _patch_instance, _handler_filter, _logger_filter,
    _root_handler, _record_factory, _emit_patched, _own_format,
], ids=['Logger.makeRecord', 'logger.handle', 'handler-filter', 'logger-filter',
        'root-handler', 'record-factory', 'StreamHandler.emit', 'formatter'])
def test_log_info_gives_way_to_any_change_of_logging(cli_log, change):
    seen = []
    _isolate()
    with contextlib.ExitStack() as stack:
        change(stack, seen)
        logfmt.log_info(logging_.logger, *LINE)
        assert seen, 'the change saw no call'
        count = len(seen)
        logging_.logger.info(*LINE)
        assert len(seen) == 2 * count       # the same calls both ways
    if change is not _root_handler:
        (fast, by_fast), (slow, by_slow) = cli_log.lines
        assert (by_fast, by_slow) == ('stdlib', 'stdlib') and fast == slow


def test_command_line_log_lines_come_the_short_way(cli_log):
    # The session log's lines of a live session: the connect, message and
    # disconnect lines all go to the command line's handler directly.
    from smtpd_compat.logging_ import SessionLogServerMixin

    class Logged(SessionLogServerMixin, RecordingServer):
        pass

    _isolate()
    with mock.patch('time.time', time.time), mock.patch('time.time_ns', time.time_ns):
        server = start_server(Logged, ('127.0.0.1', 9))
        try:
            with smtplib.SMTP(*server.address, timeout=5) as client:
                client.sendmail('a@b', ['c@d'], b'x')
        finally:
            server.stop()
    texts = [(text.split(' INFO ', 1)[1], by) for text, by in cli_log.lines]
    assert [t.split(' ', 1)[0] for t, _ in texts] == ['connect', 'message', 'disconnect']
    assert {by for _, by in texts} == {'logfmt.py'}


@pytest.mark.skipif(not hasattr(time, 'tzset'), reason='time.tzset() is POSIX only')
def test_log_info_sees_a_new_time_zone_within_the_second(cli_log, monkeypatch):
    # log_info keeps the date and time of the last second it wrote; a time
    # zone set in that very second shows at once, as in the stdlib's lines.
    try:
        lines = []
        for zone in ('UTC0', 'EST+05'):
            monkeypatch.setenv('TZ', zone)
            time.tzset()
            cli_log.lines.clear()
            (fast, by_fast), (slow, by_slow) = _both_ways(cli_log)
            assert (by_fast, by_slow) == ('logfmt.py', 'stdlib')
            assert fast == slow
            lines.append(fast)
        assert lines[0][11:13] == '22' and lines[1][11:13] == '17'
    finally:
        monkeypatch.undo()
        time.tzset()


def test_log_info_reports_a_line_that_cannot_be_formatted_as_logging_does(cli_log):
    _isolate()
    with mock.patch.object(logging.StreamHandler, 'handleError', autospec=True) as error:
        logfmt.log_info(logging_.logger, 'size=%d', 'not a number')
        logging_.logger.info('size=%d', 'not a number')
    assert cli_log.lines == []
    assert [call.args[1].msg for call in error.call_args_list] == ['size=%d', 'size=%d']


# -- lines held while the loop handles a wake-up (issue 20, W6) --------------

def _slow_line(stream, *line):
    """What logger.info writes for ``line`` (taken off the stream again)."""
    logging_.logger.info(*line)
    return stream.lines.pop()[0]


OTHER = ("connect from %s", '192.0.2.9:2525')


def test_lines_held_in_a_wake_up_go_out_together_when_it_ends(cli_log):
    _isolate()
    holder = logfmt.hold_lines()
    try:
        logfmt.log_info(logging_.logger, *LINE)
        logfmt.log_info(logging_.logger, *OTHER)
        assert cli_log.lines == [] and cli_log.flushes == 0
    finally:
        logfmt.release_lines(holder)
    expected = _slow_line(cli_log, *LINE) + _slow_line(cli_log, *OTHER)
    # One write and one flush for both: the same text logging writes.
    assert cli_log.lines == [(expected, 'logfmt.py')]
    assert cli_log.flushes == 3


def test_a_held_line_keeps_the_time_it_was_logged_at(cli_log):
    _isolate()
    holder = logfmt.hold_lines()
    try:
        logfmt.log_info(logging_.logger, *LINE)      # at ...,123
        later = 1_700_000_001_456_000_000
        with mock.patch('time.time', return_value=later / 1e9), \
                mock.patch('time.time_ns', return_value=later):
            logfmt.release_lines(holder)
            holder = None
    finally:
        if holder is not None:
            logfmt.release_lines(holder)
    expected = _slow_line(cli_log, *LINE)
    assert cli_log.lines == [(expected, 'logfmt.py')] and ',123 ' in expected


def test_every_other_way_to_the_handler_writes_the_held_lines_first(cli_log):
    # A record of the stdlib's path, a line of another thread and the
    # handler's flush() (logging.shutdown() at exit): the stream gets the
    # lines in the order they were logged.
    _isolate()
    handler = logfmt._own_handler

    def words():
        return [line.split(' INFO ')[-1].split(' WARNING ')[-1].split(' ')[0]
                for text, _ in cli_log.lines for line in text.splitlines()]
    holder = logfmt.hold_lines()
    try:
        logfmt.log_info(logging_.logger, *LINE)
        logging_.logger.warning('warned')
        assert words() == ['message', 'warned']
        logfmt.log_info(logging_.logger, *LINE)
        thread = threading.Thread(target=logfmt.log_info,
                                  args=(logging_.logger,) + OTHER)
        thread.start()
        thread.join()
        assert words() == ['message', 'warned', 'message', 'connect']
        logfmt.log_info(logging_.logger, *LINE)
        handler.flush()
        assert words() == ['message', 'warned', 'message', 'connect', 'message']
    finally:
        logfmt.release_lines(holder)
    assert len(words()) == 5        # nothing was left to write


@contextlib.contextmanager
def _holding():
    """Lines held as in a wake-up of the loop; the filters a test adds to
    the session log's logger are taken off again."""
    holder = logfmt.hold_lines()
    try:
        yield
    finally:
        try:
            logfmt.release_lines(holder)
        finally:
            logging_.logger.filters[:] = []


def _seen_by_a_filter():
    seen = []
    logging_.logger.addFilter(lambda record: seen.append(record.msg) or True)
    return seen


def test_a_held_line_sees_a_change_of_logging_made_before_it_is_written(cli_log):
    # Whether a held line may take the short way is looked at when it is
    # written: a filter added meanwhile sees it, as a record.
    _isolate()
    with _holding():
        logfmt.log_info(logging_.logger, *LINE)
        seen = _seen_by_a_filter()
    assert seen == [LINE[0]]
    assert [by for _, by in cli_log.lines] == ['stdlib']


def test_a_line_that_may_not_take_the_short_way_is_not_held(cli_log):
    # A handler (pytest's caplog, say) or a filter up the chain: the line
    # is the stdlib's record at once, after the lines held before it, so a
    # test that reads its record right after the reply finds it.
    _isolate()
    with _holding():
        logfmt.log_info(logging_.logger, *OTHER)
        seen = _seen_by_a_filter()
        logfmt.hold_lines()     # a new wake-up: asked again
        logfmt.log_info(logging_.logger, *LINE)
        # (The line held before it is asked again as it is written first:
        # the filter sees it too.)
        assert seen == [OTHER[0], LINE[0]]
        assert [by for _, by in cli_log.lines] == ['stdlib', 'stdlib']
        assert 'connect from' in cli_log.lines[0][0]
    assert len(cli_log.lines) == 2


def test_a_held_line_that_cannot_be_formatted_is_reported_alone(cli_log):
    _isolate()
    with mock.patch.object(logging.StreamHandler, 'handleError', autospec=True) as error:
        holder = logfmt.hold_lines()
        try:
            logfmt.log_info(logging_.logger, *LINE)
            logfmt.log_info(logging_.logger, 'size=%d', 'not a number')
            logfmt.log_info(logging_.logger, *OTHER)
        finally:
            logfmt.release_lines(holder)
    assert [call.args[1].msg for call in error.call_args_list] == ['size=%d']
    texts = [text for text, _ in cli_log.lines]
    assert len(texts) == 2 and 'message from' in texts[0] and 'connect from' in texts[1]


def test_loops_on_several_threads_hold_lines_each_for_itself(cli_log):
    # Two loops (two servers of one process) whose wake-ups overlap, the
    # first ending first: afterwards neither thread's lines are held.
    _isolate()
    steps = {name: threading.Event() for name in ('a', 'b', 'a done', 'b done')}
    late = {}

    def wake_up(start, started, end, ended):
        # One wake-up of a loop's thread, logging a line: it begins once
        # ``start`` is set (None: at once) and ends once ``end`` is.
        if start:
            steps[start].wait(5)
        holding = logfmt.hold_lines()
        logfmt.log_info(logging_.logger, *LINE)
        steps[started].set()
        steps[end].wait(5)
        logfmt.release_lines(holding)
        steps[ended].set()

    def first():
        wake_up(None, 'a', 'b', 'a done')
        steps['b done'].wait(5)
        before = len(cli_log.lines)
        logfmt.log_info(logging_.logger, *OTHER)     # not in a wake-up now
        late['written'] = len(cli_log.lines) - before

    def second():
        wake_up('a', 'b', 'a done', 'b done')
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert late == {'written': 1}
    assert not logfmt._holding and not logfmt._held
    assert ''.join(text for text, _ in cli_log.lines).count('\n') == 3


def test_a_forked_child_holds_none_of_its_parents_lines(cli_log):
    _isolate()
    holder = logfmt.hold_lines()
    try:
        logfmt.log_info(logging_.logger, *LINE)
        _, child = in_forked_child(lambda: '%d %d' % (len(logfmt._held), len(logfmt._holding)))
        assert len(logfmt._held) == 1
    finally:
        logfmt.release_lines(holder)
    assert child == '0 0'
    assert len(cli_log.lines) == 1


def test_the_loop_writes_a_wake_ups_lines_when_it_ends(cli_log):
    # Lines logged by a timer callback inside smtpd_compat.loop's loop: held
    # while it runs, written together right after it.
    from smtpd_compat import loop as loopmod
    _isolate()
    during = []
    socket_map = {}
    reader, writer = socket.socketpair()
    try:
        class Idle(smtpd_compat.asyncore.dispatcher):
            def readable(self):
                return False

            def writable(self):
                return False
        idle = Idle(reader, map=socket_map)

        def log_two():
            logfmt.log_info(logging_.logger, *LINE)
            logfmt.log_info(logging_.logger, *OTHER)
            during.append(list(cli_log.lines))
            idle.close()
        loopmod.services(socket_map).call_later(0, log_two)
        loopmod.loop(timeout=1, map=socket_map)
    finally:
        reader.close()
        writer.close()
    assert during == [[]]
    assert len(cli_log.lines) == 1 and cli_log.lines[0][1] == 'logfmt.py'
    assert cli_log.lines[0][0].count('\n') == 2

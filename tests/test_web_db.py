"""The web inbox kept in SQLite (``--web-db FILE``, keyword ``web_db``;
issue 22, item 7): the mail survives a restart and a SIGKILL right after
the 250, with the same bounds; database work never runs on the SMTP loop
(the reply waits for it in a worker thread); without the option the inbox
stays in memory.
"""
import json
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.request

import pytest

from smtpd_compat.controller import Controller
from smtpd_compat.threads import ThreadedServerMixin
from smtpd_compat.web import Inbox, WebInboxServer, WebInboxServerMixin
from smtpd_compat.web.db import Database

from conftest import free_port, recv_reply, reserved_port, wait_for_port
from test_web import Sink, make_message

DID_NOT_HANG = 30


def rows(path):
    """The messages in the file, as (id, subject line) oldest first, read
    by another connection."""
    conn = sqlite3.connect(path)
    try:
        return [(id, raw.split(b'\n', 1)[0]) for id, raw in
                conn.execute('SELECT id, raw FROM messages ORDER BY seq')]
    finally:
        conn.close()


def send(port, subject, host='127.0.0.1'):
    with smtplib.SMTP(host, port, timeout=DID_NOT_HANG) as client:
        client.sendmail('a@example.org', ['b@example.org'],
                        'Subject: %s\r\n\r\nbody\r\n' % subject)


# ---------------------------------------------------------------------------
# the command line: SIGKILL after the 250, restart

class Process:
    """``python -m smtpd_compat -n -c WebInboxServer --web ... --web-db``."""

    def __init__(self, env, path):
        # (Reserved until both listen: see helpers.reserved_port.)
        with reserved_port() as self.smtp, reserved_port() as self.web:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'smtpd_compat', '-n', '-c', 'WebInboxServer',
                 '--web', '127.0.0.1:%d' % self.web, '--web-db', str(path),
                 '127.0.0.1:%d' % self.smtp],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            wait_for_port(self.proc, self.smtp)
            wait_for_port(self.proc, self.web)

    def get(self, path):
        with urllib.request.urlopen('http://127.0.0.1:%d%s' % (self.web, path),
                                    timeout=DID_NOT_HANG) as r:
            return json.load(r)

    def call(self, method, path, body):
        req = urllib.request.Request('http://127.0.0.1:%d%s' % (self.web, path),
                                     data=json.dumps(body).encode(), method=method,
                                     headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=DID_NOT_HANG) as r:
            return r.status

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=DID_NOT_HANG)


def test_sigkill_right_after_the_250_then_restart(python_path_env, tmp_path):
    path = tmp_path / 'inbox.db'
    first = Process(python_path_env, path)
    try:
        send(first.smtp, 'read later')
        send(first.smtp, 'deleted')
        ids = {m['Subject']: m['ID'] for m in first.get('/api/v1/messages')['messages']}
        assert first.call('PUT', '/api/v1/messages',
                          {'IDs': [ids['read later']], 'Read': True}) == 200
        assert first.call('DELETE', '/api/v1/messages', {'IDs': [ids['deleted']]}) == 200
        send(first.smtp, 'survivor')
    finally:
        # At once after the 250 (and the 200s): nothing flushed at exit.
        first.kill()
    second = Process(python_path_env, path)
    try:
        listed = second.get('/api/v1/messages')
        assert [(m['Subject'], m['Read']) for m in listed['messages']] == [
            ('survivor', False), ('read later', True)]
        assert listed['messages'][1]['ID'] == ids['read later']
        detail = second.get('/api/v1/message/%s' % listed['messages'][0]['ID'])
        assert detail['Text'] == 'body'
        send(second.smtp, 'after the restart')
        assert second.get('/api/v1/messages')['total'] == 3
    finally:
        second.kill()


@pytest.mark.parametrize('args, message', [
    (['--web-db', 'x.db'], '--web-db needs --web'),
    (['--web', '0', '--web-db', '/nonexistent/dir/x.db'], 'cannot open the inbox database'),
    (['--web', '0', '--web-db', 'garbage.db'], 'is not an inbox database'),
])
def test_cli_web_db_errors(python_path_env, tmp_path, args, message):
    (tmp_path / 'garbage.db').write_bytes(b'not a database' * 100)
    proc = subprocess.run(
        [sys.executable, '-m', 'smtpd_compat', '-n', '-c', 'DebuggingServer']
        + args + ['127.0.0.1:%d' % free_port()],
        env=python_path_env, cwd=str(tmp_path), capture_output=True, text=True,
        timeout=DID_NOT_HANG)
    assert proc.returncode == 1
    assert message in proc.stderr and 'Traceback' not in proc.stderr


# A Python built without SQLite: only --web-db needs it.
WITHOUT_SQLITE = r"""
import smtplib, sys
sys.modules['sqlite3'] = None           # import sqlite3: ImportError
from smtpd_compat.controller import Controller
from smtpd_compat.web import Inbox
with Controller(web=('127.0.0.1', 0)) as c:
    with smtplib.SMTP(c.hostname, c.port, timeout=30) as client:
        client.sendmail('a@example.org', ['b@example.org'], 'Subject: no sqlite\r\n\r\nx\r\n')
    assert c.messages[0]['Subject'] == 'no sqlite'
try:
    Inbox(path='inbox.db')
except OSError as e:
    print(e)
if len(sys.argv) > 1:
    import runpy
    sys.argv[:] = sys.argv[1:]
    runpy.run_module('smtpd_compat', run_name='__main__', alter_sys=True)
"""


def test_without_sqlite3_only_the_database_is_missing(python_path_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, '-c', WITHOUT_SQLITE, 'smtpd_compat', '-n', '-c', 'DebuggingServer',
         '--web', '0', '--web-db', 'x.db', '127.0.0.1:%d' % free_port()],
        env=python_path_env, cwd=str(tmp_path), capture_output=True, text=True,
        timeout=DID_NOT_HANG)
    assert proc.stdout == ('cannot open the inbox database inbox.db: this Python has no '
                           'sqlite3 module (it was built without SQLite)\n'), proc.stderr
    assert proc.returncode == 1
    assert 'Invalid --web-db: cannot open the inbox database x.db: this Python has no ' \
        'sqlite3' in proc.stderr and 'Traceback' not in proc.stderr


# ---------------------------------------------------------------------------
# off the loop: the 250 waits for the commit, the loop does not

def test_the_reply_waits_for_the_commit_and_the_loop_does_not(tmp_path):
    path = str(tmp_path / 'inbox.db')
    controller = Controller(WebInboxServer, web=('127.0.0.1', 0), web_db=path).start()
    blocker = sqlite3.connect(path, isolation_level=None)
    replied = threading.Event()
    try:
        send(controller.port, 'before')
        # Another writer holds the file: the inbox's write has to wait.
        blocker.execute('BEGIN EXCLUSIVE')
        sender = threading.Thread(target=lambda: (send(controller.port, 'waited'),
                                                  replied.set()))
        sender.start()
        # Meanwhile the loop answers others at once...
        for _ in range(3):
            with socket.create_connection((controller.hostname, controller.port),
                                          timeout=DID_NOT_HANG) as sock:
                assert recv_reply(sock, DID_NOT_HANG).startswith(b'220')
                sock.sendall(b'NOOP\r\n')
                assert recv_reply(sock, DID_NOT_HANG).startswith(b'250')
        # ...while the message, in the inbox already, has no 250 yet.
        assert not replied.wait(0.5)
        assert controller.server.inbox.newest_first()[0].raw.startswith(b'Subject: waited')
        blocker.execute('ROLLBACK')
        assert replied.wait(DID_NOT_HANG)
        sender.join(DID_NOT_HANG)
        assert [subject for _, subject in rows(path)] == [b'Subject: before',
                                                         b'Subject: waited']
    finally:
        blocker.close()
        controller.stop()


class ThreadedInbox(ThreadedServerMixin, WebInboxServerMixin, Sink):
    pass


def test_with_threads_every_message_is_written_before_its_reply(tmp_path):
    path = str(tmp_path / 'inbox.db')
    controller = Controller(ThreadedInbox, web=('127.0.0.1', 0), web_db=path,
                            process_message_threads=2).start()
    try:
        with smtplib.SMTP(controller.hostname, controller.port,
                          timeout=DID_NOT_HANG) as client:
            for i in range(5):
                client.sendmail('a@example.org', ['b@example.org'],
                                'Subject: t%d\r\n\r\nx\r\n' % i)
                assert rows(path)[-1][1] == b'Subject: t%d' % i
    finally:
        controller.stop()


# ---------------------------------------------------------------------------
# the store with a file

def test_read_back_with_ids_state_and_summaries(tmp_path):
    path = str(tmp_path / 'inbox.db')
    inbox = Inbox(path=path)
    kept = [inbox.add(make_message(subject='m%d' % i).as_bytes(), 'a@example.org',
                      ['b@example.org'], ('127.0.0.1', 4000 + i)) for i in range(3)]
    inbox.set_read([kept[1].id], True)
    inbox.set_tags([kept[2].id], ['Urgent', 'later'])
    inbox.delete([kept[0].id])
    assert inbox.flush(DID_NOT_HANG, ingested=True)
    inbox.close()
    again = Inbox(path=path)
    try:
        messages = again.newest_first()
        assert [m.id for m in messages] == [kept[2].id, kept[1].id]
        assert [m.read for m in messages] == [False, True]
        assert [m.tags for m in messages] == [['later', 'Urgent'], []]
        assert messages[0].peer == ('127.0.0.1', 4002)
        assert messages[0].raw == kept[2].raw
        # The summaries come back with them: nothing to parse again.
        assert all(m._summary is not None for m in messages)
        assert again.summary(messages[0])['Subject'] == 'm2'
    finally:
        again.close()


def test_the_bounds_apply_to_what_is_read_back(tmp_path):
    path = str(tmp_path / 'inbox.db')
    inbox = Inbox(path=path)
    for i in range(5):
        inbox.add(b'Subject: s%d\n\nx\n' % i, 'a@x', ['b@x'])
    inbox.close()
    smaller = Inbox(max_messages=2, path=path)
    try:
        assert [m.raw[:11] for m in smaller.newest_first()] == [b'Subject: s4',
                                                                 b'Subject: s3']
        assert smaller.flush(DID_NOT_HANG)
        assert [subject for _, subject in rows(path)] == [b'Subject: s3', b'Subject: s4']
    finally:
        smaller.close()


def test_a_message_over_the_byte_cap_is_not_written(tmp_path):
    path = str(tmp_path / 'inbox.db')
    inbox = Inbox(max_bytes=1000, path=path)
    try:
        assert inbox.add(b'Subject: big\n\n' + b'x' * 2000) is None
        assert inbox.add(b'Subject: small\n\nx\n') is not None
        assert inbox.flush(DID_NOT_HANG)
        assert [subject for _, subject in rows(path)] == [b'Subject: small']
    finally:
        inbox.close()


def test_clear_empties_the_file(tmp_path):
    path = str(tmp_path / 'inbox.db')
    inbox = Inbox(path=path)
    try:
        for i in range(3):
            inbox.add(b'Subject: %d\n\nx\n' % i)
        inbox.clear()
        assert rows(path) == []
    finally:
        inbox.close()


def test_the_file_is_sqlite_in_wal_mode(tmp_path):
    path = str(tmp_path / 'inbox.db')
    Inbox(path=path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    finally:
        conn.close()


def test_another_applications_database_is_refused(tmp_path):
    path = str(tmp_path / 'other.db')
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE accounts (id INTEGER)')
    conn.close()
    with pytest.raises(ValueError, match='not an inbox database'):
        Inbox(path=path)
    with pytest.raises(ValueError, match='not an inbox database'):
        Database(path)


def test_without_web_db_the_inbox_stays_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    controller = Controller(WebInboxServer, web=('127.0.0.1', 0)).start()
    try:
        send(controller.port, 'memory')
        inbox = controller.server.inbox
        assert not inbox.durable and inbox.database is None
        assert len(inbox) == 1
    finally:
        controller.stop()
    assert list(tmp_path.iterdir()) == []


def test_web_db_is_for_the_inbox_the_server_makes():
    with pytest.raises(ValueError, match='web_db'):
        WebInboxServer(('127.0.0.1', 0), None, map={}, web=('127.0.0.1', 0),
                       inbox=Inbox(), web_db='x.db')

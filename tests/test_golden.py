"""Golden transcripts: CPython 3.11's smtpd, recorded, replayed against
smtpd_compat on every interpreter.

tests/differential compares the two servers live, which only works where
the standard library still has smtpd (3.11 and older).  The same sessions
were recorded from the stdlib into tests/golden/transcripts.json (bytes
written, greeting and replies, process_message arguments, exceptions,
DebuggingServer output; ``python3.11 tests/golden/record.py`` re-records
them), and are replayed here with the same harness and judged by the same
rules (tests/differential/compare.py: identical bytes, except where the
stdlib crashed or went on after 552 -- the documented deviations).  So 3.12
and 3.13 are held to the stdlib's behaviour too.
"""
import json
import os
import socket
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'differential'))

import smtpd_compat  # noqa: E402
from compare import compare  # noqa: E402
from harness import Driver, Result  # noqa: E402
from sessions import CONFIGS  # noqa: E402
from test_differential import _EXPECTED_DEVIATION  # noqa: E402

with open(os.path.join(HERE, 'golden', 'transcripts.json'), encoding='ascii') as _f:
    GOLDEN = json.load(_f)
SESSIONS = {'%s/%s' % (s['kind'], s['name']): s for s in GOLDEN['sessions']}


class RecordedError(Exception):
    """An exception the stdlib's channel raised, as recorded."""


def _error(recorded):
    if recorded['type'] == 'UnicodeDecodeError':
        return UnicodeDecodeError('utf-8', b'', 0, 1, recorded['reason'])
    return RecordedError('%s: %s' % (recorded['type'], recorded['text']))


def _data(tagged):
    return tagged['bytes'].encode('latin-1') if 'bytes' in tagged else tagged['str']


def stdlib_result(recorded):
    """A harness Result holding what the stdlib did."""
    result = Result()
    result.greeting = recorded['greeting'].encode('latin-1')
    result.replies = [r.encode('latin-1') for r in recorded['replies']]
    result.messages = [(mailfrom, rcpttos, _data(data), kwargs)
                       for mailfrom, rcpttos, data, kwargs in recorded['messages']]
    result.errors = [_error(e) for e in recorded['errors']]
    result.closed = recorded['closed']
    result.stdout = recorded['stdout']
    return result


@pytest.fixture(autouse=True)
def pinned_fqdn(monkeypatch):
    # The host name the recording was made with (record.py pins it too).
    monkeypatch.setattr(socket, 'getfqdn', lambda name='': GOLDEN['fqdn'])


def replay(session, writes=None):
    driver = Driver(smtpd_compat, session['server_class'],
                    reply=session['reply'], **CONFIGS[session['config']])
    try:
        return driver.run(writes or [w.encode('latin-1') for w in session['writes']])
    finally:
        driver.close()


def test_recording_is_complete():
    kinds = {}
    for s in GOLDEN['sessions']:
        kinds[s['kind']] = kinds.get(s['kind'], 0) + 1
    assert GOLDEN['recorded_with'].startswith('CPython 3.11.')
    assert kinds['scripted'] >= 60 and kinds['random'] >= 200
    assert kinds['debugging'] == 3 and kinds['reply'] == 2
    # Every scripted session of the live differential table was recorded
    # (re-run record.py after adding one).
    from sessions import SCRIPTED
    recorded = {s['name'] for s in GOLDEN['sessions'] if s['kind'] == 'scripted'}
    assert recorded == set(SCRIPTED), 'run python3.11 tests/golden/record.py'


@pytest.mark.parametrize('key', sorted(k for k in SESSIONS if not k.startswith('random/')))
def test_session(key):
    session = SESSIONS[key]
    theirs = stdlib_result(session['result'])
    mine = replay(session)
    expected = _EXPECTED_DEVIATION.get(session['name'], '')
    if session['name'] == 'process-message-non-ascii':
        # The stdlib raised UnicodeEncodeError in push() and dropped the
        # connection; ours sends the reply with the non-ASCII escaped, and
        # the session goes on.
        expected = 'b/c'
        assert theirs.errors and theirs.closed
        assert mine.replies[4:] == [b'550 D\\xe9sol\\xe9\r\n', b'250 OK\r\n']
    elif session['kind'] == 'reply':
        assert mine.replies[4] == session['reply'].encode('ascii') + b'\r\n'
    assert compare(theirs, mine) == expected
    if session['server_class'] == 'DebuggingServer':
        assert 'MESSAGE FOLLOWS' in mine.stdout
        assert mine.stdout == theirs.stdout


def test_random_sessions():
    """The recorded random batch (fixed seed) gives the same bytes from
    smtpd_compat, except where the stdlib crashed (deviations (b), (c)) or
    stayed in DATA after 552 (g)."""
    seen = {}
    for key in sorted(k for k in SESSIONS if k.startswith('random/')):
        session = SESSIONS[key]
        mine = replay(session)
        try:
            kind = compare(stdlib_result(session['result']), mine)
            if kind == 'c-split' and 'whole' in session:
                whole = stdlib_result(session['whole'])
                if not whole.errors:
                    assert b''.join(mine.replies) == b''.join(whole.replies)
                    assert mine.messages == whole.messages
        except AssertionError as e:
            raise AssertionError('%s: %s' % (key, e)) from None
        seen[kind] = seen.get(kind, 0) + 1
    assert seen.get('', 0) > len(seen) and seen.get('', 0) > 100
    assert seen.get('b/c', 0) > 0

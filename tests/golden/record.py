"""Re-record the golden transcripts from CPython's own smtpd (Python 3.11).

    python3.11 tests/golden/record.py

Runs every differential session (tests/differential: the scripted table,
the DebuggingServer sessions, the process_message reply session and the
fixed-seed random batch) against the standard library's ``smtpd`` with the
differential harness, and writes what the stdlib did -- the bytes each step
wrote, the greeting, the reply bytes of each step, the process_message
arguments, the exceptions the channel raised, whether it closed, and
DebuggingServer's stdout -- to ``transcripts.json`` beside this file.
tests/test_golden.py replays them against smtpd_compat on every interpreter,
so Python 3.12 and 3.13, which have no stdlib smtpd, are checked too.

The file holds recorded data only, no code of the standard library.  The
host name in greetings is pinned (``socket.getfqdn`` returns FQDN) so that
the recording does not depend on the machine it was made on.
"""
import json
import os
import random
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
# tests/conftest.py (for CONFIGS) imports the checkout's smtpd_compat.
sys.path[:0] = [os.path.join(TESTS, 'differential'), TESTS, os.path.dirname(TESTS)]

from harness import Driver, stdlib_smtpd  # noqa: E402
from sessions import CONFIGS, SCRIPTED, random_session  # noqa: E402

FQDN = 'golden.example'
PATH = os.path.join(HERE, 'transcripts.json')
FORMAT = 1

# The sessions of tests/differential/test_differential.py that are not in
# sessions.py, written out here so that recording needs no pytest.
DEBUG_SESSIONS = [
    ('default', ['EHLO a', 'MAIL FROM:<a@b> BODY=8BITMIME', 'RCPT TO:<c@d>',
                 'DATA', 'Subject: x\r\nFrom: y\r\n\r\nbody\r\n..dot\r\n.',
                 'MAIL FROM:<e@f>', 'RCPT TO:<g@h>', 'DATA', 'no headers\r\n.']),
    ('decode', ['HELO a', 'MAIL FROM:<a@b>', 'RCPT TO:<c@d>', 'DATA',
                'Subject: \u00fc\r\n\r\nb\u00f6dy\r\n.']),
    ('utf8', ['EHLO a', 'MAIL FROM:<\u00fc@b> SMTPUTF8', 'RCPT TO:<c@d>', 'DATA',
              'Subject: \u00fc\r\n\r\n\u00fc\r\n.']),
]
REPLY_SESSION = [b'HELO a\r\n', b'MAIL FROM:<a@b>\r\n', b'RCPT TO:<c@d>\r\n',
                 b'DATA\r\n', b'x\r\n.\r\n', b'NOOP\r\n']
# process_message's return value as the reply; the non-ASCII one made the
# stdlib raise in push() (documented in docs/deviations.rst).
REPLIES = [('process-message-reply', '550 No thanks'),
           ('process-message-non-ascii', '550 D\u00e9sol\u00e9')]
RANDOM_SESSIONS = 200
SEED = 20240611


# -- JSON form ---------------------------------------------------------------
# Bytes are stored as latin-1 text (each byte one character, so any byte
# string round-trips); message data, which is bytes or str depending on
# decode_data, is tagged.

def b2j(data):
    return data.decode('latin-1')


def j2b(text):
    return text.encode('latin-1')


def _data(value):
    if isinstance(value, bytes):
        return {'bytes': b2j(value)}
    return {'str': value}


def _error(exc):
    return {'type': type(exc).__name__,
            'reason': getattr(exc, 'reason', None), 'text': str(exc)}


def encode_result(result):
    return {
        'greeting': b2j(result.greeting),
        'replies': [b2j(r) for r in result.replies],
        'messages': [[mailfrom, rcpttos, _data(data), kwargs]
                     for mailfrom, rcpttos, data, kwargs in result.messages],
        'errors': [_error(e) for e in result.errors],
        'closed': result.closed,
        'stdout': result.stdout,
    }


def run(module, config, writes, server_class='SMTPServer', reply=None):
    driver = Driver(module, server_class, reply=reply, **CONFIGS[config])
    try:
        return driver.run(writes)
    finally:
        driver.close()


def session(kind, name, config, writes, module, server_class='SMTPServer',
            reply=None):
    result = run(module, config, writes, server_class, reply)
    entry = {'kind': kind, 'name': name, 'config': config,
             'server_class': server_class, 'reply': reply,
             'writes': [b2j(w) for w in writes], 'result': encode_result(result)}
    error = result.errors[0] if result.errors else None
    if (isinstance(error, UnicodeDecodeError)
            and error.reason == 'unexpected end of data'):
        # A character split across two reads: the stdlib given the same
        # bytes in one write, which ours must then agree with.
        entry['whole'] = encode_result(run(module, config, [b''.join(writes)],
                                           server_class, reply))
    return entry


def record(module):
    sessions = []
    for name in sorted(SCRIPTED):
        config, writes = SCRIPTED[name]
        sessions.append(session('scripted', name, config, writes, module))
    for config, lines in DEBUG_SESSIONS:
        writes = [line.encode('utf-8') + b'\r\n' for line in lines]
        sessions.append(session('debugging', config, config, writes, module,
                                server_class='DebuggingServer'))
    for name, reply in REPLIES:
        sessions.append(session('reply', name, 'default', REPLY_SESSION,
                                module, reply=reply))
    rng = random.Random(SEED)
    for n in range(RANDOM_SESSIONS):
        config, writes = random_session(rng)
        sessions.append(session('random', 'random-%03d' % n, config, writes,
                                module))
    return sessions


def main():
    module = stdlib_smtpd()
    if module is None or sys.version_info[:2] != (3, 11):
        sys.exit('record.py needs Python 3.11, the last with the stdlib smtpd '
                 '(this is %d.%d)' % sys.version_info[:2])
    socket.getfqdn = lambda name='': FQDN
    sessions = record(module)
    data = {'format': FORMAT, 'recorded_with': 'CPython %d.%d.%d smtpd'
            % sys.version_info[:3], 'fqdn': FQDN, 'seed': SEED,
            'sessions': sessions}
    with open(PATH, 'w', encoding='ascii', newline='\n') as f:
        json.dump(data, f, indent=1, sort_keys=True, ensure_ascii=True)
        f.write('\n')
    print('%d sessions written to %s' % (len(sessions), PATH))


if __name__ == '__main__':
    main()

"""A discarding SMTP server for the benchmarks:
``sink.py IMPL [--sleep SECONDS] [--threads N] PORTFILE``.

IMPL is ``ours`` (smtpd_compat under smtpd_compat.loop.loop), ``ours-asyncore``
(smtpd_compat under plain asyncore.loop), ``ours-nagle`` (ours without
TCP_NODELAY, to measure what it buys) or ``stdlib`` (CPython's smtpd,
Python <= 3.11).  Binds 127.0.0.1 port 0, writes the port to PORTFILE and
serves until killed.  process_message keeps nothing, so what is measured is
the protocol handling; with ``--sleep`` it first sleeps (a handler that
waits on a database or an HTTP call), and ``--threads N`` runs it in N
worker threads (smtpd_compat.threads, what ``--threads`` does on the
command line).
"""
import os
import sys
import time
import warnings

impl, portfile = sys.argv[1], sys.argv[-1]
options = dict(zip(sys.argv[2:-1:2], sys.argv[3:-1:2]))
sleep = float(options.get('--sleep', 0))
threads = int(options.get('--threads', 0))
if impl == 'stdlib':
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import asyncore
        import smtpd
else:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
    import smtpd_compat as smtpd
    asyncore = smtpd.asyncore
    if impl == 'ours-nagle':
        smtpd._TCP_NODELAY = None


class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if sleep:
            time.sleep(sleep)
        return None


if threads:
    from smtpd_compat.threads import ThreadedServerMixin
    server = type('Sink', (ThreadedServerMixin, Sink), {})(
        ('127.0.0.1', 0), None, process_message_threads=threads)
else:
    server = Sink(('127.0.0.1', 0), None)
with open(portfile + '.tmp', 'w') as f:
    f.write(str(server.socket.getsockname()[1]))
os.replace(portfile + '.tmp', portfile)
try:
    if impl in ('ours', 'ours-nagle'):
        from smtpd_compat.loop import loop, raise_fd_limit
        raise_fd_limit()
        loop()
    else:
        asyncore.loop()
except KeyboardInterrupt:
    pass

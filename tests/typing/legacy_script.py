"""A script written for the standard library's smtpd (Python 3.11 and
older), unchanged: on 3.12+ ``import smtpd`` is smtpd_compat.  The typing
tests (tests/test_typing.py) check it with ``mypy --strict``; it is never
run by the test suite.
"""
import asyncore
import io
import socket
import sys
from typing import Any, Dict, List, Optional, Tuple, Union

import smtpd


class PrintingServer(smtpd.SMTPServer):
    """The usual subclass: override process_message."""

    def process_message(self, peer: Tuple[str, int], mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        if not rcpttos:
            return '554 No valid recipients'
        size = len(data)
        print('from %s (%s:%d), %d bytes for %s' % (
            mailfrom, peer[0], peer[1], size, ', '.join(rcpttos)))
        options: List[str] = kwargs.get('mail_options', [])
        if 'BODY=8BITMIME' in options:
            print('8-bit body')
        return None


class NoopChannel(smtpd.SMTPChannel):
    """A channel that answers one verb differently."""

    def smtp_NOOP(self, arg: Optional[str]) -> None:
        self.push('250 Still here')

    def smtp_XSTAT(self, arg: Optional[str]) -> None:
        # A verb of its own: the channel dispatches on "smtp_" + VERB.
        self.push('250 %d recipients' % len(self.rcpttos))


class NoopServer(PrintingServer):
    channel_class = NoopChannel


class Recorder(smtpd.DebuggingServer):
    """DebuggingServer that also remembers what it printed."""

    seen: Dict[str, int] = {}

    def process_message(self, peer: Tuple[str, int], mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        self.seen[mailfrom] = self.seen.get(mailfrom, 0) + 1
        return super().process_message(peer, mailfrom, rcpttos, data,
                                       **kwargs)


# -- The canonical scripts, as the stdlib's documentation and countless
# programs wrote them: no relay address (None), no size limit (None).

class CustomSMTPServer(smtpd.SMTPServer):
    def process_message(self, peer: Tuple[str, int], mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        print('Receiving message from:', peer)
        print('Message addressed from:', mailfrom)
        print('Message addressed to  :', rcpttos)
        print('Message length        :', len(data))
        return None


class MailSink(smtpd.DebuggingServer):
    """A DebuggingServer subclass that builds itself, as test suites did."""

    def __init__(self, port: int) -> None:
        smtpd.DebuggingServer.__init__(self, ('localhost', port), None)
        self.count = 0

    def process_message(self, peer: Tuple[str, int], mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        self.count += 1
        return super().process_message(peer, mailfrom, rcpttos, data,
                                       **kwargs)


class RecordingChannel(smtpd.SMTPChannel):
    """A channel subclass that records its replies (unit tests)."""

    replies: List[str] = []

    # The stdlib's push takes the reply as str where asynchat's takes bytes:
    # mypy checks an override against asynchat too, so an override says so,
    # as it did with typeshed's stub.
    def push(self, msg: str) -> None:  # type: ignore[override]
        self.replies.append(msg)
        super().push(msg)

    def smtp_EXPN(self, arg: Optional[str]) -> None:
        self.push('252 %s' % (arg or ''))


class RecordingServer(smtpd.SMTPServer):
    channel_class = RecordingChannel


def canonical(options: smtpd.Options) -> None:
    servers: List[smtpd.SMTPServer] = [
        CustomSMTPServer(('localhost', 1025), None),
        MailSink(0),
        smtpd.DebuggingServer(('localhost', 1025), None),
        smtpd.SMTPServer(('127.0.0.1', 0), None, None, {}, decode_data=True),
        smtpd.SMTPServer((b'127.0.0.1', 0), None, data_size_limit=0),
        RecordingServer(('::1', 0), None, enable_SMTPUTF8=True),
        smtpd.PureProxy(('localhost', 8025), ('localhost', 25)),
        # What the stdlib's own command line builds: the size limit is
        # None unless -s was given.
        smtpd.PureProxy((options.localhost, options.localport),
                        (options.remotehost, options.remoteport),
                        options.size_limit,
                        enable_SMTPUTF8=options.enable_SMTPUTF8),
    ]
    sink = servers[1]
    conn, peer = socket.socketpair()
    channel = RecordingChannel(sink, conn, ('127.0.0.1', 5000),
                               sink.data_size_limit)
    channel.push('250 OK')
    print(RecordingChannel.replies, channel.peer, channel.fqdn)
    asyncore.loop(timeout=1, count=1)
    for server in servers:
        server.close()


def main(argv: List[str]) -> None:
    options = smtpd.parseargs(argv)
    if options.size_limit:
        print('size limit', options.size_limit)
    # Debug prints on stderr, or captured in a buffer.
    smtpd.DEBUGSTREAM = sys.stderr
    buffer = io.StringIO()
    smtpd.DEBUGSTREAM = buffer
    print('debugging to', smtpd.DEBUGSTREAM, file=smtpd.DEBUGSTREAM)
    server = NoopServer((options.localhost, options.localport),
                        (options.remotehost, options.remoteport),
                        data_size_limit=options.size_limit or 0,
                        enable_SMTPUTF8=options.enable_SMTPUTF8)
    debugging = smtpd.DebuggingServer(('localhost', 0), ('localhost', 25),
                                      decode_data=True)
    proxy = smtpd.PureProxy(('localhost', 0), ('localhost', 25))
    print(smtpd.__version__, server.data_size_limit, server.channel_class)
    try:
        asyncore.loop(timeout=1.0, count=1)
    finally:
        for dispatcher in (server, debugging, proxy):
            dispatcher.close()
        asyncore.close_all()


if __name__ == '__main__':
    main(sys.argv[1:])

"""A script written for the standard library's smtpd (Python 3.11 and
older), unchanged: on 3.12+ ``import smtpd`` is smtpd_compat.  The typing
tests (tests/test_typing.py) check it with ``mypy --strict``; it is never
run by the test suite.
"""
import asyncore
import io
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

"""A program written against smtpd_compat (any Python 3.8+): the faithful
classes, a few capabilities, the loop and the test Controller.  The typing
tests (tests/test_typing.py) check it with ``mypy --strict``; it is never
run by the test suite.
"""
import ssl
import sys
from typing import Any, Dict, List, Optional, Tuple, Union

import smtpd_compat
from smtpd_compat import loop
from smtpd_compat.auth import FileAuthenticator, SubmissionServer
from smtpd_compat.controller import CapturedMessage, Controller
from smtpd_compat.delivery import MaildirServer, Session
from smtpd_compat.extensions import ESMTPServer, parse_bdat
from smtpd_compat.limits import LimitedServer, LimitsServerMixin
from smtpd_compat.lmtp import LMTPServer
from smtpd_compat.proxy_protocol import parse_proxy_header
from smtpd_compat.session import SessionStateMixin
from smtpd_compat.shutdown import serve_gracefully
from smtpd_compat.tls import TLSServer, server_context
from smtpd_compat.web import WebInboxServer


class Sink(smtpd_compat.SMTPServer):
    def process_message(self, peer: Tuple[str, int], mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        return None if rcpttos else '554 No valid recipients'


class Production(LimitedServer):
    idle_timeout = 60.0

    def process_message(self, peer: Tuple[str, int], mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        return None


class LimitedTLS(LimitsServerMixin, TLSServer):
    pass


class Mailboxes(LMTPServer):
    # LMTP answers per recipient (RFC 2033 section 4.2), so its
    # process_message may return what SMTPServer's may not: mypy checks the
    # override against SMTPServer too, hence the ignore.
    def process_message(  # type: ignore[override]
            self, peer: Tuple[str, int], mailfrom: str, rcpttos: List[str],
            data: Union[bytes, str], **kwargs: Any) -> Dict[str, Optional[str]]:
        return {r: None if r.endswith('@example.com') else '550 No such user'
                for r in rcpttos}


class Archive(MaildirServer):
    # Only mail from authenticated sessions is kept (RFC 3848: ...A).
    def process_message(self, peer: Tuple[str, int], mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        session: Optional[Session] = None,
                        **kwargs: Any) -> Optional[str]:
        if session is None or not session.protocol.endswith('A'):
            return '550 5.7.1 Authenticate first'
        return super().process_message(peer, mailfrom, rcpttos, data,
                                       session=session, **kwargs)


class Submission(SubmissionServer):
    def process_message(self, peer: Tuple[str, int], mailfrom: str,
                        rcpttos: List[str], data: Union[bytes, str],
                        auth_user: Optional[str] = None,
                        **kwargs: Any) -> Optional[str]:
        return None if auth_user else '530 5.7.0 Authentication required'


class Watchful(SessionStateMixin, smtpd_compat.SMTPChannel):
    def smtp_NOOP(self, arg: str) -> None:
        if self.receiving_message():
            return
        self.set_deadline(30.0, 'idle')
        super().smtp_NOOP(arg)


def check_mail() -> List[CapturedMessage]:
    with Controller(hostname='127.0.0.1', reply=None) as controller:
        host, port = controller.address
        print(host, port, controller.messages)
        messages = controller.wait_for(1, timeout=1.0)
    return messages


def main(argv: List[str]) -> None:
    smtpd_compat.DEBUGSTREAM = sys.stderr
    context: ssl.SSLContext = server_context(argv[0], None)
    servers: List[smtpd_compat.SMTPServer] = [
        Sink(('127.0.0.1', 0), ('localhost', 25), decode_data=True),
        Production(('127.0.0.1', 0), ('localhost', 25), max_recipients=10),
        LimitedTLS(('127.0.0.1', 0), ('localhost', 25), tls_context=context,
                   idle_timeout=None),
        Mailboxes(('127.0.0.1', 0), ('localhost', 25), unix_socket='/tmp/lmtp'),
        Submission(('127.0.0.1', 0), ('localhost', 25), tls_context=context,
                   authenticator=FileAuthenticator('/etc/smtpd/users')),
        ESMTPServer(('127.0.0.1', 0), ('localhost', 25),
                    esmtp_extensions='CHUNKING,DSN'),
        Archive(('127.0.0.1', 0), ('localhost', 25), maildir='/tmp/Maildir'),
    ]
    inbox = WebInboxServer(('127.0.0.1', 0), ('localhost', 25), web=0)
    print(inbox.web_url, len(inbox.inbox))
    servers.append(inbox)
    print(parse_bdat('100 LAST'), parse_proxy_header(b'PROXY UNKNOWN\r\n'))
    handle = loop.call_later(1.0, print, 'tick')
    handle.cancel()
    loop.loop(timeout=1.0, count=1)
    serve_gracefully(grace_period=5.0)
    for server in servers:
        server.close()
    check_mail()


if __name__ == '__main__':
    main(sys.argv[1:])

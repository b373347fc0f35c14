"""Calls that typeshed's stub of the standard library's smtpd rejected (and
a few more the stubs here know better): each line marked ``# E: <code>``
must get a mypy error with that code, and no other line may get one
(tests/test_typing.py).  Never run.
"""
import io
import socket
import sys
from typing import Any, List, Optional, Tuple, Union

import smtpd

from smtpd_compat.limits import LimitedServer
from smtpd_compat.auth import SubmissionServer

Peer = Tuple[str, int]

# Addresses are (host, port) tuples with an int port, as bind() and
# getaddrinfo() take them; the remote one is None or such a tuple, and
# PureProxy, which relays every message to it, needs one.
smtpd.SMTPServer('localhost', ('localhost', 25))  # E: arg-type
smtpd.SMTPServer(['localhost', 8025], None)  # E: arg-type
smtpd.SMTPServer(('::1', 8025, 0, 0), None)  # E: arg-type
smtpd.SMTPServer((None, 8025), None)  # E: arg-type
smtpd.DebuggingServer(('localhost', '8025'), ('localhost', 25))  # E: arg-type
smtpd.PureProxy(('localhost', 8025), 'localhost:25')  # E: arg-type
smtpd.PureProxy(('localhost', 8025), None)  # E: arg-type
smtpd.SMTPServer(('localhost', 8025), ('localhost', 25), '1024')  # E: arg-type
smtpd.SMTPServer(('localhost', 8025), ('localhost', 25), size=10)  # E: call-arg
smtpd.SMTPServer(('localhost', 8025))  # E: call-arg

server = smtpd.SMTPServer(('localhost', 8025), ('localhost', 25))
conn = socket.socket()
channel = smtpd.SMTPChannel(server, conn, ('127.0.0.1', 5000))

# push() takes a reply line as str (async_chat.push takes bytes).
channel.push(b'250 OK')  # E: arg-type
smtpd.SMTPChannel(server, conn, None, data_size_limit='big')  # E: arg-type
smtpd.SMTPChannel(conn, server, None)  # E: arg-type
channel.smtp_HELO(42)  # E: arg-type
channel.smtp_HELO(None)  # E: arg-type
channel.peer = 8025  # E: assignment
channel.received_lines = [1]  # E: list-item
channel.collect_incoming_data('text')  # E: arg-type

# process_message: (peer, mailfrom, rcpttos: list, data) -> str or None.
server.process_message(('h', 1), 'a@example.com', 'b@example.com', b'x')  # E: arg-type
reply: str = server.process_message(('h', 1), 'a@example.com', [], b'x')  # E: assignment
server.channel_class = int  # E: assignment


class WrongReturn(smtpd.SMTPServer):
    def process_message(  # E: override
            self, peer: Peer, mailfrom: str, rcpttos: List[str],
            data: Union[bytes, str], **kwargs: Any) -> int:
        return 250


class BytesReply(smtpd.SMTPServer):
    def process_message(  # E: override
            self, peer: Peer, mailfrom: str, rcpttos: List[str],
            data: Union[bytes, str], **kwargs: Any) -> Optional[bytes]:
        return None


class NarrowData(smtpd.SMTPServer):
    # data is bytes unless decode_data=True: a str-only override is unsound.
    def process_message(self, peer: Peer, mailfrom: str, rcpttos: List[str], data: str, **kwargs: Any) -> Optional[str]:  # E: override
        return None


class BytesPush(smtpd.SMTPChannel):
    def smtp_NOOP(self, arg: Optional[str]) -> None:
        self.push(b'250 OK')  # E: arg-type


# DEBUGSTREAM is a text stream.
smtpd.DEBUGSTREAM = sys.stdout.buffer  # E: assignment
smtpd.DEBUGSTREAM = io.BytesIO()  # E: assignment
smtpd.DEBUGSTREAM = io.StringIO()
smtpd.DEBUGSTREAM = sys.stderr

# parseargs takes a list of arguments.
smtpd.parseargs('-n')  # E: arg-type

# The capability classes keep the core's address types and type their
# keywords.  (The AUTH server's authenticator may come from a class
# attribute, so leaving the keyword out is not an error for the checker.)
LimitedServer('localhost', None)  # E: arg-type
SubmissionServer(('localhost', 8025), ('localhost', 25), tls_certfile='c.pem',
                 authenticator='users.txt')  # E: arg-type

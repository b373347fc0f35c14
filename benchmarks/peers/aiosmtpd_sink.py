"""A discarding aiosmtpd server for the benchmarks:
``aiosmtpd_sink.py [--sleep SECONDS] [--tls-cert PEM --auth-file FILE]
PORTFILE`` (run with an interpreter that has aiosmtpd).  With ``--sleep``
the handler first sleeps with ``time.sleep``: a synchronous handler, as a
legacy one would be.  With ``--tls-cert`` (certificate and key in one PEM
file) and ``--auth-file`` (W6) it requires STARTTLS and AUTH before MAIL,
and its authenticator checks the password against the file's
``login:$scrypt$ln=N,r=R,p=P$salt hex$key hex`` line, as smtpd_compat's
``--auth-file`` does."""
import asyncio
import hashlib
import hmac
import os
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, AuthResult

portfile = sys.argv[-1]
options = dict(zip(sys.argv[1:-1:2], sys.argv[2:-1:2]))
sleep = float(options.get('--sleep', 0))


class Sink:
    async def handle_DATA(self, server, session, envelope):
        if sleep:
            time.sleep(sleep)
        return '250 OK'


def file_authenticator(path):
    """An aiosmtpd authenticator for the users of an auth file of scrypt
    hashes in hex (what benchmarks/run.py writes)."""
    users = {}
    with open(path) as f:
        for line in f:
            login, _, encoded = line.strip().partition(':')
            _, _, params, salt, key = encoded.split('$')
            p = dict(item.split('=') for item in params.split(','))
            users[login.encode()] = (int(p['ln']), int(p['r']), int(p['p']),
                                     bytes.fromhex(salt), bytes.fromhex(key))

    def authenticate(server, session, envelope, mechanism, auth_data):
        entry = users.get(auth_data.login)
        if entry is None:
            return AuthResult(success=False, handled=False)
        ln, r, p, salt, key = entry
        derived = hashlib.scrypt(auth_data.password, salt=salt, n=2 ** ln, r=r, p=p,
                                 dklen=len(key))
        return AuthResult(success=hmac.compare_digest(derived, key), handled=False)

    return authenticate


def make_smtp():
    if '--tls-cert' not in options:
        return SMTP(Sink())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options['--tls-cert'])
    return SMTP(Sink(), tls_context=context, require_starttls=True,
                authenticator=file_authenticator(options['--auth-file']),
                auth_required=True, auth_require_tls=True)


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(make_smtp, '127.0.0.1', 0)
    with open(portfile + '.tmp', 'w') as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.replace(portfile + '.tmp', portfile)
    await asyncio.Event().wait()

try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass

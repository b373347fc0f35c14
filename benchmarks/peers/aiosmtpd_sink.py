"""A discarding aiosmtpd server for the benchmarks:
``aiosmtpd_sink.py [--sleep SECONDS] PORTFILE`` (run with an interpreter
that has aiosmtpd).  With ``--sleep`` the handler first sleeps with
``time.sleep``: a synchronous handler, as a legacy one would be."""
import asyncio
import os
import sys
import time

from aiosmtpd.smtp import SMTP

portfile = sys.argv[-1]
options = dict(zip(sys.argv[1:-1:2], sys.argv[2:-1:2]))
sleep = float(options.get('--sleep', 0))


class Sink:
    async def handle_DATA(self, server, session, envelope):
        if sleep:
            time.sleep(sleep)
        return '250 OK'


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink()), '127.0.0.1', 0)
    with open(portfile + '.tmp', 'w') as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.replace(portfile + '.tmp', portfile)
    await asyncio.Event().wait()

try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass

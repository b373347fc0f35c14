"""A discarding aiosmtpd server for the benchmarks:
``aiosmtpd_sink.py PORTFILE`` (run with an interpreter that has aiosmtpd)."""
import asyncio
import os
import sys

from aiosmtpd.smtp import SMTP

portfile = sys.argv[1]


class Sink:
    async def handle_DATA(self, server, session, envelope):
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

"""The web inbox's live events and API under load, on loopback, bounded.

Measures (issue 22's targets):

* how long after the 250 a websocket client of /api/events has the
  ``new`` event of the message (the event may come first: negative);
* another client's SMTP connect+NOOP while ``--clients`` websocket
  listeners and API pollers are connected and mail flows.

Usage: python benchmarks/web_events.py [--messages 50] [--clients 50]
Prints one line per figure; takes a few seconds.
"""
import argparse
import base64
import json
import os
import smtplib
import socket
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from smtpd_compat.controller import Controller  # noqa: E402
from smtpd_compat.web import WebInboxServer  # noqa: E402
from smtpd_compat.web.events import TEXT, parse_frame  # noqa: E402


class Listener:
    """A raw websocket client of /api/events that records when each
    ``new`` event arrived (by subject)."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b'GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                          b'Upgrade: websocket\r\nConnection: Upgrade\r\n'
                          b'Sec-WebSocket-Key: ' + key +
                          b'\r\nSec-WebSocket-Version: 13\r\n\r\n')
        data = b''
        while b'\r\n\r\n' not in data:
            data += self.sock.recv(4096)
        self.buffer = data.partition(b'\r\n\r\n')[2]
        self.arrived = {}
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            while True:
                parsed = parse_frame(self.buffer, 1 << 24, masked=False)
                if parsed is None:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    self.buffer += chunk
                    continue
                frame, used = parsed
                self.buffer = self.buffer[used:]
                if frame.opcode == TEXT:
                    event = json.loads(frame.payload)
                    if event['Type'] == 'new':
                        self.arrived[event['Data']['Subject']] = time.perf_counter()
        except OSError:
            pass


def poller(url, stop):
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url + 'api/v1/messages?limit=50', timeout=30) as r:
                r.read()
        except OSError:
            return      # the server stopped


def noop_latency(host, port):
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.recv(1024)
        sock.sendall(b'NOOP\r\n')
        sock.recv(1024)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--messages', type=int, default=50)
    parser.add_argument('--clients', type=int, default=50)
    args = parser.parse_args()
    controller = Controller(WebInboxServer, web=('127.0.0.1', 0)).start()
    host, port = controller.server.web_server.server_address[:2]
    listeners = [Listener(host, port) for _ in range(args.clients // 2)]
    stop = threading.Event()
    pollers = [threading.Thread(target=poller, args=(controller.web_url, stop), daemon=True)
               for _ in range(args.clients - len(listeners))]
    for thread in pollers:
        thread.start()
    delays, noops = [], []
    try:
        with smtplib.SMTP(controller.hostname, controller.port, timeout=30) as client:
            for i in range(args.messages):
                subject = 'message %d' % i
                client.sendmail('a@example.org', ['b@example.org'],
                                'Subject: %s\r\n\r\n%s\r\n' % (subject, 'x' * 2000))
                acked = time.perf_counter()
                noops.append(noop_latency(controller.hostname, controller.port))
                deadline = time.monotonic() + 10
                while subject not in listeners[0].arrived and time.monotonic() < deadline:
                    time.sleep(0.001)
                delays.append(listeners[0].arrived.get(subject, float('inf')) - acked)
    finally:
        stop.set()
        controller.stop()
    delays.sort()
    noops.sort()
    print('new event after the 250: median %.1f ms, max %.1f ms (%d messages, '
          '%d websocket listeners, %d API pollers)'
          % (statistics.median(delays) * 1000, delays[-1] * 1000, len(delays),
             len(listeners), len(pollers)))
    print('another client SMTP connect+NOOP meanwhile: median %.1f ms, max %.1f ms'
          % (statistics.median(noops) * 1000, noops[-1] * 1000))


if __name__ == '__main__':
    main()

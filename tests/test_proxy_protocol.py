"""PROXY protocol: the sans-IO parser, the channel mixin on live sockets,
and a real haproxy in front of two server processes."""
import os
import re
import smtplib
import socket
import struct
import subprocess
import sys
import time

import pytest

import smtpd_compat
from smtpd_compat.proxy_protocol import (
    V2_SIGNATURE, ProxyHeader, ProxyProtocolError, ProxyProtocolServerMixin,
    parse_proxy_header)

from conftest import (
    RecordingServer, free_ports, recv_reply, require_tool, wait_for_port)


def v2(cmd=1, fam=0x11, addresses=b'', tlvs=b''):
    body = addresses + tlvs
    return V2_SIGNATURE + struct.pack('!BBH', 0x20 | cmd, fam,
                                      len(body)) + body


V4_ADDR = (socket.inet_pton(socket.AF_INET, '192.0.2.7')
           + socket.inet_pton(socket.AF_INET, '198.51.100.1')
           + struct.pack('!HH', 51234, 25))
V6_ADDR = (socket.inet_pton(socket.AF_INET6, '2001:db8::7')
           + socket.inet_pton(socket.AF_INET6, '2001:db8::1')
           + struct.pack('!HH', 40000, 587))
UNIX_ADDR = b'/tmp/a'.ljust(108, b'\0') + b'/tmp/b'.ljust(108, b'\0')

VALID = [
    ('v1-tcp4', b'PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n',
     ProxyHeader(1, 'PROXY', 'TCP4', ('192.0.2.7', 51234),
                 ('198.51.100.1', 25), 43)),
    ('v1-tcp6', b'PROXY TCP6 2001:db8::7 2001:db8::1 40000 587\r\n',
     ProxyHeader(1, 'PROXY', 'TCP6', ('2001:db8::7', 40000),
                 ('2001:db8::1', 587), 45)),
    ('v1-unknown', b'PROXY UNKNOWN\r\n',
     ProxyHeader(1, 'PROXY', 'UNKNOWN', None, None, 15)),
    ('v1-unknown-junk', b'PROXY UNKNOWN ffff::1 whatever 1 2\r\n',
     ProxyHeader(1, 'PROXY', 'UNKNOWN', None, None, 36)),
    ('v1-port-0', b'PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n',
     ProxyHeader(1, 'PROXY', 'TCP4', ('1.2.3.4', 0), ('5.6.7.8', 65535),
                 36)),
    ('v2-tcp4', v2(addresses=V4_ADDR),
     ProxyHeader(2, 'PROXY', 'TCP4', ('192.0.2.7', 51234),
                 ('198.51.100.1', 25), 28)),
    ('v2-tcp6', v2(fam=0x21, addresses=V6_ADDR),
     ProxyHeader(2, 'PROXY', 'TCP6', ('2001:db8::7', 40000),
                 ('2001:db8::1', 587), 52)),
    ('v2-local', v2(cmd=0, fam=0x00),
     ProxyHeader(2, 'LOCAL', 'UNSPEC', None, None, 16)),
    ('v2-tlvs', v2(addresses=V4_ADDR, tlvs=b'\x01\x00\x02h2\x04\x00\x00'),
     ProxyHeader(2, 'PROXY', 'TCP4', ('192.0.2.7', 51234),
                 ('198.51.100.1', 25), 34, ((1, b'h2'), (4, b'')))),
    ('v2-unix', v2(fam=0x31, addresses=UNIX_ADDR),
     ProxyHeader(2, 'PROXY', 'UNIX_STREAM', '/tmp/a', '/tmp/b', 232)),
]

INVALID = [
    ('smtp-command', b'EHLO example.com\r\n'),
    ('lowercase', b'proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n'),
    ('v1-bad-family', b'PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n'),
    ('v1-few-fields', b'PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n'),
    ('v1-bad-ip', b'PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n'),
    ('v1-v6-in-tcp4', b'PROXY TCP4 ::1 ::1 1 2\r\n'),
    ('v1-port-range', b'PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n'),
    ('v1-port-leading-zero', b'PROXY TCP4 1.2.3.4 5.6.7.8 025 2\r\n'),
    ('v1-port-sign', b'PROXY TCP4 1.2.3.4 5.6.7.8 +25 2\r\n'),
    ('v1-double-space', b'PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n'),
    ('v1-bare-lf', b'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n'),
    ('v1-too-long', b'PROXY UNKNOWN ' + b'x' * 120),
    ('v1-non-ascii', b'PROXY TCP4 1.2.3.\xc3\xa9 5.6.7.8 1 2\r\n'),
    ('v2-bad-signature', V2_SIGNATURE[:-1] + b'X' + b'\x21\x11\x00\x0c'),
    ('v2-version-1', V2_SIGNATURE + b'\x11\x11\x00\x0c' + V4_ADDR),
    ('v2-command-2', V2_SIGNATURE + b'\x22\x11\x00\x0c' + V4_ADDR),
    ('v2-family', V2_SIGNATURE + b'\x21\x41\x00\x00'),
    ('v2-short-block', V2_SIGNATURE + b'\x21\x11\x00\x04' + b'\0' * 4),
    ('v2-truncated-tlv', v2(addresses=V4_ADDR, tlvs=b'\x01\x00\x05ab')),
]


def feed_bytewise(data):
    """Feed growing prefixes like a socket delivering one byte at a time;
    returns the first result that is not None (or None)."""
    for i in range(1, len(data) + 1):
        result = parse_proxy_header(data[:i])
        if result is not None:
            return result, i
    return None, len(data)


@pytest.mark.parametrize('data,expected', [c[1:] for c in VALID],
                         ids=[c[0] for c in VALID])
def test_parse_valid_whole_bytewise_and_trailing(data, expected):
    # Each case is exactly one header: it takes all the bytes.
    expected = expected._replace(length=len(data))
    assert parse_proxy_header(data) == expected
    # One byte at a time: None until the very last byte.
    result, used = feed_bytewise(data)
    assert result == expected and used == len(data)
    # Bytes after the header are the client's, not the header's.
    trailing = data + b'EHLO client\r\n'
    result = parse_proxy_header(trailing)
    assert result == expected
    assert trailing[result.length:] == b'EHLO client\r\n'


@pytest.mark.parametrize('data', [c[1] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_parse_invalid_raises_whole_and_bytewise(data):
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)
    with pytest.raises(ProxyProtocolError):
        feed_bytewise(data)
    assert issubclass(ProxyProtocolError, ValueError)


def test_parse_needs_more_data():
    assert parse_proxy_header(b'') is None
    assert parse_proxy_header(b'PROX') is None
    assert parse_proxy_header(b'PROXY TCP4 1.2.3.4') is None
    assert parse_proxy_header(V2_SIGNATURE[:5]) is None
    assert parse_proxy_header(v2(addresses=V4_ADDR)[:20]) is None


class ProxiedServer(ProxyProtocolServerMixin, RecordingServer):
    pass


def test_live_v1_sets_peer_and_proxy_peer(live_server):
    server = live_server(ProxiedServer)
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        # Nothing is said before the header has arrived.
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(100)
        # Header and the first command in one segment, then pipelining.
        sock.sendall(b'PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n')
        greeting = recv_reply(sock)
        assert greeting.startswith(b'220 ')
        sock.sendall(b'HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n')
        # Pipelined replies may arrive in one segment or several.
        replies = b''
        while replies.count(b'\r\n') < 4:
            chunk = sock.recv(4096)
            assert chunk, replies
            replies += chunk
        codes = [line[:3] for line in replies.split(b'\r\n')[:4]]
        assert codes == [b'250', b'250', b'250', b'354'], replies
        sock.sendall(b'hi\r\n.\r\nQUIT\r\n')
        assert recv_reply(sock).startswith(b'250 ')
    deadline = time.monotonic() + 5
    while not server.server.messages and time.monotonic() < deadline:
        time.sleep(0.01)
    peer, mailfrom, rcpttos, data, _ = server.server.messages[0]
    assert peer == ('192.0.2.7', 51234)
    assert data == b'hi'


def test_live_v2_byte_by_byte_then_smtp(live_server):
    server = live_server(ProxiedServer)
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        header = v2(fam=0x21, addresses=V6_ADDR) + b'HELO c\r\n'
        for b in header[:-8]:
            sock.sendall(bytes([b]))
        sock.sendall(header[-8:])
        replies = b''
        while b'\r\n250 ' not in replies:
            replies += recv_reply(sock)
        assert replies.startswith(b'220 ')
        channels = [c for c in server.map.values()
                    if isinstance(c, smtpd_compat.SMTPChannel)]
        assert [c.peer for c in channels] == [('2001:db8::7', 40000)]
        assert channels[0].proxy_peer[0] == '127.0.0.1'
        assert channels[0].proxy_header.version == 2


@pytest.mark.parametrize('data', [
    b'EHLO client.example\r\n',
    b'PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n',
    V2_SIGNATURE + b'\x11\x11\x00\x00',
], ids=['missing', 'malformed-v1', 'malformed-v2'])
def test_live_bad_header_closes_without_reply(live_server, caplog, data):
    server = live_server(ProxiedServer)
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        sock.sendall(data)
        assert sock.recv(100) == b''       # closed, nothing said
    assert any('PROXY protocol error' in r.getMessage()
               for r in caplog.records)
    # The server goes on serving.
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        sock.sendall(b'PROXY UNKNOWN\r\n')
        assert recv_reply(sock).startswith(b'220 ')


def test_without_mixin_stdlib_greets_at_once(live_server, raw_client):
    server = live_server(RecordingServer)
    sock, greeting = raw_client(server.address)
    assert greeting.startswith(b'220 ')


# -- haproxy in front of two server processes --------------------------------

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'docs', 'operations.rst')


def example_haproxy_cfg():
    """The example haproxy.cfg from docs/operations.rst (so the documented
    file is the tested one)."""
    with open(DOCS, encoding='utf-8') as f:
        text = f.read()
    block = text.split('.. example-haproxy-cfg-start', 1)[1]
    block = block.split('.. example-haproxy-cfg-end', 1)[0]
    lines = [line[4:] if line.startswith('    ') else line.strip()
             for line in block.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith('global'))
    return '\n'.join(lines[start:]).strip() + '\n'


def test_haproxy_send_proxy_v1_and_v2(tmp_path, python_path_env):
    haproxy = require_tool('haproxy')
    front, p1, p2 = free_ports(3)
    cfg = example_haproxy_cfg()
    assert 'send-proxy-v2' in cfg and 'send-proxy\n' in cfg
    cfg = (cfg.replace('*:25', '127.0.0.1:%d' % front)
              .replace('10.0.0.11:25', '127.0.0.1:%d' % p1)
              .replace('10.0.0.12:25', '127.0.0.1:%d' % p2))
    (tmp_path / 'haproxy.cfg').write_text(cfg)
    env = dict(python_path_env, PYTHONUNBUFFERED='1')
    procs = []
    outs = []
    try:
        for port in (p1, p2):
            out = open(tmp_path / ('server%d.out' % port), 'w+')
            outs.append(out)
            procs.append(subprocess.Popen(
                [sys.executable, '-m', 'smtpd_compat', '-n', '-c',
                 'DebuggingServer', '--proxy-protocol',
                 '127.0.0.1:%d' % port],
                stdout=out, stderr=subprocess.STDOUT, env=env))
        for port, proc in zip((p1, p2), procs):
            wait_for_port(proc, port)
        hap_out = open(tmp_path / 'haproxy.out', 'w+')
        outs.append(hap_out)
        hap = subprocess.Popen([haproxy, '-db', '-f',
                                str(tmp_path / 'haproxy.cfg')],
                               stdout=hap_out, stderr=subprocess.STDOUT)
        procs.append(hap)
        wait_for_port(hap, front)
        # Connect from 127.0.0.2: the servers only ever see 127.0.0.1
        # (haproxy), so X-Peer: 127.0.0.2 can only come from the header.
        # Round robin is per haproxy thread, so send until both servers
        # (one fed v1 headers, one v2) have had a message; at most 10.
        texts = ['', '']
        for i in range(10):
            client = smtplib.SMTP(timeout=10,
                                  source_address=('127.0.0.2', 0))
            client.connect('127.0.0.1', front)
            client.sendmail('a@example.com', ['b@example.com'],
                            'Subject: via haproxy %d\r\n\r\nbody\r\n' % i)
            client.quit()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for n, out in enumerate(outs[:2]):
                    out.seek(0)
                    texts[n] = out.read()
                if sum(t.count('END MESSAGE') for t in texts) > i:
                    break
                time.sleep(0.02)
            if all('END MESSAGE' in t for t in texts):
                break
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for out in outs:
            out.close()
    # Round robin: one message through each server, v1 and v2 header.
    for text in texts:
        assert "b'X-Peer: 127.0.0.2'" in text, text
        assert re.search(r"Subject: via haproxy \d", text)

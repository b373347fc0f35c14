"""PROXY protocol: the sans-IO parser, the channel mixin on live sockets,
and a real haproxy in front of two server processes."""
import contextlib
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
    RecordingServer, free_ports, read_to_eof, recv_reply, require_tool,
    reserved_ports, wait_for_port)


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
    # (Recorded before the 250 went out.)
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


def stop_processes(procs):
    """Terminate the servers and HAProxy a test started; kill what does
    not exit within 10 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    # (Our servers' ports are reserved until they listen: see
    # helpers.reserved_port; haproxy's is only free.)
    hold = contextlib.ExitStack()
    p1, p2 = hold.enter_context(reserved_ports(2))
    front, = free_ports(1)
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
        hold.close()
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
        hold.close()
        stop_processes(procs)
        for out in outs:
            out.close()
    # Round robin: one message through each server, v1 and v2 header.
    for text in texts:
        assert "b'X-Peer: 127.0.0.2'" in text, text
        assert re.search(r"Subject: via haproxy \d", text)


# -- scope ids and log hygiene (issue 12, finding 2) ---------------------------

@pytest.mark.parametrize('data', [
    b'PROXY TCP6 fe80::2%\nFAKE\tlog\tline ::1 1 2\r\n',
    b'PROXY TCP6 fe80::2%eth0 ::1 1 2\r\n',
    b'PROXY TCP6 ::1 fe80::2%25 1 2\r\n',
    b'PROXY TCP4 1.2.3.4%x 5.6.7.8 1 2\r\n',
    b'PROXY TCP6 ::ffff:1.2.3.4\x1b ::1 1 2\r\n',
], ids=['lf-in-scope', 'scope', 'dst-scope', 'v4-scope', 'escape'])
def test_parse_refuses_scope_ids_and_controls(data):
    # ipaddress accepts "fe80::2%<anything>" on Python 3.9+: the parser
    # must not rely on it alone.
    with pytest.raises(ProxyProtocolError) as info:
        parse_proxy_header(data)
    message = str(info.value)
    assert '\n' not in message and '\t' not in message and '\x1b' not in message


def test_live_forged_scope_never_reaches_log_or_x_peer(live_server, caplog):
    class Debugging(ProxyProtocolServerMixin, smtpd_compat.DebuggingServer):
        pass

    server = live_server(Debugging)
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        sock.sendall(b'PROXY TCP6 fe80::2%\nFAKE\tlog\tline ::1 1 2\r\n')
        assert sock.recv(100) == b''        # refused, nothing served
    lines = [r.getMessage() for r in caplog.records]
    assert any('PROXY protocol error' in line for line in lines)
    assert not any('\n' in line or '\t' in line for line in lines), lines


# -- trusted balancers (issue 12, finding 1) -----------------------------------

def test_parse_networks():
    from smtpd_compat.proxy_protocol import parse_networks
    nets = parse_networks('10.0.0.0/8, 2001:db8::/32,192.0.2.1')
    assert [str(n) for n in nets] == ['10.0.0.0/8', '2001:db8::/32',
                                      '192.0.2.1/32']
    for bad in ('', '10.0.0.1/8', 'example.com', '10.0.0.0/33'):
        with pytest.raises(ValueError):
            parse_networks(bad)
    with pytest.raises(ValueError):
        ProxiedServer(('127.0.0.1', 0), None, proxy_trusted='nonsense')


def test_untrusted_peer_is_refused_and_never_counted(live_server, caplog):
    from smtpd_compat.limits import LimitsServerMixin

    class Limited(ProxyProtocolServerMixin, LimitsServerMixin,
                  RecordingServer):
        pass

    # Only 127.0.0.2 is the balancer; 127.0.0.1 is "a client on the
    # internet" that connects directly.
    server = live_server(Limited, proxy_trusted=['127.0.0.2/32'],
                         max_connections_per_ip=2)
    claim = b'PROXY TCP4 192.0.2.99 198.51.100.1 1234 25\r\n'
    started = time.monotonic()
    for _ in range(20):
        sock = socket.create_connection(server.address, timeout=5)
        with sock:
            sock.sendall(claim)
            try:
                assert sock.recv(100) == b''    # closed, never greeted
            except ConnectionResetError:
                pass
    refusals = [r.getMessage() for r in caplog.records
                if 'not from a trusted PROXY balancer' in r.getMessage()]
    # Rate limited: at most one line a second (the first at once), naming
    # the direct peer, not the claim.
    elapsed = time.monotonic() - started
    assert 1 <= len(refusals) <= elapsed + 1, (refusals, elapsed)
    assert len(refusals) < 20
    assert '127.0.0.1' in refusals[0] and '192.0.2.99' not in refusals[0]
    # The victim's own connections through the balancer are not locked out
    # by the five claims; the limit counts the client address the header
    # gives, after it is accepted.
    socks = []
    try:
        for _ in range(3):
            sock = socket.create_connection(server.address, timeout=5,
                                            source_address=('127.0.0.2', 0))
            socks.append(sock)
            sock.sendall(claim)
            socks_reply = recv_reply(sock)
            if len(socks) <= 2:
                assert socks_reply.startswith(b'220 '), socks_reply
            else:
                assert socks_reply.startswith(b'421 4.7.0'), socks_reply
        # Another client behind the same balancer is counted apart.
        sock = socket.create_connection(server.address, timeout=5,
                                        source_address=('127.0.0.2', 0))
        socks.append(sock)
        sock.sendall(b'PROXY TCP4 192.0.2.100 198.51.100.1 1234 25\r\n')
        assert recv_reply(sock).startswith(b'220 ')
    finally:
        for sock in socks:
            sock.close()
    assert server.server.proxy_trusted == (
        __import__('ipaddress').ip_network('127.0.0.2/32'),)


def test_default_trusts_loopback_only():
    from smtpd_compat.proxy_protocol import _trusted, DEFAULT_TRUSTED, parse_networks
    nets = parse_networks(DEFAULT_TRUSTED)
    assert _trusted(('127.0.0.1', 1), nets)
    assert _trusted(('127.9.9.9', 1), nets)
    assert _trusted(('::1', 1, 0, 0), nets)
    assert _trusted(('::ffff:127.0.0.1', 1, 0, 0), nets)
    assert not _trusted(('192.0.2.1', 1), nets)
    assert not _trusted(('::ffff:192.0.2.1', 1, 0, 0), nets)
    assert not _trusted(('fe80::1%eth0', 1, 0, 2), nets)
    assert _trusted('', nets)          # AF_UNIX


def test_incomplete_header_closed_without_reply_at_deadline(live_server, caplog):
    from smtpd_compat.limits import LimitsServerMixin

    class Limited(ProxyProtocolServerMixin, LimitsServerMixin,
                  RecordingServer):
        pass

    server = live_server(Limited, proxy_header_timeout=0.5, loop='smtpd_compat')
    assert server.server.proxy_header_timeout == 0.5
    sock = socket.create_connection(server.address, timeout=10)
    with sock:
        sock.sendall(b'PROXY TCP4 192.0.2.7 ')
        started = time.monotonic()
        # No "421 ... timeout" is sent to the balancer: just a close.
        assert sock.recv(100) == b''
        # The header's own deadline, not the 300 s idle timeout.
        assert time.monotonic() - started < 8
    assert any('incomplete' in r.getMessage() for r in caplog.records)


def test_cli_proxy_trusted(cli_server, python_path_env):
    # 127.0.0.2 is trusted, 127.0.0.1 is not.
    proc, port = cli_server('-c', 'DebuggingServer', '--proxy-protocol',
                            '--proxy-trusted', '127.0.0.2/32,2001:db8::/32')
    sock = socket.create_connection(('127.0.0.1', port), timeout=5,
                                    source_address=('127.0.0.2', 0))
    with sock:
        sock.sendall(b'PROXY TCP4 192.0.2.7 198.51.100.1 1234 25\r\n')
        assert recv_reply(sock).startswith(b'220 ')
    sock = socket.create_connection(('127.0.0.1', port), timeout=5)
    with sock:
        sock.sendall(b'PROXY TCP4 192.0.2.7 198.51.100.1 1234 25\r\n')
        try:
            assert sock.recv(100) == b''
        except ConnectionResetError:
            pass
    for args, message in [
            (['--proxy-trusted', '10.0.0.0/8'], 'needs --proxy-protocol'),
            (['--proxy-protocol', '--proxy-trusted', '10.0.0.1/8'],
             'Invalid --proxy-trusted')]:
        result = subprocess.run(
            [sys.executable, '-m', 'smtpd_compat', '-n'] + args
            + ['127.0.0.1:%d' % free_ports(1)[0]],
            env=python_path_env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and message in result.stderr, result


# -- PROXY header and ClientHello in one segment (issue 12, finding 3) ---------

def _tls_through_header(address, client_context, header, while_open):
    """Send ``header`` and the ClientHello in ONE sendall, finish the
    handshake by pumping memory BIOs, read the server's greeting inside TLS,
    call ``while_open()`` and return the greeting."""
    import ssl
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context.wrap_bio(incoming, outgoing,
                                  server_hostname='localhost')
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b'\x16'        # a TLS handshake record
    sock = socket.create_connection(address, timeout=5)
    with sock:
        sock.sendall(header + hello)
        done = False
        while not done:
            data = sock.recv(65536)
            assert data, 'server closed during the handshake'
            incoming.write(data)
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                pass
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
        greeting = b''
        while not greeting.endswith(b'\r\n'):
            try:
                greeting += tls.read(4096)
                continue
            except ssl.SSLWantReadError:
                pass
            data = sock.recv(65536)
            assert data, 'server closed before greeting'
            incoming.write(data)
        while_open()
        return greeting


@pytest.mark.parametrize('header', [
    b'PROXY TCP4 192.0.2.7 198.51.100.1 51234 465\r\n',
    v2(addresses=V4_ADDR),
], ids=['v1', 'v2'])
def test_header_and_client_hello_in_one_segment(live_server, tls_certs, header):
    from smtpd_compat.tls import TLSServerMixin

    class Smtps(ProxyProtocolServerMixin, TLSServerMixin, RecordingServer):
        pass

    server = live_server(Smtps, tls_context=tls_certs.server_context,
                         implicit_tls=True)
    peers = []

    def while_open():
        peers.extend(c.peer for c in list(server.map.values())
                     if isinstance(c, smtpd_compat.SMTPChannel))

    greeting = _tls_through_header(server.address, tls_certs.client_context,
                                   header, while_open)
    assert greeting.startswith(b'220 ')
    assert peers == [('192.0.2.7', 51234)]


def test_header_then_smtp_in_one_segment_still_works(live_server):
    # Without TLS the bytes behind the header are read as SMTP as before
    # (they stay in the socket for the next read).
    server = live_server(ProxiedServer)
    sock = socket.create_connection(server.address, timeout=5)
    with sock:
        sock.sendall(b'PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n'
                     b'HELO c\r\nQUIT\r\n')
        data = read_to_eof(sock)
    assert data.startswith(b'220 ') and b'\r\n250 ' in data
    assert data.endswith(b'221 Bye\r\n')


def test_haproxy_send_proxy_with_implicit_tls(tmp_path, python_path_env, tls_certs):
    haproxy = require_tool('haproxy')
    hold = contextlib.ExitStack()
    back, = hold.enter_context(reserved_ports(1))   # (see above)
    front, = free_ports(1)
    (tmp_path / 'haproxy.cfg').write_text(
        'global\n    maxconn 100\n'
        'defaults\n    mode tcp\n    timeout connect 5s\n'
        '    timeout client 30s\n    timeout server 30s\n'
        'frontend smtps\n    bind 127.0.0.1:%d\n    default_backend s\n'
        'backend s\n    server s1 127.0.0.1:%d send-proxy\n' % (front, back))
    env = dict(python_path_env, PYTHONUNBUFFERED='1')
    out = open(tmp_path / 'server.out', 'w+')
    procs = []
    try:
        server = subprocess.Popen(
            [sys.executable, '-m', 'smtpd_compat', '-n', '-c',
             'DebuggingServer', '--proxy-protocol', '--smtps',
             '--tls-cert', tls_certs.cert_file, '127.0.0.1:%d' % back],
            stdout=out, stderr=subprocess.STDOUT, env=env)
        procs.append(server)
        wait_for_port(server, back)
        hold.close()
        hap = subprocess.Popen([haproxy, '-db', '-f',
                                str(tmp_path / 'haproxy.cfg')],
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        procs.append(hap)
        wait_for_port(hap, front)
        # The client's ClientHello goes out at once, so haproxy often has
        # it before its backend connection is up and sends it with the
        # header; either way the handshake must complete.
        for i in range(3):
            client = smtplib.SMTP_SSL('127.0.0.1', front, timeout=10,
                                      context=tls_certs.client_context,
                                      source_address=('127.0.0.3', 0))
            client.sendmail('a@example.com', ['b@example.com'],
                            'Subject: tls via haproxy %d\r\n\r\nbody\r\n' % i)
            client.quit()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out.seek(0)
            text = out.read()
            if text.count('END MESSAGE') >= 3:
                break
            time.sleep(0.05)
    finally:
        hold.close()
        stop_processes(procs)
        out.close()
    assert text.count("b'X-Peer: 127.0.0.3'") == 3, text

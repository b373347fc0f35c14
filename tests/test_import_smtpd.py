"""``import smtpd`` resolution, monkeypatching of module globals, and the
public surface compared with CPython 3.11's smtpd where it is available."""
import inspect
import io
import socket
import subprocess
import sys
import warnings

import pytest

import smtpd_compat
from conftest import HAVE_STDLIB_SMTPD


def _run(env, code):
    out = subprocess.run([sys.executable, '-W', 'ignore::DeprecationWarning', '-c', code],
                         env=env, capture_output=True, text=True, timeout=30, cwd='/')
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_smtpd_resolution(python_path_env):
    # The repository root comes first on PYTHONPATH, so the top-level
    # smtpd.py shim is found before the standard library would be.
    code = ('import smtpd, smtpd_compat, os, sysconfig; '
            'print(smtpd is smtpd_compat, '
            'os.path.dirname(smtpd.__file__) == sysconfig.get_paths()["stdlib"])')
    same, from_stdlib = _run(python_path_env, code).split()
    if sys.version_info >= (3, 12):
        assert (same, from_stdlib) == ('True', 'False')
    else:
        assert (same, from_stdlib) == ('False', 'True')


@pytest.mark.skipif(sys.version_info < (3, 12), reason='smtpd is the stdlib module here')
def test_rebinding_through_smtpd_name_reaches_smtpd_compat(python_path_env):
    code = ('import io, smtpd, smtpd_compat; smtpd.DEBUGSTREAM = io.StringIO(); '
            'print(smtpd_compat.DEBUGSTREAM is smtpd.DEBUGSTREAM, '
            'smtpd.SMTPServer.__module__)')
    assert _run(python_path_env, code) == 'True smtpd_compat'


def test_all_names_defined_in_module():
    assert smtpd_compat.__all__ == ['SMTPChannel', 'SMTPServer', 'DebuggingServer', 'PureProxy']
    for name in smtpd_compat.__all__:
        assert getattr(smtpd_compat, name).__module__ == 'smtpd_compat'


class FakeSocketModule:
    def __init__(self):
        self.fqdn_calls = 0

    def getfqdn(self, name=''):
        self.fqdn_calls += 1
        return 'patched.example'

    def __getattr__(self, name):
        return getattr(socket, name)


def test_monkeypatch_socket_and_debugstream(live_server, raw_client, monkeypatch):
    from conftest import RecordingServer, recv_reply
    fake = FakeSocketModule()
    stream = io.StringIO()
    monkeypatch.setattr(smtpd_compat, 'socket', fake)
    monkeypatch.setattr(smtpd_compat, 'DEBUGSTREAM', stream)
    live = live_server(RecordingServer)
    sock, greeting = raw_client(live.address)
    assert greeting == b'220 patched.example Python SMTP proxy version 0.3\r\n'
    sock.sendall(b'HELO x\r\n')
    assert recv_reply(sock) == b'250 patched.example\r\n'
    sock.sendall(b'MAIL FROM:<a@b>\r\n')
    assert recv_reply(sock) == b'250 OK\r\n'
    assert fake.fqdn_calls == 1
    text = stream.getvalue()
    assert 'RecordingServer started at' in text
    assert 'Peer: ' in text and "sender: a@b" in text


def test_monkeypatch_asyncore_socket(monkeypatch):
    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(socket, name)

        def socket(self, *args):
            calls.append(args)
            return socket.socket(*args)

    monkeypatch.setattr(smtpd_compat.asyncore, 'socket', Spy())
    server = smtpd_compat.SMTPServer(('127.0.0.1', 0), None, map={})
    server.close()
    assert calls and calls[0][1] == socket.SOCK_STREAM


# -- the surface compared with the stdlib -----------------------------------

def _stdlib():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import smtpd
    return smtpd


needs_stdlib = pytest.mark.skipif(not HAVE_STDLIB_SMTPD,
                                  reason='no stdlib smtpd on this Python to compare with')

_NOT_COMPARED = {'__file__', '__cached__', '__spec__', '__loader__', '__name__',
                 '__builtins__', '__package__', '__path__', '__doc__', 'program',
                 # Python <= 3.10 only; the reference is 3.11, which removed it.
                 'MailmanProxy', '__all__'}


@needs_stdlib
def test_every_stdlib_global_exists_with_equal_value():
    std = _stdlib()
    for name, value in vars(std).items():
        if name in _NOT_COMPARED or name.startswith('_') and not name.startswith('__'):
            continue
        assert hasattr(smtpd_compat, name), name
        ours = getattr(smtpd_compat, name)
        if inspect.ismodule(value):
            assert ours is value, name
        elif isinstance(value, (str, int, list, tuple)):
            assert ours == value, name
        elif name == 'DEBUGSTREAM':
            assert type(ours).__name__ == type(value).__name__ == 'Devnull'
        else:
            assert callable(ours) == callable(value), name
    assert smtpd_compat.__doc__ == std.__doc__


@needs_stdlib
@pytest.mark.parametrize('cls', ['SMTPChannel', 'SMTPServer', 'DebuggingServer',
                                 'PureProxy', 'Options', 'Devnull'])
def test_class_has_every_stdlib_attribute(cls):
    theirs = getattr(_stdlib(), cls)
    ours = getattr(smtpd_compat, cls)
    missing = [n for n in dir(theirs) if not hasattr(ours, n)]
    assert missing == []
    for name in dir(theirs):
        value = inspect.getattr_static(theirs, name)
        if isinstance(value, (int, str)) and not name.startswith('__'):
            assert getattr(ours, name) == value, name


def _compatible(theirs, ours, allow_kwargs=False):
    """Same parameters in the same order with the same defaults; ours may
    add keyword-only parameters with defaults (and ``**kwargs`` where
    ``allow_kwargs``)."""
    tp = list(inspect.signature(theirs).parameters.values())
    op = list(inspect.signature(ours).parameters.values())
    extra = op[len(tp):]
    assert [(p.name, p.kind, p.default) for p in op[:len(tp)]] == \
        [(p.name, p.kind, p.default) for p in tp]
    for p in extra:
        if allow_kwargs and p.kind == p.VAR_KEYWORD:
            continue
        assert p.kind == p.KEYWORD_ONLY and p.default is not p.empty, p


@needs_stdlib
def test_public_signatures_match():
    std = _stdlib()
    for name in ('usage', 'parseargs'):
        if name == 'parseargs':
            # Ours takes an optional argv; the stdlib's takes none.
            assert list(inspect.signature(std.parseargs).parameters) == []
            continue
        _compatible(getattr(std, name), getattr(smtpd_compat, name))
    for cls in ('SMTPChannel', 'SMTPServer', 'DebuggingServer', 'PureProxy'):
        theirs, ours = getattr(std, cls), getattr(smtpd_compat, cls)
        for name, value in vars(theirs).items():
            if callable(value) and not name.startswith('__') or name == '__init__':
                # Deviation (e): PureProxy.process_message takes the
                # mail_options/rcpt_options keywords the stdlib's lacked.
                _compatible(getattr(theirs, name), getattr(ours, name),
                            allow_kwargs=(cls, name) == ('PureProxy', 'process_message'))


def test_deprecated_aliases_warn():
    channel = smtpd_compat.SMTPChannel.__new__(smtpd_compat.SMTPChannel)
    channel.smtp_state = 0
    with pytest.warns(DeprecationWarning, match="use 'smtp_state' instead"):
        assert channel._SMTPChannel__state == 0
    with pytest.warns(DeprecationWarning, match="set 'smtp_state' instead"):
        channel._SMTPChannel__state = 1
    assert channel.smtp_state == 1


def test_both_decode_data_and_smtputf8_is_an_error():
    with pytest.raises(ValueError, match='cannot be set to True at the same time'):
        smtpd_compat.SMTPServer(('127.0.0.1', 0), None, map={},
                                enable_SMTPUTF8=True, decode_data=True)

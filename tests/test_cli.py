"""``python -m smtpd_compat`` as a subprocess: help, version, argument
errors and exit codes as in CPython 3.11's ``python -m smtpd``, a real
message through ``-n -c DebuggingServer``, quiet exit on SIGTERM/SIGINT."""
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import smtpd_compat


def run_cli(env, *args, timeout=30):
    return subprocess.run([sys.executable, '-m', 'smtpd_compat'] + list(args),
                          env=env, capture_output=True, text=True, timeout=timeout)


def _reference_help():
    """``python -m smtpd -h`` from a CPython that still has smtpd (this one
    on <= 3.11, else python3.11 from PATH), run outside the checkout so the
    stdlib module is the one that answers."""
    if sys.version_info < (3, 12):
        python = sys.executable
    else:
        python = shutil.which('python3.11')
        if python is None:
            pytest.skip('no Python <= 3.11 on PATH to take the stdlib help text from')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run([python, '-W', 'ignore', '-m', 'smtpd', '-h'], cwd='/',
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    return out.stderr


def _without_program_line(text):
    return [l for l in text.splitlines() if not l.startswith('Usage: ')]


def test_help_matches_stdlib(python_path_env):
    ours = run_cli(python_path_env, '-h')
    assert ours.returncode == 0
    assert ours.stdout == ''
    reference = _without_program_line(_reference_help())
    lines = _without_program_line(ours.stderr)
    # The stdlib's text first, unchanged; capability options may follow.
    assert lines[:len(reference)] == reference
    assert any(l.startswith('Usage: ') and l.endswith(
        ' [options] [localhost:localport [remotehost:remoteport]]')
        for l in ours.stderr.splitlines())
    assert '--nosetuid' in ours.stderr and 'Version: Python SMTP proxy version 0.3' in ours.stderr


def test_long_help(python_path_env):
    assert run_cli(python_path_env, '--help').stderr == run_cli(python_path_env, '-h').stderr


@pytest.mark.parametrize('flag', ['-V', '--version'])
def test_version(python_path_env, flag):
    out = run_cli(python_path_env, flag)
    assert (out.returncode, out.stdout, out.stderr) == (0, 'Python SMTP proxy version 0.3\n', '')


@pytest.mark.parametrize('args,message', [
    (['-n', 'nocolon'], 'Bad local spec: nocolon'),
    (['-n', 'h:1', 'nocolon'], 'Bad remote spec: nocolon'),
    (['-n', 'h:x'], 'Bad local port: h:x'),
    (['-n', 'h:1', 'r:y'], 'Bad remote port: r:y'),
    (['-n', 'a:1', 'b:2', 'c:3'], 'Invalid arguments: a:1, b:2, c:3'),
    (['--bogus'], 'option --bogus not recognized'),
    (['-Z'], 'option -Z not recognized'),
    (['-c'], 'option -c requires argument'),
], ids=['local-spec', 'remote-spec', 'local-port', 'remote-port', 'too-many',
        'long-option', 'short-option', 'missing-value'])
def test_bad_arguments_print_usage_and_exit_1(python_path_env, args, message):
    out = run_cli(python_path_env, *args)
    assert out.returncode == 1
    assert out.stdout == ''
    assert out.stderr.rstrip('\n').splitlines()[-1] == message
    assert 'Usage: ' in out.stderr


def test_invalid_size(python_path_env):
    out = run_cli(python_path_env, '-s', 'lots')
    # Only the message, no usage text (as in the stdlib).
    assert (out.returncode, out.stdout, out.stderr) == (1, '', 'Invalid size: lots\n')


def _stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


MESSAGE = b'From: a@example.org\r\nSubject: cli\r\n\r\nbody line\r\n.leading dot\r\n'


@pytest.fixture
def sigint_default_in_children():
    """Start children with SIGINT at its default disposition.

    A child inherits an *ignored* SIGINT (a non-interactive shell starts
    background jobs that way: ``tox &`` in a CI script), and Python then
    installs no KeyboardInterrupt handler, so the server would rightly keep
    ignoring Ctrl-C.  The SIGINT test is about the server, not about how the
    test run was started: while a Python-level handler is set here, exec()
    resets SIGINT to SIG_DFL in the child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_debugging_server_prints_message_and_exits_quietly(cli_server, sig,
                                                           sigint_default_in_children):
    proc, port = cli_server('-c', 'DebuggingServer')
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        # Like the stdlib's CLI, no SIZE unless -s is given (the server gets
        # data_size_limit=None), so smtplib sends no MAIL options.
        client.ehlo()
        assert 'size' not in client.esmtp_features
        assert client.sendmail('a@example.org', ['b@example.net'], MESSAGE) == {}
    out, err = _stop(proc, sig)
    assert proc.returncode == 0
    assert err == ''
    assert out == (
        "---------- MESSAGE FOLLOWS ----------\n"
        "b'From: a@example.org'\n"
        "b'Subject: cli'\n"
        "b'X-Peer: 127.0.0.1'\n"
        "b''\n"
        "b'body line'\n"
        "b'.leading dot'\n"
        "------------ END MESSAGE ------------\n")


def test_smtputf8_flag(cli_server):
    proc, port = cli_server('-u', '-c', 'DebuggingServer')
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        code, text = client.ehlo()
        assert b'SMTPUTF8' in text
    _stop(proc)
    assert proc.returncode == 0


def test_size_flag(cli_server):
    proc, port = cli_server('-s', '1000', '-c', 'DebuggingServer')
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        client.ehlo()
        assert client.esmtp_features['size'] == '1000'
    _stop(proc)


def test_debug_flag_writes_to_stderr(cli_server):
    proc, port = cli_server('-d', '-c', 'DebuggingServer')
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        client.noop()
    out, err = _stop(proc)
    assert proc.returncode == 0
    assert 'DebuggingServer started at' in err
    assert 'Incoming connection from' in err


def test_dotted_class_name(python_path_env, cli_server, tmp_path):
    (tmp_path / 'my_cli_server.py').write_text(textwrap.dedent('''
        import smtpd_compat

        class Shouting(smtpd_compat.SMTPServer):
            def process_message(self, peer, mailfrom, rcpttos, data, **kw):
                print('GOT', mailfrom, rcpttos, data.upper(), flush=True)
                return '250 Loud and clear'
    '''))
    env = dict(python_path_env)
    env['PYTHONPATH'] = str(tmp_path) + os.pathsep + env['PYTHONPATH']
    proc, port = cli_server('-c', 'my_cli_server.Shouting', env=env)
    with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
        client.ehlo()
        client.mail('a@b')
        client.rcpt('c@d')
        assert client.data(b'hello\r\n') == (250, b'Loud and clear')
    out, err = _stop(proc)
    assert out == "GOT a@b ['c@d'] b'HELLO'\n"
    assert proc.returncode == 0


def test_unknown_class_fails(python_path_env):
    out = run_cli(python_path_env, '-n', '-c', 'NoSuchServer', '127.0.0.1:0')
    assert out.returncode != 0
    assert 'NoSuchServer' in out.stderr


# -- CLI manners (issue 13, item 6) -------------------------------------------

PROGRAM = 'python -m smtpd_compat'
POINTER = "Try 'python -m smtpd_compat -h' for help."


def _assert_short_error(out, message):
    lines = out.stderr.splitlines()
    assert out.returncode == 1
    assert out.stdout == ''
    assert 'Traceback' not in out.stderr and 'Usage:' not in out.stderr
    assert len(lines) <= 5
    assert lines[0].startswith(PROGRAM + ': ')
    assert message in lines[0]
    assert lines[-1] == POINTER


# (args, what the first line says); each runs with -n and no address unless
# the case gives one.
SHORT_ERRORS = [
    ('tls-key-alone', ['--tls-key', 'k.pem'], '--tls-key needs --tls-cert'),
    ('flag-with-value', ['--production=1'], 'option --production must not have an argument'),
    ('missing-value', ['--tls-cert'], 'option --tls-cert requires argument'),
    ('ambiguous-ours', ['--max', '1'], 'option --max not a unique prefix'),
    ('bad-number', ['--idle-timeout', 'soon'], 'Invalid --idle-timeout: soon'),
    ('bad-workers', ['--workers', '0'], 'Invalid --workers: 0'),
    ('bad-log-level', ['--log-level', 'LOUD'], 'Invalid --log-level: LOUD'),
    ('unknown-extension', ['--esmtp', 'FOO'], '--esmtp: unknown extension(s) FOO'),
    ('option-for-other-class', ['--relay-timeout', '5'], '--relay-timeout needs -c RelayServer'),
    ('auth-without-tls', ['--auth-file', '/nonexistent'], '--auth-file needs --tls-cert'),
    ('tls-server-without-cert', ['-c', 'TLSServer', '127.0.0.1:0'],
     '-c TLSServer cannot be built from these options: tls_context'),
    ('submission-without-flags', ['-c', 'SubmissionServer', '127.0.0.1:0'],
     '-c SubmissionServer cannot be built from these options:'),
    ('maildir-without-dir', ['-c', 'MaildirServer', '127.0.0.1:0'],
     '-c MaildirServer needs --maildir'),
    ('not-a-server', ['-c', 'Controller', '127.0.0.1:0'], '-c Controller cannot be built'),
    ('not-a-class', ['-c', 'loop', '127.0.0.1:0'], '-c loop: not a class'),
    ('unknown-class', ['-c', 'NoSuchServer', '127.0.0.1:0'], '-c NoSuchServer: no such class'),
    ('unknown-module', ['-c', 'no_such_module.Server', '127.0.0.1:0'],
     "-c no_such_module.Server: no module named 'no_such_module'"),
    # The stdlib raised ValueError with a traceback for PureProxy with -u.
    ('pureproxy-smtputf8', ['-u', '127.0.0.1:0'], 'PureProxy does not support SMTPUTF8'),
]


@pytest.mark.parametrize('args,message', [c[1:] for c in SHORT_ERRORS],
                         ids=[c[0] for c in SHORT_ERRORS])
def test_our_errors_are_short(python_path_env, args, message):
    _assert_short_error(run_cli(python_path_env, '-n', *args), message)


@pytest.mark.parametrize('args,message', [
    (['--s'], 'option --s not a unique prefix'),
    (['--bogus'], 'option --bogus not recognized'),
    (['--size'], 'option --size requires argument'),
], ids=['stdlib-ambiguous-prefix', 'unknown', 'stdlib-missing-value'])
def test_stdlib_option_errors_keep_the_usage_text(python_path_env, args, message):
    out = run_cli(python_path_env, *args)
    assert out.returncode == 1
    assert '\nUsage: ' in out.stderr and '--nosetuid' in out.stderr
    assert out.stderr.rstrip('\n').splitlines()[-1] == message


def _all_longopts():
    from smtpd_compat.cli_options import GROUPS
    return [name for group in GROUPS for name, _, _ in group.options]


def test_stdlib_prefixes_keep_their_meaning():
    # On 3.11 --smtp, --cl and --si were unique prefixes of --smtputf8,
    # --class and --size; --smtps and the others must not make them ambiguous.
    options = smtpd_compat._parseargs(
        ['--smtp', '--cl', 'DebuggingServer', '--si', '10', '--smtps', 'h:1'],
        _all_longopts())
    assert options.enable_SMTPUTF8 is True
    assert (options.classname, options.size_limit) == ('DebuggingServer', 10)
    assert options.extra == [('--smtps', '')]


def test_user_class_errors_keep_their_traceback(python_path_env, tmp_path):
    # A TypeError from the user's own __init__ is their bug, not a usage
    # error: it is not turned into a short message.
    (tmp_path / 'broken_server.py').write_text(textwrap.dedent('''
        import smtpd_compat

        class Broken(smtpd_compat.SMTPServer):
            def __init__(self, *args, **kwargs):
                raise TypeError('bug in my own code')
    '''))
    env = dict(python_path_env)
    env['PYTHONPATH'] = str(tmp_path) + os.pathsep + env['PYTHONPATH']
    out = run_cli(env, '-n', '-c', 'broken_server.Broken', '127.0.0.1:0')
    assert out.returncode == 1
    assert 'Traceback' in out.stderr
    assert out.stderr.rstrip().endswith('TypeError: bug in my own code')


def test_help_is_grouped_and_fits_79_columns(python_path_env):
    from smtpd_compat.cli_options import GROUPS, RULE

    text = run_cli(python_path_env, '-h').stderr
    lines = text.splitlines()
    # The Usage line holds the program's path (as in the stdlib); the rest
    # fits 79 columns.
    assert [l for l in lines if len(l) > 79 and not l.startswith('Usage: ')] == []
    ours = text[text.index('\nsmtpd_compat options'):]
    assert ' '.join(RULE.split()) in ' '.join(ours.split())
    # One heading per capability with options, each option under its own.
    for group in GROUPS:
        name = 'smtpd_compat.' + group.module
        options = group.options
        if not options:
            continue
        heading = [l for l in lines if l.endswith('(%s):' % name)]
        assert len(heading) == 1, name
        start = lines.index(heading[0])
        following = [l for l in lines[start + 1:] if l.endswith('):') and not l.startswith(' ')]
        end = lines.index(following[0]) if following else len(lines)
        flags = [l.split()[0] for l in lines[start:end] if l.startswith('    --')]
        assert flags == ['--' + o.rstrip('=') for o, _, _ in options], name


# -- which options imply production mode ---------------------------------

def _configured(argv, tmp_logging=True):
    """The CLI after every group's configure (nothing is bound)."""
    import logging
    from smtpd_compat.__main__ import CLI
    from smtpd_compat.cli_options import GROUPS
    options = smtpd_compat._parseargs(argv + ['127.0.0.1:0'], _all_longopts())
    cli = CLI(options, smtpd_compat.DebuggingServer)
    logger = logging.getLogger('smtpd_compat')
    handlers, level = list(logger.handlers), logger.level
    try:
        for group in GROUPS:
            if group.configure is not None:
                group.configure(cli)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
    return cli


def _production(cli):
    from smtpd_compat.__main__ import _serve
    from smtpd_compat.limits import LimitsServerMixin
    limits = LimitsServerMixin in cli.mixins
    graceful = cli.serve is not _serve
    assert limits == graceful, 'limits and graceful shutdown come on together'
    return limits


@pytest.mark.parametrize('argv,production', [
    ([], False),
    (['--production'], True),
    (['--idle-timeout', '30'], True),
    (['--max-errors', '5'], True),
    (['--backlog', '10'], True),
    (['--grace-period', '5'], True),
    (['--log-level', 'DEBUG'], False),
    (['--proxy-protocol'], False),
    (['--esmtp', 'all'], False),
], ids=lambda v: ' '.join(v) if isinstance(v, list) else str(v))
def test_production_mode_rule(argv, production):
    cli = _configured(argv)
    assert _production(cli) is production


def test_workers_imply_production_mode():
    if not hasattr(os, 'fork'):
        pytest.skip('no fork() here')
    from smtpd_compat.limits import LimitsServerMixin
    assert LimitsServerMixin in _configured(['--workers', '2']).mixins


def test_tls_does_not_imply_production_mode(tls_certs):
    cli = _configured(['--tls-cert', tls_certs.cert_file])
    assert _production(cli) is False


def test_log_level_alone_only_configures_logging():
    from smtpd_compat.logging_ import SessionLogServerMixin
    cli = _configured(['--log-level', 'DEBUG'])
    assert cli.mixins == [SessionLogServerMixin]
    assert cli.server_kwargs == {}


def test_production_options_match_the_modules():
    # The rule's list names every option of the production-only groups
    # (but --log-level) and no option of any other capability.
    from smtpd_compat.cli_options import GROUPS, PRODUCTION_OPTIONS
    production_groups = {'limits', 'shutdown', 'workers'}
    for group in GROUPS:
        for option, _, _ in group.options:
            name = option.rstrip('=')
            expected = group.module in production_groups and name != 'log-level'
            assert (name in PRODUCTION_OPTIONS) is expected, name


# -- IPv6 addresses ------------------------------------------------------

def _has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(('::1', 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason='no ::1 here')


@pytest.mark.parametrize('spec,hostport', [
    ('[::1]:8025', ('::1', 8025)),
    ('[fe80::1%eth0]:25', ('fe80::1%eth0', 25)),
    ('h:1', ('h', 1)),
    (':25', ('', 25)),
    # As in 3.11: a bracketed host name is taken literally.
    ('[h]:25', ('[h]', 25)),
])
def test_address_forms(spec, hostport):
    options = smtpd_compat.parseargs([spec, spec])
    assert (options.localhost, options.localport) == hostport
    assert (options.remotehost, options.remoteport) == hostport


@pytest.mark.parametrize('spec,message', [
    ('[::1]', 'Bad local port: [::1]'),
    ('[::1]:x', 'Bad local port: [::1]:x'),
    ('::1:8025', 'Bad local port: ::1:8025'),
    ('[::1', 'Bad local port: [::1'),
])
def test_bad_ipv6_forms_keep_the_stdlib_messages(python_path_env, spec, message):
    out = run_cli(python_path_env, '-n', spec)
    assert out.returncode == 1
    assert '\nUsage: ' in out.stderr and '--nosetuid' in out.stderr
    assert out.stderr.rstrip('\n').splitlines()[-1] == message


def _free_ipv6_ports(count):
    socks = [socket.socket(socket.AF_INET6) for _ in range(count)]
    try:
        for s in socks:
            s.bind(('::1', 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_ipv6(proc, port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            socket.create_connection(('::1', port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, 'port %d not open' % port
            time.sleep(0.05)


@needs_ipv6
def test_ipv6_listen_and_relay(python_path_env):
    # A DebuggingServer on [::1] behind a PureProxy on [::1] whose remote
    # address is [::1] too.
    sink_port, proxy_port = _free_ipv6_ports(2)
    base = [sys.executable, '-m', 'smtpd_compat', '-n']
    env = dict(python_path_env, PYTHONUNBUFFERED='1')
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for argv in (base + ['-c', 'DebuggingServer', '[::1]:%d' % sink_port],
                          base + ['[::1]:%d' % proxy_port, '[::1]:%d' % sink_port])]
    try:
        _wait_ipv6(procs[0], sink_port)
        _wait_ipv6(procs[1], proxy_port)
        with smtplib.SMTP('::1', proxy_port, timeout=10) as client:
            assert client.sendmail('a@example.org', ['b@example.net'], MESSAGE) == {}
        outs = [_stop(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    sink_out = outs[0][0]
    assert "b'X-Peer: ::1'" in sink_out and "b'body line'" in sink_out
    assert all(proc.returncode == 0 for proc in procs)


def test_required_keywords_are_checked_before_building(capsys, monkeypatch):
    # A keyword-only argument that a capability class requires and no option
    # set is reported before the constructor runs (a TypeError raised at
    # the call would be a traceback in a user's subclass).
    from smtpd_compat.__main__ import CLI
    from smtpd_compat.delivery import MaildirServer

    class Sub(MaildirServer):
        pass

    monkeypatch.setattr(smtpd_compat, 'program', '/x/smtpd_compat/__main__.py')
    cli = CLI(smtpd_compat._parseargs(['-c', 'Sub', '127.0.0.1:0']), Sub)
    with pytest.raises(SystemExit) as exit_:
        cli.make_server()
    assert exit_.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [PROGRAM + ': -c Sub needs maildir=, which none of the options given sets',
                   POINTER]

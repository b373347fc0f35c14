"""``python -m smtpd_compat`` as a subprocess: help, version, argument
errors and exit codes as in CPython 3.11's ``python -m smtpd``, a real
message through ``-n -c DebuggingServer``, quiet exit on SIGTERM/SIGINT."""
import ast
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap

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


# The stdlib's own usage errors: its message, as the reason.
STDLIB_USAGE_ERRORS = [
    ('local-spec', ['-n', 'nocolon'], 'Bad local spec: nocolon'),
    ('remote-spec', ['-n', 'h:1', 'nocolon'], 'Bad remote spec: nocolon'),
    ('local-port', ['-n', 'h:x'], 'Bad local port: h:x'),
    ('remote-port', ['-n', 'h:1', 'r:y'], 'Bad remote port: r:y'),
    ('too-many', ['-n', 'a:1', 'b:2', 'c:3'], 'Invalid arguments: a:1, b:2, c:3'),
    ('long-option', ['--bogus'], 'option --bogus not recognized'),
    ('short-option', ['-Z'], 'option -Z not recognized'),
    ('missing-value', ['-c'], 'option -c requires argument'),
    ('stdlib-ambiguous-prefix', ['--s'], 'option --s not a unique prefix'),
    ('stdlib-missing-value', ['--size'], 'option --size requires argument'),
    ('invalid-size', ['-s', 'lots'], 'Invalid size: lots'),
]


@pytest.mark.parametrize('args,message', [c[1:] for c in STDLIB_USAGE_ERRORS],
                         ids=[c[0] for c in STDLIB_USAGE_ERRORS])
def test_usage_errors_are_the_reason_and_a_pointer(python_path_env, args, message):
    # Two lines, the reason first; the stdlib's exit status 1 (it printed
    # the whole help text with the reason last: docs/deviations.rst).
    out = run_cli(python_path_env, *args)
    _assert_short_error(out, message)
    assert out.stderr.splitlines()[0] == '%s: %s' % (PROGRAM, message)


@pytest.mark.parametrize('args,message,plain', [
    (['--bogus'], 'option --bogus not recognized', False),
    (['nocolon'], 'Bad local spec: nocolon', False),
    (['h:1', '-n'], 'Bad remote spec: -n', False),
    (['-s', 'lots'], 'Invalid size: lots', True),
], ids=['option', 'spec', 'option-after-address', 'size'])
def test_parseargs_keeps_the_stdlib_errors(python_path_env, args, message, plain):
    # smtpd_compat.parseargs(), the stdlib's function, is unchanged: the
    # help text then the reason (only the reason for a size), exit 1, and
    # no options after the addresses.
    out = subprocess.run(
        [sys.executable, '-c', 'import smtpd_compat, sys; '
         'smtpd_compat.parseargs(sys.argv[1:])'] + args,
        env=python_path_env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.rstrip('\n').splitlines()[-1] == message
    assert ('Usage: ' in out.stderr) is not plain


@pytest.mark.parametrize('typo,meant', [
    ('--prodution', '--production'), ('--tls-certs', '--tls-cert'),
    ('--smtputf', None), ('--nonsense', None),
])
def test_a_typo_names_the_option_meant(python_path_env, typo, meant):
    out = run_cli(python_path_env, typo, '1')
    if meant is None:
        # (--smtputf is a prefix: getopt takes it for --smtputf8, and the
        # "1" is an address without a port.)
        assert 'did you mean' not in out.stderr
    else:
        _assert_short_error(out, 'option %s not recognized (did you mean %s?)'
                            % (typo, meant))


def _stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            # (Reaped, its pipes closed: nothing of it is left to warn in
            # whatever test runs next.)
            proc.kill()
            proc.communicate()


MESSAGE = b'From: a@example.org\r\nSubject: cli\r\n\r\nbody line\r\n.leading dot\r\n'


# The command line with a stop handler whose KeyboardInterrupt is dropped,
# as when the signal lands inside a weakref callback or a __del__ (where
# CPython prints an exception and goes on): seen in CI as a SIGTERM that
# arrived while the loop imported ``resource``, after which the server
# served on and never stopped.  argv: when the signal comes ('startup':
# raised as the server has been made; 'serving': sent by the test), then
# the command line's arguments.
LOST_STOP = """
import os, signal, sys
import smtpd_compat.__main__ as m

real = m._terminate


def dropped(signum, frame):
    try:
        real(signum, frame)
    except KeyboardInterrupt:
        # (Not sys.stderr: the main thread may be writing to it.)
        os.write(2, b'Exception ignored: KeyboardInterrupt\\n')


m._terminate = dropped
if sys.argv[1] == 'startup':
    make_server = m.CLI.make_server

    def make_and_stop(self):
        server = make_server(self)
        signal.raise_signal(signal.SIGTERM)
        return server
    m.CLI.make_server = make_and_stop
m.main(sys.argv[2:])
"""


@pytest.mark.skipif(not hasattr(signal, 'raise_signal'),
                    reason='signal.raise_signal is new in Python 3.8')
@pytest.mark.parametrize('when, options', [
    ('startup', ['--log-level', 'WARNING']),
    ('serving', ['--log-level', 'WARNING']),
    ('startup', ['--production', '--grace-period', '1']),
    ('startup', ['--workers', '2', '--log-level', 'WARNING']),
], ids=['plain-startup', 'plain-serving', 'production-startup', 'workers-startup'])
def test_a_stop_whose_keyboardinterrupt_is_dropped_still_stops(
        python_path_env, when, options):
    # (A group of its own: a server that did not stop is killed with its
    # workers, whose pipes would otherwise keep communicate() waiting.)
    proc = subprocess.Popen(
        [sys.executable, '-c', LOST_STOP, when, '-n', '-c', 'DebuggingServer']
        + options + ['127.0.0.1:0'],
        env=python_path_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        if when == 'serving':
            # Once a client has its greeting, the loop serves.
            port = _start_line_port(proc.stderr.readline())
            with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
                assert sock.recv(1024).startswith(b'220 ')
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail('still running 15 s after the stop signal: %s' % err)
    assert proc.returncode == 0, err
    # The handler did drop its exception; no traceback otherwise.
    assert err.count('Exception ignored: KeyboardInterrupt') == 1, err
    assert 'Traceback' not in err, err


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
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith(PROGRAM + ': ')
    assert message in lines[0]
    assert lines[1] == POINTER


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
    _assert_short_error(run_cli(python_path_env, '-n', spec), message)


@needs_ipv6
def test_ipv6_listen_and_relay(python_path_env, cli_server):
    # A DebuggingServer on [::1] behind a PureProxy on [::1] whose remote
    # address is [::1] too.
    env = dict(python_path_env, PYTHONUNBUFFERED='1')
    sink, sink_port = cli_server('-c', 'DebuggingServer', env=env, host='::1')
    proxy, proxy_port = cli_server(env=env, host='::1',
                                   remoteaddr=('::1', sink_port))
    procs = [sink, proxy]
    try:
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


# -- starting up: a port, a file that will not do, where it listens --------

@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 that another socket listens on."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _assert_one_line(out, line):
    assert out.returncode == 1
    assert out.stdout == ''
    assert out.stderr == '%s: %s\n' % (PROGRAM, line)


@pytest.mark.parametrize('extra', [[], ['--log-level', 'INFO']],
                         ids=['stdlib-options', 'our-options'])
def test_busy_port_is_one_line(python_path_env, busy_port, extra):
    out = run_cli(python_path_env, '-n', '-c', 'DebuggingServer', *extra,
                  '127.0.0.1:%d' % busy_port)
    _assert_one_line(out, 'cannot listen on 127.0.0.1 port %d: Address '
                     'already in use' % busy_port)


def test_address_not_here_is_one_line(python_path_env):
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: bind() fails,
    # nothing is sent anywhere.
    out = run_cli(python_path_env, '-n', '192.0.2.1:8025')
    _assert_one_line(out, 'cannot listen on 192.0.2.1 port 8025: Cannot '
                     'assign requested address')


def test_busy_web_port_is_one_line(python_path_env, busy_port):
    out = run_cli(python_path_env, '-n', '--web', '127.0.0.1:%d' % busy_port,
                  '127.0.0.1:0')
    _assert_one_line(out, 'cannot serve the web inbox on 127.0.0.1 port %d: '
                     'Address already in use' % busy_port)


def test_lmtp_socket_path_taken_is_one_line(python_path_env, tmp_path):
    path = tmp_path / 'not-a-socket'
    path.write_text('a file of someone else\n')
    out = run_cli(python_path_env, '-n', '-c', 'LMTPServer', '--mbox',
                  str(tmp_path / 'mbox'), '--lmtp-socket', str(path))
    _assert_one_line(out, 'cannot listen on %s: Address already in use' % path)
    assert path.read_text() == 'a file of someone else\n'


@pytest.fixture(scope='module')
def pem(tmp_path_factory):
    """PEM files: a certificate, its key, another certificate's key, the
    key and chain in one file, something that is not PEM."""
    from conftest import _trustme
    if _trustme is None:
        pytest.skip('trustme is not installed')
    d = tmp_path_factory.mktemp('pem')
    ca = _trustme.CA()
    cert, other = ca.issue_cert('localhost'), ca.issue_cert('other')
    cert.cert_chain_pems[0].write_to_path(str(d / 'cert.pem'))
    cert.private_key_pem.write_to_path(str(d / 'key.pem'))
    other.private_key_pem.write_to_path(str(d / 'other-key.pem'))
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / 'both.pem'))
    (d / 'notes.txt').write_text('not a certificate\n')
    return d


TLS_FILE_ERRORS = [
    ('missing', ['missing.pem'],
     "cannot read the certificate file '{d}/missing.pem': No such file or directory"),
    ('unreadable', ['.'],
     "cannot read the certificate file '{d}/.': Is a directory"),
    ('key-missing', ['cert.pem', 'missing.pem'],
     "cannot read the key file '{d}/missing.pem': No such file or directory"),
    ('swapped', ['key.pem', 'cert.pem'],
     "the certificate file '{d}/key.pem' holds a private key, not a certificate"),
    ('key-is-a-certificate', ['cert.pem', 'cert.pem'],
     "the key file '{d}/cert.pem' holds a certificate, not a private key"),
    ('not-matching', ['cert.pem', 'other-key.pem'],
     "the private key in '{d}/other-key.pem' does not match the certificate "
     "in '{d}/cert.pem'"),
    ('no-key', ['cert.pem'],
     "the certificate file '{d}/cert.pem' holds no private key (give the key "
     "file too)"),
    ('not-pem', ['notes.txt'],
     "the certificate file '{d}/notes.txt' holds no PEM certificate"),
]


@pytest.mark.parametrize('files,message', [c[1:] for c in TLS_FILE_ERRORS],
                         ids=[c[0] for c in TLS_FILE_ERRORS])
def test_tls_file_errors_name_the_file_and_the_problem(python_path_env, pem,
                                                       files, message):
    args = ['--tls-cert', '%s/%s' % (pem, files[0])]
    if len(files) > 1:
        args += ['--tls-key', '%s/%s' % (pem, files[1])]
    out = run_cli(python_path_env, '-n', *args, '127.0.0.1:0')
    _assert_short_error(out, '--tls-cert/--tls-key: ' + message.format(d=pem))


def test_tls_files_that_do_load(python_path_env, pem):
    from smtpd_compat.tls import server_context
    server_context(str(pem / 'cert.pem'), str(pem / 'key.pem'))
    server_context(str(pem / 'both.pem'))


@pytest.mark.parametrize('case', ['missing', 'directory', 'binary', 'bad-line'])
def test_auth_file_errors_name_the_file_and_the_problem(python_path_env,
                                                        tmp_path, case):
    path = tmp_path / 'users'
    if case == 'directory':
        path.mkdir()
        message = "--auth-file: cannot read '%s': Is a directory" % path
    elif case == 'missing':
        message = "--auth-file: cannot read '%s': No such file or directory" % path
    elif case == 'binary':
        path.write_bytes(b'\x89PNG\r\n\x1a\n\xff\xfe')
        message = ('--auth-file: %s is not a text file of login:hash lines '
                   '(not UTF-8)' % path)
    else:
        path.write_text('# users\nalice:not-a-hash\n')
        message = '--auth-file: %s line 2: not a $scheme$params$salt$key hash' % path
    out = run_cli(python_path_env, '-n', '--auth-file', str(path),
                  '--auth-allow-plaintext', '127.0.0.1:0')
    _assert_short_error(out, message)


def _start(python_path_env, *args, address='127.0.0.1:0'):
    """Run the CLI; returns (process, first line of stderr)."""
    import selectors
    proc = subprocess.Popen(
        [sys.executable, '-m', 'smtpd_compat', '-n'] + list(args)
        + ([address] if address else []),
        env=python_path_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        if not selector.select(30):
            proc.kill()
            pytest.fail('no start line within 30 s: %r' % (proc.communicate(),))
    return proc, proc.stderr.readline()


def _start_line_port(line):
    assert line.startswith(PROGRAM + ': listening for '), line
    return int(line.split(' on ')[1].split()[0].rstrip('.').rpartition(':')[2])


def test_start_line_names_the_port_the_system_chose(python_path_env):
    proc, line = _start(python_path_env, '-c', 'DebuggingServer',
                        '--log-level', 'WARNING')
    try:
        port = _start_line_port(line)
        assert line == '%s: listening for SMTP on 127.0.0.1:%d.\n' % (PROGRAM, port)
        with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
            assert client.noop()[0] == 250
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_start_line_names_the_web_inbox_too(python_path_env):
    proc, line = _start(python_path_env, '--web', '127.0.0.1:0',
                        '-c', 'WebInboxServer')
    try:
        smtp, _, web = line.partition('. Web inbox at ')
        port = _start_line_port(smtp)
        assert web.startswith('http://127.0.0.1:') and web.endswith('/\n')
        with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
            client.sendmail('a@example.org', ['b@example.org'], 'Subject: x\r\n\r\ny\r\n')
        import json
        import urllib.request
        with urllib.request.urlopen(web.strip() + 'api/v1/info', timeout=30) as r:
            assert json.load(r)['Messages'] == 1
    finally:
        _, err = _stop(proc)
    assert err == ''    # nothing else was said


def test_start_line_for_a_capability_class_alone(python_path_env):
    # No option of ours, but not the stdlib's command line either: the
    # web inbox's page has to be found.
    proc, line = _start(python_path_env, '-c', 'WebInboxServer')
    try:
        assert ' Web inbox at http://' in line
    finally:
        _stop(proc)


def test_start_line_for_lmtp_on_a_unix_socket(python_path_env, tmp_path):
    path = tmp_path / 'lmtp.sock'
    proc, line = _start(python_path_env, '-c', 'LMTPServer', '--mbox',
                        str(tmp_path / 'mbox'), '--lmtp-socket', str(path),
                        address=None)
    try:
        assert line == '%s: listening for LMTP on %s.\n' % (PROGRAM, path)
    finally:
        _stop(proc)


def test_start_line_for_implicit_tls(python_path_env, pem):
    proc, line = _start(python_path_env, '--tls-cert', str(pem / 'both.pem'),
                        '--smtps')
    try:
        assert line.startswith('%s: listening for SMTPS on 127.0.0.1:' % PROGRAM)
    finally:
        _stop(proc)


def test_start_line_once_with_workers(python_path_env):
    if not hasattr(os, 'fork'):
        pytest.skip('no fork() here')
    proc, line = _start(python_path_env, '--workers', '2')
    try:
        port = _start_line_port(line)
        with smtplib.SMTP('127.0.0.1', port, timeout=10) as client:
            assert client.noop()[0] == 250
    finally:
        _, err = _stop(proc)
    assert 'listening for' not in err


def test_readme_commands_are_valid():
    # The command lines README.md gives newcomers parse, name a class that
    # exists, and listen where they say.
    from smtpd_compat.__main__ import _capability_modules, _resolve_class
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, 'README.md')) as f:
        commands = [line.split()[3:] for line in f
                    if line.startswith('    python -m smtpd_compat ')]
    assert len(commands) >= 2
    modules = _capability_modules()
    for argv in commands:
        options = smtpd_compat._parseargs(argv, _all_longopts(), cli=True)
        assert isinstance(_resolve_class(options.classname, modules), type)
        assert (options.localhost, options.localport) == ('localhost', 8025)


# -- what a server process imports ------------------------------------------

_IMPORTED = '''
import sys
import smtpd_compat.__main__ as cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in ('smtpd_compat.web', 'smtpd_compat.tls', 'ssl',
                         'smtpd_compat.relay') if m in sys.modules))
'''


@pytest.mark.parametrize('args, present, absent', [
    (['-c', 'DebuggingServer', '--production'], [],
     ['smtpd_compat.web', 'smtpd_compat.tls', 'ssl', 'smtpd_compat.relay']),
    (['-c', 'SMTPServer', '--workers', '2'], [],
     ['smtpd_compat.web', 'smtpd_compat.tls', 'ssl', 'smtpd_compat.relay']),
    (['--web', '127.0.0.1:0'], ['smtpd_compat.web'], []),
    (['-c', 'CapturingServer'], ['smtpd_compat.web'], []),
    (['-c', 'RelayServer'], ['smtpd_compat.relay', 'ssl'], ['smtpd_compat.web']),
], ids=['production', 'workers', 'web', 'class-of-the-web-layer', 'relay'])
def test_a_server_imports_only_the_capabilities_it_uses(python_path_env, args,
                                                        present, absent):
    # Each module costs memory in every process (the web package ~10 MiB,
    # ssl ~4 MiB): with --workers, in every worker.  --package-version
    # makes main() stop after every option group has configured.
    out = subprocess.run(
        [sys.executable, '-W', 'ignore', '-c', _IMPORTED] + args + ['--package-version'],
        env=python_path_env, capture_output=True, text=True, timeout=60)
    imported = ast.literal_eval(out.stdout.splitlines()[-1])
    assert set(present) <= set(imported), out.stderr
    assert not set(absent) & set(imported), out.stderr

"""``python -m smtpd_compat``: the stdlib's ``python -m smtpd`` command line,
plus the long options of the opt-in capabilities.

With only the stdlib's options it runs what ``python -m smtpd`` ran on
Python 3.11 (PureProxy by default; setuid to nobody unless -n; the same
help text, option meanings and exit codes) and prints nothing while it
serves.  Its manners differ where the stdlib's were rough (see
docs/deviations.rst, "The command line"):

* options may follow the addresses;
* a usage error is two lines on stderr, the reason and a pointer to
  ``-h`` (exit status 1, as in the stdlib), never the whole help text;
* an address that cannot be listened on is one line naming it, never a
  traceback; so is a server class that cannot be built from the options;
* Ctrl-C and SIGTERM exit quietly with status 0;
* when any of smtpd_compat's own options is given, one line on stderr
  says where the server listens once it is up (SMTP or LMTP address, the
  web inbox's URL).

The options of the capabilities, what each does to the server, and the
rule of production mode are in :mod:`smtpd_compat.cli_options`: one group
per capability module, applied to the :class:`CLI` after parsing.
"""
from __future__ import annotations

import collections.abc
import difflib
import getopt
import importlib
import inspect
import itertools
import logging
import os
import signal
import socket
import sys
import textwrap
import types
from typing import (Any, Callable, Dict, Iterable, Iterator, List, NoReturn,
                    Optional, Tuple, Type)

import smtpd_compat as _smtpd
from smtpd_compat.cli_options import GROUPS as _GROUPS
from smtpd_compat.cli_options import RULE as _PRODUCTION_RULE
from smtpd_compat.cli_options import Serve
from smtpd_compat.compose import REQUIRED, compose_server

__all__ = ['main', 'CLI']

# The capability modules -c looks a bare class name up in (after
# smtpd_compat itself), in the order of their option groups, and the
# heading of each group's options in the help text.
_CAPABILITIES = tuple((group.module, group.title) for group in _GROUPS)
_TITLES = dict(_CAPABILITIES)

# The help text's width (the stdlib's own text fits it, bar the Usage line
# that holds the program's path).
_WIDTH = 79


def _capability_modules() -> Iterator[types.ModuleType]:
    """The capability modules, each imported only when reached: a -c class
    found early (or named with its module) leaves the rest unimported
    (the web package alone is ~10 MiB in every process)."""
    for name, _ in _CAPABILITIES:
        yield importlib.import_module('smtpd_compat.' + name)


def _long_options() -> List[str]:
    """The getopt long option names the capabilities add."""
    return [name for group in _GROUPS for name, _, _ in group.options]


class CLI:
    """What ``python -m smtpd_compat`` is about to run; capabilities adjust it.

    options: the parsed stdlib options (localhost, localport, remotehost,
        remoteport, size_limit, classname, setuid, enable_SMTPUTF8).
    given: the capability options given, long name without dashes and
        '=' -> value ('' for flags; the last one wins when repeated).
    server_class: the class named by -c.
    mixins: capability server mixins to add to server_class (in any order:
        composition puts them in their layers).
    server_kwargs: keyword arguments for the server's constructor.
    serve: callable(cli, server) that runs until shutdown.
    """

    def __init__(self, options: _smtpd.Options,
                 server_class: Type[_smtpd.SMTPServer]) -> None:
        self.options = options
        self.given: Dict[str, str] = {
            opt.lstrip('-'): value for opt, value in options.extra}
        self.server_class = server_class
        self.mixins: List[type] = []
        self.server_kwargs: Dict[str, Any] = {}
        if options.enable_SMTPUTF8:
            self.server_kwargs['enable_SMTPUTF8'] = True
        self.serve: Serve = _serve

    @staticmethod
    def stop_requested() -> bool:
        """True once a stop signal came while the command line's first
        handler had them (from before the port is bound until a serve
        function takes them over): a serve function that takes them over
        asks this afterwards, for a signal whose KeyboardInterrupt was
        lost (see _stop_if_asked)."""
        return _stopping

    def error(self, msg: str) -> NoReturn:
        """Exit with status 1 after a short message on stderr: ``msg`` and
        a pointer to the help (not the whole usage text)."""
        _short_error(msg)

    def require_class(self, base: type, option: str) -> None:
        """Exit with an error unless -c named ``base`` or a subclass: for
        options that only mean something to that class."""
        if not (isinstance(self.server_class, type)
                and issubclass(self.server_class, base)):
            self.error('--%s needs -c %s or a subclass' % (option, base.__name__))

    def make_server(self) -> _smtpd.SMTPServer:
        """Build the server.  A class that cannot be built from the options
        given is a CLI error (see _configuration_error), and an address it
        cannot listen on one line naming it (see _listen_failure), never a
        traceback; exceptions from the user's own code still propagate."""
        cls = compose_server(self.server_class, self.mixins)
        missing = [name for name in _required_keywords(cls)
                   if name not in self.server_kwargs]
        if missing:
            self.error('-c %s needs %s, which none of the options given sets'
                       % (self.options.classname, ', '.join(
                           '%s=' % name for name in missing)))
        o = self.options
        try:
            return cls((o.localhost, o.localport), (o.remotehost, o.remoteport),
                       o.size_limit, **self.server_kwargs)
        except (TypeError, ValueError) as e:
            if not _configuration_error(e):
                raise
            self.error('-c %s cannot be built from these options: %s'
                       % (self.options.classname, e))
        except OSError as e:
            where = _listen_failure(e)
            if where is not None:
                _fail('cannot listen on %s: %s' % (where, e.strerror or e))
            if _configuration_error(e):
                # Raised by smtpd_compat with a message that says what
                # (the web inbox's address, a certificate file).
                _fail(str(e.strerror or e))
            raise


def _program() -> str:
    """How the user ran us, for messages: ``python -m smtpd_compat`` (or
    ``python -m smtpd`` through the top-level shim), else the script's name."""
    name = os.path.basename(_smtpd.program or '')
    if name in ('', '-m', '-c', '__main__.py'):
        return 'python -m smtpd_compat'
    if name == 'smtpd.py':
        return 'python -m smtpd'
    return name


def _fail(msg: str) -> NoReturn:
    """One line on stderr, exit status 1: a server that cannot start."""
    print('%s: %s' % (_program(), msg), file=sys.stderr)
    sys.exit(1)


def _short_error(msg: str) -> NoReturn:
    """A usage error (the stdlib's options, ours, or the class they build):
    the reason in one line, then where the help is; exit status 1."""
    program = _program()
    print('%s: %s' % (program, msg), file=sys.stderr)
    print("Try '%s -h' for help." % program, file=sys.stderr)
    sys.exit(1)


def _did_you_mean(error: getopt.GetoptError, longopts: collections.abc.Sequence[str]) -> str:
    """' (did you mean --NAME?)' for an unrecognized long option close to
    one that exists (a typo), else ''."""
    if not error.opt or not error.msg.startswith('option --'):
        return ''
    names = [o.rstrip('=') for o in longopts]
    close = difflib.get_close_matches(error.opt, names, n=1, cutoff=0.75)
    return ' (did you mean --%s?)' % close[0] if close else ''


def _in_package(filename: str) -> bool:
    """True for a file of smtpd_compat, its subpackages (web) included."""
    here = os.path.dirname(os.path.abspath(_smtpd.__file__))
    folder = os.path.dirname(os.path.abspath(filename))
    return folder == here or folder.startswith(here + os.sep)


def _configuration_error(exc: BaseException) -> bool:
    """True when a TypeError/ValueError from building the server comes from
    smtpd_compat itself -- a constructor refusing its arguments, or the call
    in make_server not matching the class -- rather than from the user's
    own code, whose exceptions keep their traceback."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _in_package(tb.tb_frame.f_code.co_filename)


def _listen_failure(exc: OSError) -> Optional[str]:
    """Where a listening socket failed, when ``exc`` came from resolving or
    binding one (socket.getaddrinfo, asyncore's bind): "HOST port PORT" or
    a UNIX socket's path; None for any other OSError.  Read from the
    failing call's own arguments, so that it names what was asked for.
    (The web inbox names its own address in its error.)"""
    tb = exc.__traceback__
    address = None
    while tb is not None:
        code = tb.tb_frame.f_code
        args = tb.tb_frame.f_locals
        if code is socket.getaddrinfo.__code__:
            address = (args.get('host'), args.get('port'))
        elif code is _smtpd.asyncore.dispatcher.bind.__code__:
            address = args.get('addr')
        tb = tb.tb_next
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        if isinstance(host, bytes):
            host = host.decode('ascii', 'replace')
        return '%s port %s' % (host, address[1])
    if isinstance(address, (str, bytes)):
        return os.fsdecode(address)
    return None


def _required_keywords(cls: type) -> List[str]:
    """Keyword-only arguments without a default in the __init__ methods of
    ``cls`` (none, or smtpd_compat.compose.REQUIRED unless ``cls`` sets the
    attribute of that name), as far as its MRO stays in smtpd_compat (a
    user's __init__ may supply them itself)."""
    required: List[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        code = getattr(init, '__code__', None)
        if code is None or not _in_package(code.co_filename):
            break
        for param in inspect.signature(init).parameters.values():
            if param.kind is not param.KEYWORD_ONLY or param.name in required:
                continue
            if param.default is param.empty or (
                    param.default is REQUIRED and not hasattr(cls, param.name)):
                required.append(param.name)
    return required


def _resolve_class(classname: str, modules: Iterable[types.ModuleType]) -> Any:
    """A dotted name is imported; a bare one is looked up in smtpd_compat,
    then in the capability modules.  A name that finds no class is a CLI
    error; an exception raised by the imported module itself propagates."""
    if '.' in classname:
        modname, _, attr = classname.rpartition('.')
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name is None or not (modname + '.').startswith(e.name + '.'):
                raise
            _short_error('-c %s: no module named %r' % (classname, e.name))
        cls = getattr(module, attr, None)
    else:
        cls = None
        for mod in itertools.chain([_smtpd], modules):
            cls = getattr(mod, classname, None)
            if cls is not None:
                break
    if cls is None:
        _short_error('-c %s: no such class (a bare name is looked up in '
                     'smtpd_compat and its capability modules)' % classname)
    if not isinstance(cls, type):
        _short_error('-c %s: not a class' % classname)
    return cls


def _stdlib_invocation(cli: CLI) -> bool:
    """True for a command line the stdlib's ``python -m smtpd`` took: only
    its options, and a class of its own or of the user's (not one of
    smtpd_compat's capability classes such as WebInboxServer)."""
    module = getattr(cli.server_class, '__module__', '')
    return not cli.given and not module.startswith('smtpd_compat.')


def _describe(address: Any) -> str:
    """A socket address as people write it: host:port, [v6]:port, a path."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        if ':' in host:
            host = '[%s]' % host
        return '%s:%s' % (host, address[1])
    return os.fsdecode(address) if isinstance(address, (str, bytes)) else str(address)


def _start_line(server: _smtpd.SMTPServer) -> str:
    """The line that says where ``server`` listens: its SMTP (SMTPS, LMTP)
    address -- the port the system chose for port 0, the path of a UNIX
    socket -- and the web inbox's URL when it has one."""
    sock = server.socket
    address = sock.getsockname() if sock is not None else server._localaddr
    protocol = 'SMTP'
    if getattr(server.channel_class, 'transmission_type', None) == 'LMTP':
        protocol = 'LMTP'
    elif getattr(server, 'implicit_tls', False):
        protocol = 'SMTPS'
    line = '%s: listening for %s on %s.' % (_program(), protocol,
                                           _describe(address))
    web_url = getattr(server, 'web_url', None)
    if web_url:
        line += ' Web inbox at %s' % web_url
    return line


def _serve(cli: CLI, server: _smtpd.SMTPServer) -> None:
    """Serve with smtpd_compat's epoll loop (asyncore.loop's select() stops
    at 1,024 descriptors), with the open-files limit raised to the hard
    limit so that many connections can be held."""
    global _serving
    from smtpd_compat import loop
    loop.raise_fd_limit()
    services = loop.services(server._map)
    # A stop signal that lands between the loop's check for pending signals
    # and its epoll_wait() would only be acted on when the wait ends (the
    # classic signal/select race; seen as a rare 30 s delay before SIGTERM
    # took effect on a loaded machine): the signal itself wakes the loop.
    with services.wake_on_signals():
        _serving = services
        try:
            _stop_if_asked()
            loop.loop(map=server._map)
        finally:
            _serving = None


# The loop services of the map _serve() serves, while it does.
_serving: Optional[Any] = None


def _stop_if_asked() -> None:
    """Raise the KeyboardInterrupt of a stop signal that _terminate took
    and whose exception never reached main(): a signal handler runs
    between two bytecodes of whatever the main thread runs, and raised
    inside a weakref callback or a __del__ (the import system's, as the
    loop imported ``resource``: seen in CI) the exception is printed and
    dropped, and the server served on."""
    if _stopping:
        raise KeyboardInterrupt


# Set once a stop signal has been acted on (or serving is over).
_stopping = False


def _terminate(signum: int, frame: Optional[types.FrameType]) -> None:
    """SIGTERM/SIGINT handler: the first signal ends the server like
    Ctrl-C did (a KeyboardInterrupt that main() catches); later ones are
    ignored, so that a second signal arriving while the first unwinds
    cannot raise again: no traceback, and no exit status 130."""
    global _stopping
    if _stopping:
        return
    # Not SIG_IGN yet (main() switches to it on its way out): when two stop
    # signals arrive together, CPython runs this handler for the first and
    # leaves the second noted for its next check; had its handler become
    # SIG_IGN meanwhile, CPython would print "OSError: Signal 15 ignored
    # due to race condition".  Noted here, it finds this handler, which
    # returns.
    _stopping = True
    # Should the exception below be dropped (see _stop_if_asked), the loop
    # raises it again when the signal wakes it, and a server about to
    # serve raises it before it does.
    services = _serving
    if services is not None:
        services.call_soon_from_signal(_stop_if_asked)
    raise KeyboardInterrupt


# The stop signals main() took over (_handle_stop_signals), and so ignores
# once it is stopping.
_stop_signals: List[int] = []


def _handle_stop_signals() -> None:
    global _stopping
    _stopping = False
    _stop_signals[:] = [signal.SIGTERM]
    signal.signal(signal.SIGTERM, _terminate)
    # Only where Python's own Ctrl-C handler is in place: a SIGINT ignored
    # by the parent (a background job of a non-interactive shell) stays
    # ignored.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _stop_signals.append(signal.SIGINT)
        signal.signal(signal.SIGINT, _terminate)


def _ignore_stop_signals() -> None:
    """From now on the process is stopping: the stop signals main() took
    over are ignored.  SIG_IGN rather than a quiet Python handler: at
    finalization Python resets the signals it handles to their default
    action, and a late SIGTERM would then kill the process (status -15) on
    its way out.

    Whatever handles them now: _terminate, or the graceful shutdown's
    handler (production mode) when a signal interrupted the shutdown as it
    put _terminate back, one signal at a time -- the other one then keeps
    a Python handler, and a late SIGINT killed the process (-2)."""
    global _stopping
    _stopping = True
    ours, _stop_signals[:] = list(_stop_signals), []
    if not ours:
        return
    # Blocked while the handlers change: signal.signal() runs the pending
    # handlers, then switches; a signal landing in between would be left
    # noted with no Python handler to run, and CPython prints "OSError:
    # Signal 15 ignored due to race condition".  Blocked, it waits in the
    # kernel instead, and SIG_IGN discards it.  (pthread_sigmask runs the
    # handlers of signals that came before it: _terminate, quietly.)  The
    # mask is the main thread's: a process with threads that do not block
    # these signals (--threads workers) can still take one there.
    previous = (signal.pthread_sigmask(signal.SIG_BLOCK, ours)
                if hasattr(signal, 'pthread_sigmask') else None)
    try:
        for signum in ours:
            signal.signal(signum, signal.SIG_IGN)
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# -- SIGHUP: reload certificates and the auth file -------------------------
#
# logrotate and ``systemctl reload`` send SIGHUP, whose default action would
# end the process.  Until the server exists the handler only notes it; then
# the server's loop takes the signal over (LoopServices.add_signal_handler)
# and runs the reloads on the loop thread, between events, so no file is
# read inside a signal handler and no connection is interrupted halfway
# through a handler.  Each ``reload()`` keeps what it had when the new files
# are bad, and raises; that is logged.

_reload_wanted: List[int] = []


def _request_reload(signum: int, frame: Optional[types.FrameType]) -> None:
    _reload_wanted.append(signum)


def _reload_all(server: _smtpd.SMTPServer) -> None:
    """Call every ``reload()`` the server offers: its own (TLSServerMixin:
    the certificate) and its authenticator's (FileAuthenticator)."""
    logger = logging.getLogger('smtpd_compat')
    for target in (server, getattr(server, 'authenticator', None)):
        reload = getattr(target, 'reload', None)
        if not callable(reload):
            continue
        try:
            reload()
        except Exception as e:
            logger.error('SIGHUP: %s.reload() failed, keeping what was '
                         'loaded: %s', type(target).__name__, e)


def _install_reload(server: _smtpd.SMTPServer) -> Callable[[], None]:
    """Reload on SIGHUP while ``server``'s loop runs; returns a function
    that puts the early handler back."""
    from smtpd_compat import loop
    if not hasattr(signal, 'SIGHUP'):
        return lambda: None
    services = loop.services(server._map)
    services.add_signal_handler(signal.SIGHUP, _reload_all, server)
    if _reload_wanted:
        # One came before the server existed.
        del _reload_wanted[:]
        services.call_later(0, _reload_all, server)

    def uninstall() -> None:
        services.remove_signal_handler(signal.SIGHUP)

    return uninstall


def _help_text() -> str:
    """smtpd_compat's options for the help, after the stdlib's text: one
    group per capability module, wrapped to _WIDTH columns."""
    def fill(text: str, indent: str) -> str:
        return textwrap.fill(text, _WIDTH, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)

    groups = []
    for group in _GROUPS:
        if not group.options:
            continue
        lines = ['%s (smtpd_compat.%s):' % (group.title, group.module), '']
        for option, metavar, text in group.options:
            flag = '--' + option.rstrip('=')
            if metavar:
                flag += ' ' + metavar
            lines += ['    ' + flag, fill(text, ' ' * 8), '']
        groups.append('\n'.join(lines))
    if not groups:
        return ''
    intro = '\n\n'.join(fill(text, '') for text in (
        'smtpd_compat options (long options only).  Options may also follow '
        'the addresses.  An IPv6 address is written in brackets: '
        '[::1]:8025.', _PRODUCTION_RULE)) + '\n'
    return '\n' + intro + '\n' + '\n'.join(groups).rstrip('\n')


def main(argv: Optional[List[str]] = None) -> None:
    """Run the server as ``python -m smtpd_compat`` does; argv defaults to
    ``sys.argv[1:]``."""
    if argv is None:
        argv = sys.argv[1:]
    if _smtpd.program == '-m':
        # Imported by ``python -m`` before runpy set sys.argv[0] to the
        # script's path: name the program the way the stdlib's usage did.
        _smtpd.program = sys.argv[0]
    modules = _capability_modules()
    longopts = _long_options()
    _smtpd._usage_epilog = _help_text()
    try:
        options = _smtpd._parseargs(argv, longopts, cli=True)
    except getopt.GetoptError as e:
        _short_error(e.msg + _did_you_mean(e, longopts))
    cli = CLI(options, _resolve_class(options.classname, modules))
    for group in _GROUPS:
        if group.configure is not None:
            group.configure(cli)
    try:
        # SIGTERM ends the server like Ctrl-C: quietly, with status 0 --
        # from before the port is bound, so that no signal finds the
        # default action.
        _handle_stop_signals()
        if hasattr(signal, 'SIGHUP'):
            signal.signal(signal.SIGHUP, _request_reload)
        server = cli.make_server()
        uninstall_reload = _install_reload(server)
        try:
            if options.setuid:
                _become_nobody(server)
            if not _stdlib_invocation(cli):
                # The stdlib's command line said nothing; with anything of
                # ours, one line says where to connect.
                print(_start_line(server), file=sys.stderr, flush=True)
            cli.serve(cli, server)
        finally:
            uninstall_reload()
    except KeyboardInterrupt:
        pass
    finally:
        _ignore_stop_signals()


def _become_nobody(server: Optional[_smtpd.SMTPServer] = None) -> None:
    """setuid to the user nobody, exiting with the stdlib's messages when
    that is impossible.

    Before that, hand ``nobody`` what the server created as root at start
    (``server.created_paths``: Maildir directories, an mbox file, an LMTP
    socket), so that it can still deliver (RFC 5321 section 6.1: a 250 is
    a promise to deliver), and drop root's supplementary groups and group
    id too: setuid alone leaves the process in group 0."""
    try:
        import pwd
    except ImportError:
        print('Cannot import module "pwd"; try running with -n option.',
              file=sys.stderr)
        sys.exit(1)
    entry = pwd.getpwnam('nobody')
    uid, gid = entry.pw_uid, entry.pw_gid
    try:
        if os.geteuid() == 0:
            paths: collections.abc.Sequence[str] = getattr(server, 'created_paths', ())
            for path in paths:
                os.chown(path, uid, gid, follow_symlinks=False)
            # Groups first: only root may change them, so after setuid it
            # would be too late.  (Not root: as in the stdlib, only the
            # setuid, which succeeds for nobody itself.)
            os.setgroups([])
            os.setgid(gid)
        os.setuid(uid)
    except PermissionError:
        print('Cannot setuid "nobody"; try running with -n option.',
              file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()

"""``python -m smtpd_compat``: the stdlib's ``python -m smtpd`` command line,
plus the long options of the opt-in capabilities.

With only the stdlib's options it behaves as ``python -m smtpd`` did on
Python 3.11 (same usage text, messages and exit codes; PureProxy by default;
setuid to nobody unless -n), except that Ctrl-C and SIGTERM exit quietly
with status 0.

How a capability adds options, without this file naming its flags: a module
listed in _CAPABILITIES may define

``CLI_OPTIONS``
    a sequence of ``(name, metavar, help)``: a getopt long option name
    (``'tls-cert='`` takes a value, ``'smtps'`` does not), the value's
    placeholder for help ('' for flags), and one line of help;
``cli_configure(cli)``
    called with the :class:`CLI` after parsing, in _CAPABILITIES order; it
    reads ``cli.given`` and changes ``cli.mixins``, ``cli.server_kwargs`` or
    ``cli.serve``, and calls ``cli.error(msg)`` for a bad combination.
"""
import importlib
import logging
import os
import signal
import sys

import smtpd_compat as _smtpd

__all__ = ['main', 'CLI']

# Capability modules consulted for options and classes, in this order.  A
# module that does not exist (yet) is skipped.
_CAPABILITIES = (
    'loop', 'limits', 'proxy_protocol', 'shutdown', 'workers', 'tls', 'auth',
    'delivery', 'relay', 'lmtp', 'extensions', 'controller', 'web',
)


def _capability_modules():
    modules = []
    for name in _CAPABILITIES:
        fullname = 'smtpd_compat.' + name
        try:
            modules.append(importlib.import_module(fullname))
        except ModuleNotFoundError as e:
            if e.name != fullname:
                raise
    return modules


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

    def __init__(self, options, server_class):
        self.options = options
        self.given = {opt.lstrip('-'): value for opt, value in options.extra}
        self.server_class = server_class
        self.mixins = []
        self.server_kwargs = {}
        if options.enable_SMTPUTF8:
            self.server_kwargs['enable_SMTPUTF8'] = True
        self.serve = _serve

    def error(self, msg):
        """Exit with the usage text and ``msg``, status 1."""
        _smtpd.usage(1, msg)

    def require_class(self, base, option):
        """Exit with an error unless -c named ``base`` or a subclass: for
        options that only mean something to that class."""
        if not (isinstance(self.server_class, type)
                and issubclass(self.server_class, base)):
            self.error('--%s needs -c %s or a subclass' % (option, base.__name__))

    def make_server(self):
        from smtpd_compat._compose import compose_server
        cls = compose_server(self.server_class, self.mixins)
        o = self.options
        return cls((o.localhost, o.localport), (o.remotehost, o.remoteport),
                   o.size_limit, **self.server_kwargs)


def _resolve_class(classname, modules):
    """A dotted name is imported; a bare one is looked up in smtpd_compat,
    then in the capability modules."""
    if '.' in classname:
        modname, _, attr = classname.rpartition('.')
        return getattr(importlib.import_module(modname), attr)
    for mod in [_smtpd] + modules:
        cls = getattr(mod, classname, None)
        if cls is not None:
            return cls
    raise AttributeError("no class named %r in smtpd_compat" % classname)


def _serve(cli, server):
    """Serve with smtpd_compat's epoll loop (asyncore.loop's select() stops
    at 1,024 descriptors), with the open-files limit raised to the hard
    limit so that many connections can be held."""
    from smtpd_compat import loop
    loop.raise_fd_limit()
    loop.loop()


# Set once a stop signal has been acted on (or serving is over).
_stopping = False


def _terminate(signum, frame):
    """SIGTERM/SIGINT handler: the first signal ends the server like
    Ctrl-C did (a KeyboardInterrupt that main() catches); later ones are
    ignored, so that a second signal arriving while the first unwinds
    cannot raise again: no traceback, and no exit status 130."""
    if _stopping:
        # Already tripped before the SIG_IGN below took effect.
        return
    _ignore_stop_signals()
    raise KeyboardInterrupt


def _handle_stop_signals():
    global _stopping
    _stopping = False
    signal.signal(signal.SIGTERM, _terminate)
    # Only where Python's own Ctrl-C handler is in place: a SIGINT ignored
    # by the parent (a background job of a non-interactive shell) stays
    # ignored.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _terminate)


def _ignore_stop_signals():
    """From now on the process is stopping: SIGTERM and SIGINT (where
    _terminate handles them) are ignored.  SIG_IGN rather than a quiet
    Python handler: at finalization Python resets the signals it handles
    to their default action, and a late SIGTERM would then kill the
    process (status -15) on its way out."""
    global _stopping
    _stopping = True
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is _terminate:
            signal.signal(signum, signal.SIG_IGN)


# -- SIGHUP: reload certificates and the auth file -------------------------
#
# logrotate and ``systemctl reload`` send SIGHUP, whose default action would
# end the process.  The handler only raises a flag; a timer on the server's
# loop looks at it once a second and runs the reloads there, between
# events, so no file is read inside a signal handler and no connection is
# interrupted halfway through a handler.  Each ``reload()`` keeps what it
# had when the new files are bad, and raises; that is logged.

_RELOAD_CHECK = 1.0
_reload_wanted = []


def _request_reload(signum, frame):
    _reload_wanted.append(signum)


def _reload_all(server):
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


def _install_reload(server):
    """Reload on SIGHUP while ``server``'s loop runs."""
    from smtpd_compat import loop

    def check():
        if _reload_wanted:
            del _reload_wanted[:]
            _reload_all(server)
        loop.call_later(_RELOAD_CHECK, check, map=server._map)

    loop.call_later(_RELOAD_CHECK, check, map=server._map)


def _help_text(modules):
    lines = []
    for mod in modules:
        for name, metavar, text in getattr(mod, 'CLI_OPTIONS', ()):
            flag = '--' + name.rstrip('=')
            if metavar:
                flag += ' ' + metavar
            lines.append('    %s\n        %s\n' % (flag, text))
    if not lines:
        return ''
    return '\nsmtpd_compat options:\n\n' + '\n'.join(lines)


def main(argv=None):
    """Run the server as ``python -m smtpd_compat`` does; argv defaults to
    ``sys.argv[1:]``."""
    if argv is None:
        argv = sys.argv[1:]
    if _smtpd.program == '-m':
        # Imported by ``python -m`` before runpy set sys.argv[0] to the
        # script's path: name the program the way the stdlib's usage did.
        _smtpd.program = sys.argv[0]
    modules = _capability_modules()
    longopts = [name for mod in modules
                for name, _, _ in getattr(mod, 'CLI_OPTIONS', ())]
    _smtpd._usage_epilog = _help_text(modules)
    options = _smtpd._parseargs(argv, longopts)
    cli = CLI(options, _resolve_class(options.classname, modules))
    for mod in modules:
        configure = getattr(mod, 'cli_configure', None)
        if configure is not None:
            configure(cli)
    try:
        # SIGTERM ends the server like Ctrl-C: quietly, with status 0 --
        # from before the port is bound, so that no signal finds the
        # default action.
        _handle_stop_signals()
        if hasattr(signal, 'SIGHUP'):
            signal.signal(signal.SIGHUP, _request_reload)
        server = cli.make_server()
        _install_reload(server)
        if options.setuid:
            _become_nobody(server)
        cli.serve(cli, server)
    except KeyboardInterrupt:
        pass
    finally:
        _ignore_stop_signals()


def _become_nobody(server=None):
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
            for path in getattr(server, 'created_paths', ()):
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

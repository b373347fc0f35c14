"""How the tests start servers: one way in this process, one way as a
process.

In this process, :func:`start_server` runs a server class on its own socket
map in a background thread with the project's own
:class:`smtpd_compat.controller.Controller` (bound before it returns, on
127.0.0.1 port 0 unless told otherwise), and returns a :class:`Served`.
The map is served

* by plain ``asyncore.loop()`` (``loop='asyncore'``, the default), as legacy
  code serves it: the faithful core is tested the way its users run it.
  Timers never fire there;
* or by :func:`smtpd_compat.loop.loop` (``loop='smtpd_compat'``), where the
  timers of the map's services fire (idle and data deadlines, handshake
  deadlines, ...).

A test about time gives ``clock=True``: the map's services then read a
:class:`ManualClock`, which moves only when the test calls
:meth:`Served.advance`, so a timeout of minutes passes at once and a
"slow" client is slow by the clock, not by sleeping.

As a process, :class:`CLIServers` runs ``python -m smtpd_compat`` with this
checkout on the path: ``start()`` for a server (on a port reserved until it
listens, so that no other test, worker or process takes it meanwhile),
``run()`` for a command line that exits by itself.  The ``live_server`` and
``cli_server`` fixtures in conftest.py are these, cleaned up after each
test.
"""
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

try:
    import fcntl
    import termios
except ImportError:     # not POSIX: Served.settle() is not available
    fcntl = termios = None

import smtpd_compat
from smtpd_compat import controller as _controller
from smtpd_compat import loop as _loop

# Starting a thread or a process, and stopping one, on a loaded 2-core CI
# machine: generous bounds that a passing test never waits for.
START_TIMEOUT = 30.0

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(smtpd_compat.__file__)))

LOOPS = ('asyncore', 'smtpd_compat')


# ---------------------------------------------------------------------------
# In this process

def poll_until(predicate, timeout=START_TIMEOUT, what=None, interval=0.001):
    """Return once ``predicate()`` is true, asking every ``interval``
    seconds; AssertionError (naming ``what``) after ``timeout``.  Only for
    a state that gives no event to wait on (bytes leaving a client socket,
    a listener closing in another thread or process); a server started
    here is asked on its loop thread instead (:meth:`Served.wait_until`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('%s still false after %s s'
                                 % (what or predicate, timeout))
        time.sleep(interval)


def refused(address):
    """True when nothing listens on ``address`` (a TCP connection to it is
    refused)."""
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return True
    return False


class ManualClock:
    """A clock for a socket map's services
    (:attr:`smtpd_compat.loop.LoopServices.clock`) that reads ``now`` and
    moves only when told (see :meth:`Served.advance`)."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def _unread(sock):
    """Bytes waiting in ``sock``'s receive queue (0 for a closed socket)."""
    try:
        fd = sock.fileno()
    except (OSError, AttributeError):
        return 0
    if fd < 0:
        return 0
    try:
        return struct.unpack('i', fcntl.ioctl(fd, termios.FIONREAD, b'\0' * 4))[0]
    except OSError:
        return 0


# Linux: bytes in a TCP socket's send queue not yet sent (linux/sockios.h).
_SIOCOUTQNSD = 0x894B


def _unsent(sock):
    """Bytes ``sock`` (a client) holds back, not yet sent to its peer."""
    if not sys.platform.startswith('linux'):
        return 0
    try:
        return struct.unpack('i', fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD,
                                              b'\0' * 4))[0]
    except OSError:
        return 0


def _plain_asyncore_loop(timeout, use_poll, map):
    # What a legacy program runs: asyncore.loop() with select(), its
    # default.
    smtpd_compat.asyncore.loop(timeout, False, map)


class _Controller(_controller.Controller):
    """A Controller whose thread runs plain asyncore.loop() when asked."""

    def __init__(self, *args, plain_asyncore=False, **kwargs):
        self._plain_asyncore = plain_asyncore
        super().__init__(*args, **kwargs)

    def _serve(self, loop, map, woken):
        if self._plain_asyncore:
            loop = _plain_asyncore_loop
        super()._serve(loop, map, woken)


class Served:
    """A server running in a background thread (see :func:`start_server`):
    ``server``, its socket ``map``, ``host``, ``port``, ``address``, the
    map's ``services`` and its ``clock`` (a :class:`ManualClock` with
    ``clock=True``, else None)."""

    def __init__(self, controller, clock):
        self.controller = controller
        self.server = controller.server
        self.map = self.server._map
        self.services = _loop.services(self.map)
        self.clock = clock
        name = self.server.socket.getsockname()
        if isinstance(name, tuple):
            self.host, self.port = name[:2]
        else:                   # an AF_UNIX socket: its path
            self.host, self.port = name, None
        self._loop_thread = None
        self._loop_thread = self.call(threading.current_thread)

    @property
    def address(self):
        return (self.host, self.port)

    def call(self, function, *args, timeout=START_TIMEOUT):
        """Run ``function(*args)`` on the server's loop thread, between two
        events, and return its result (or raise its exception).  Called
        on the loop thread (from a predicate of :meth:`wait_until`), it
        runs it there and then."""
        if threading.current_thread() is self._loop_thread:
            return function(*args)
        done = threading.Event()
        outcome = []

        def run():
            try:
                outcome.append((True, function(*args)))
            except BaseException as e:
                outcome.append((False, e))
            finally:
                done.set()

        if not self.services.call_soon_threadsafe(run):
            raise RuntimeError('%r is not serving' % (self.controller,))
        if not done.wait(timeout):
            raise RuntimeError('the loop thread of %r did not run a call '
                               'within %s s' % (self.controller, timeout))
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def channels(self):
        """The sessions open now (taken on the loop thread)."""
        return self.call(lambda: [obj for obj in self.map.values()
                                  if isinstance(obj, smtpd_compat.SMTPChannel)])

    def wait_until(self, predicate, timeout=START_TIMEOUT):
        """Return once ``predicate()``, asked on the loop thread after each
        pass of the loop, is true: for a state that the events already
        under way bring about (a session closing after its last reply has
        gone out, a log line written as it closes)."""
        deadline = time.monotonic() + timeout
        while not self.call(predicate):
            if time.monotonic() > deadline:
                raise AssertionError('%s still false after %s s'
                                     % (predicate, timeout))

    def settle(self, *clients, timeout=START_TIMEOUT):
        """Return once the server has read, and handled, every byte that
        ``clients`` (client sockets) have sent so far: nothing is left
        unsent in a client's socket, or unread in a session's.  Then moving
        the clock cannot overtake input that is already on its way.  (Give
        the clients TCP_NODELAY: Nagle's algorithm holds a small write back
        until the last one is acknowledged, which a delayed ACK puts off
        for up to 40 ms.)"""
        def unread():
            return sum(_unread(obj.socket) for obj in list(self.map.values())
                       if isinstance(obj, smtpd_compat.SMTPChannel)
                       and obj.connected)
        poll_until(lambda: not any(_unsent(sock) for sock in clients),
                   timeout, 'every client has sent what it wrote')
        self.wait_until(lambda: unread() == 0, timeout)

    def advance(self, seconds):
        """Move the manual clock ``seconds`` forward and run the timers that
        are due then, on the loop thread; returns when they have run."""
        if self.clock is None:
            raise RuntimeError('start_server(..., clock=True) gives a clock '
                               'to advance')

        def step():
            self.clock.now += seconds
            self.services.run_timers()
        self.call(step)

    def stop(self):
        self.controller.stop()


def start_server(server_class, remoteaddr=('127.0.0.1', 9), *,
                 localaddr=('127.0.0.1', 0), loop='asyncore', clock=False,
                 **kwargs):
    """Start ``server_class(localaddr, remoteaddr, map=<its own>,
    **kwargs)`` in a Controller thread and return a :class:`Served`.

    ``loop`` is ``'asyncore'`` (plain ``asyncore.loop()``, what legacy code
    runs; no timers) or ``'smtpd_compat'`` (:func:`smtpd_compat.loop.loop`,
    whose timers fire).  ``clock=True`` puts a :class:`ManualClock` on the
    map before any client connects."""
    if loop not in LOOPS:
        raise ValueError('loop must be one of %r, not %r' % (LOOPS, loop))
    # (None: a server that listens elsewhere, e.g. on a UNIX socket.)
    host, port = localaddr or ('127.0.0.1', 0)
    controller = _Controller(server_class, host, port, remoteaddr=remoteaddr,
                             ready_timeout=START_TIMEOUT,
                             plain_asyncore=(loop == 'asyncore'), **kwargs)
    controller.start()
    served = Served(controller, None)
    if clock:
        # Set on the loop thread: nothing reads the clock meanwhile.
        manual = ManualClock()
        served.call(setattr, served.services, 'clock', manual)
        served.clock = manual
    return served


# ---------------------------------------------------------------------------
# As a process

def python_path_env(extra_paths=()):
    """Environment for subprocesses that must import this checkout's
    smtpd_compat (and anything in ``extra_paths``)."""
    env = dict(os.environ)
    paths = list(extra_paths) + [_ROOT]
    env['PYTHONPATH'] = os.pathsep.join(paths + [env.get('PYTHONPATH', '')])
    return env


def free_ports(count):
    """``count`` distinct TCP ports free on 127.0.0.1 (bound all at once so
    none repeats), for servers started in another process.  Free when this
    returns, not reserved: prefer :func:`reserved_port` where the server
    sets SO_REUSEADDR (every asyncore server does)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(('127.0.0.1', 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port():
    """A TCP port free on 127.0.0.1 (see :func:`free_ports`)."""
    return free_ports(1)[0]


@contextlib.contextmanager
def reserved_port(host='127.0.0.1'):
    """A port on ``host`` held by a bound, never listening socket with
    SO_REUSEADDR while the block runs.  A server that sets SO_REUSEADDR
    too (asyncore servers do) can bind and listen on it meanwhile; the
    kernel hands it to nobody else (no bind to port 0, no outgoing
    connection of another test or xdist worker takes it)."""
    with reserved_ports(1, host) as ports:
        yield ports[0]


@contextlib.contextmanager
def reserved_ports(count, host='127.0.0.1'):
    """``count`` distinct ports on ``host``, each held as
    :func:`reserved_port` holds one."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        yield ports


def wait_for_port(proc, port, timeout=START_TIMEOUT, host='127.0.0.1'):
    """Wait until ``host``:``port`` accepts connections; fail (with the
    process's output when it was piped) if ``proc`` exits first or after
    ``timeout`` seconds (interpreter start-up on a loaded machine)."""
    # A process gives no event when it starts to listen: ask every 20 ms.
    import pytest
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail('process exited with %r before port %d was open: '
                        'stdout %r, stderr %r' % (proc.returncode, port, out, err))
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail('port %d not open after %ss: stdout %r, stderr %r'
                            % (port, timeout, out, err))
            time.sleep(0.02)


class CLIServers:
    """Runs ``python -m smtpd_compat`` for one test, with this checkout on
    the path (``env``, default :func:`python_path_env`); :meth:`close`
    kills whatever still runs and collects it."""

    def __init__(self, env=None):
        self.env = python_path_env() if env is None else env
        self.procs = []

    #: What runs the command line; a test may put a wrapper in front
    #: (a script that sets a resource limit, then runs the module).
    command = (sys.executable, '-m', 'smtpd_compat')

    def argv(self, *args, command=None):
        return list(self.command if command is None else command) + list(args)

    def run(self, *args, env=None, timeout=START_TIMEOUT, **kwargs):
        """Run the command line to its end; a CompletedProcess with text
        output."""
        kwargs.setdefault('capture_output', True)
        kwargs.setdefault('text', True)
        return subprocess.run(self.argv(*args), timeout=timeout,
                              env=self.env if env is None else env, **kwargs)

    def popen(self, *args, env=None, command=None, **popen):
        """Start the command line (stdout and stderr piped as text unless
        ``popen`` says otherwise); killed at :meth:`close` if still
        running.  ``command``: what runs it instead of ``python -m
        smtpd_compat``."""
        popen.setdefault('stdout', subprocess.PIPE)
        popen.setdefault('stderr', subprocess.PIPE)
        popen.setdefault('text', True)
        proc = subprocess.Popen(self.argv(*args, command=command),
                                env=self.env if env is None else env, **popen)
        self.procs.append(proc)
        return proc

    def start(self, *args, env=None, remoteaddr=None, host='127.0.0.1',
              **popen):
        """``python -m smtpd_compat -n ARGS HOST:PORT [REMOTEADDR]``, started
        and listening; returns ``(proc, port)``."""
        with reserved_port(host) as port:
            address = '[%s]:%d' % (host, port) if ':' in host else '%s:%d' % (host, port)
            argv = ['-n'] + list(args) + [address]
            if remoteaddr is not None:
                remote_host, remote_port = remoteaddr[:2]
                argv.append('[%s]:%d' % (remote_host, remote_port)
                            if ':' in remote_host else
                            '%s:%d' % (remote_host, remote_port))
            proc = self.popen(*argv, env=env, **popen)
            wait_for_port(proc, port, host=host)
        return proc, port

    def stop(self, proc, sig=signal.SIGTERM, timeout=START_TIMEOUT):
        """Send ``sig`` and collect the process: ``(stdout, stderr)``."""
        proc.send_signal(sig)
        try:
            return proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        del self.procs[:]


@contextlib.contextmanager
def sigint_default_in_children():
    """Start children with SIGINT at its default disposition.

    A child inherits an *ignored* SIGINT (a non-interactive shell starts
    background jobs that way: ``tox &`` in a CI script), and Python then
    installs no KeyboardInterrupt handler, so the server would rightly keep
    ignoring Ctrl-C.  A test about SIGINT is about the server, not about
    how the test run was started: while a Python-level handler is set
    here, exec() resets SIGINT to SIG_DFL in the child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

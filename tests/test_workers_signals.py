"""run_workers restores signal handlers that were not installed from
Python (signal.signal() reports them as None and refuses None back)."""
import subprocess
import sys

C_HANDLER = '''
import os, signal
from smtpd_compat import workers

workers._MIN_LIFETIME = 0
real_signal = signal.signal
first = []


def fake_signal(signum, handler):
    previous = real_signal(signum, handler)
    if signum == signal.SIGUSR1 and not first:
        first.append(signum)
        return None     # what signal.signal() says of a handler set in C
    return previous


signal.signal = fake_signal


def serve():
    os.kill(os.getppid(), signal.SIGUSR1)


workers.run_workers(1, serve, signals=(signal.SIGUSR1,))
print(signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL)
'''


def test_handler_not_installed_from_python_is_restored_as_default(python_path_env):
    # It raised TypeError in the parent (and failed every worker).
    proc = subprocess.run([sys.executable, '-c', C_HANDLER], env=python_path_env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'True\n'
    assert 'worker failed' not in proc.stderr

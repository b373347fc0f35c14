"""An unmodified legacy script (``import smtpd, asyncore``; subclass
``smtpd.SMTPServer``) runs on this interpreter with the checkout on
PYTHONPATH: the stdlib module on <= 3.11, smtpd_compat on 3.12+."""
import os
import smtplib
import subprocess
import sys
import textwrap
import time

LEGACY = textwrap.dedent('''\
    import smtpd, asyncore, sys

    class Saver(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            with open(sys.argv[2], 'wb') as f:
                f.write(repr((mailfrom, rcpttos, data, kwargs)).encode())
            raise SystemExit(0)

    server = Saver(('127.0.0.1', 0), None)
    with open(sys.argv[1] + '.tmp', 'w') as f:
        f.write('%d %s' % (server.socket.getsockname()[1], smtpd.__name__))
    import os
    os.rename(sys.argv[1] + '.tmp', sys.argv[1])
    asyncore.loop()
''')


def test_legacy_script_runs(tmp_path, python_path_env):
    script = tmp_path / 'legacy_server.py'
    script.write_text(LEGACY)
    portfile, outfile = tmp_path / 'port', tmp_path / 'message'
    proc = subprocess.Popen([sys.executable, '-W', 'ignore::DeprecationWarning', str(script),
                             str(portfile), str(outfile)],
                            env=python_path_env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not portfile.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port, name = portfile.read_text().split()
        # On 3.12+ "smtpd" is the smtpd_compat module object itself.
        assert name == ('smtpd_compat' if sys.version_info >= (3, 12) else 'smtpd')
        client = smtplib.SMTP('127.0.0.1', int(port), timeout=10)
        client.ehlo()
        client.mail('old@example.org', ['BODY=8BITMIME'])
        client.rcpt('new@example.net')
        try:
            client.data(b'Subject: legacy\r\n\r\nstill works\r\n')
        except smtplib.SMTPServerDisconnected:
            pass    # the script exits inside process_message
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert outfile.read_text() == repr((
        'old@example.org', ['new@example.net'], b'Subject: legacy\n\nstill works',
        {'mail_options': ['BODY=8BITMIME'], 'rcpt_options': []}))
    assert err == ''
    assert os.path.exists(str(portfile))

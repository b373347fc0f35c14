"""MaildirServer refuses at start a Maildir whose tmp/ and new/ are on
different filesystems (every delivery's rename would fail with EXDEV)."""
import os
import shutil
import tempfile

import pytest

from smtpd_compat import delivery
from smtpd_compat.delivery import MaildirServer


def test_tmp_on_another_filesystem_is_refused(tmp_path):
    other = '/dev/shm'
    if not os.path.isdir(other) or \
            os.stat(other).st_dev == os.stat(str(tmp_path)).st_dev:
        pytest.skip('no second filesystem here (see the monkeypatched test)')
    elsewhere = tempfile.mkdtemp(dir=other)
    try:
        maildir = tmp_path / 'Maildir'
        maildir.mkdir()
        (maildir / 'tmp').symlink_to(elsewhere)
        with pytest.raises(ValueError, match='different filesystems'):
            MaildirServer(('127.0.0.1', 0), None, maildir=str(maildir), map={})
    finally:
        shutil.rmtree(elsewhere)


def test_different_devices_are_refused_with_a_clear_message(tmp_path, monkeypatch):
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        if os.path.basename(os.fspath(path)) == 'tmp':
            values = list(result)
            values[2] += 1          # st_dev
            return os.stat_result(values)
        return result
    monkeypatch.setattr(delivery.os, 'stat', stat)
    with pytest.raises(ValueError) as info:
        MaildirServer(('127.0.0.1', 0), None, maildir=str(tmp_path / 'M'), map={})
    assert 'tmp/ and new/ are on different filesystems' in str(info.value)


def test_one_filesystem_is_accepted(tmp_path):
    server = MaildirServer(('127.0.0.1', 0), None, maildir=str(tmp_path / 'M'),
                           map={})
    server.close()

"""Run one session against CPython's smtpd and smtpd_compat and compare."""
from harness import Driver
from sessions import CONFIGS

__all__ = ['run_both', 'compare']

# Replies where the stdlib goes on differently by design (deviation (g)).
_G_MARK = b'552 Error: Too much mail data\r\n'


def run_both(stdlib, ours, config, writes, server_class='SMTPServer',
             overriding=False):
    results = []
    for module in (stdlib, ours):
        driver = Driver(module, server_class, overriding=overriding,
                        **CONFIGS[config])
        try:
            results.append(driver.run(writes))
        finally:
            driver.close()
    return results


def _cut(blob, mark):
    i = blob.find(mark)
    return blob if i < 0 else blob[:i + len(mark)]


def compare(theirs, mine):
    """Assert that ``mine`` (smtpd_compat's Result) matches ``theirs``
    (the stdlib's) everywhere the stdlib neither crashed nor hit deviation
    (g); where it crashed, ours must have answered the crashing command
    with a 5xx reply and kept the connection.  Returns a string naming the
    deviation met ('' for none)."""
    assert not mine.errors, 'smtpd_compat raised: %r' % (mine.errors,)
    assert mine.greeting == theirs.greeting
    steps = len(theirs.replies)
    stop = None
    if theirs.errors:
        stop = 'crash'
    for i, blob in enumerate(theirs.replies):
        if _G_MARK in blob:
            stop, steps = 'g', i + 1
            break
    if stop is None:
        assert mine.replies == theirs.replies
        assert mine.messages == theirs.messages
        assert mine.closed == theirs.closed
        return ''
    # Every step before the one where the stdlib stopped matches exactly.
    assert mine.replies[:steps - 1] == theirs.replies[:steps - 1]
    last_theirs = theirs.replies[steps - 1] if steps else b''
    last_mine = mine.replies[steps - 1] if len(mine.replies) >= steps else b''
    if stop == 'g':
        cut = _cut(last_theirs, _G_MARK)
        assert _cut(last_mine, _G_MARK) == cut
        # The stdlib may deliver the swallowed commands later; we never do.
        assert mine.messages == theirs.messages[:len(mine.messages)]
        return 'g'
    # The stdlib crashed in the middle of this step's write: the replies it
    # sent before are ours too, then ours answers the bad command with 5xx.
    assert last_mine.startswith(last_theirs), (last_mine, last_theirs)
    assert mine.messages[:len(theirs.messages)] == theirs.messages
    error = theirs.errors[0]
    if isinstance(error, UnicodeDecodeError) and error.reason == 'unexpected end of data':
        # A UTF-8 character split across two reads (deviation (c)): ours
        # decodes it and goes on; the caller checks the rest against the
        # stdlib given the same bytes in one write.
        return 'c-split'
    rest = last_mine[len(last_theirs):]
    assert rest[:1] == b'5', rest
    return 'b/c'

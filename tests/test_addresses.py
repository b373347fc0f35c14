"""The fast path for plain MAIL/RCPT addresses (a speed fix in the core)
gives exactly what the email package's parser gives, on a table of awkward
inputs and on generated near-valid addresses."""
import random

import pytest

import smtpd_compat


def _outcome(parse, arg):
    """(address, rest), or the type of the exception the parse raised
    (deviation (b): malformed addresses raise as in the stdlib)."""
    try:
        return parse(arg)
    except Exception as e:
        return type(e)


def parser_getaddr(arg):
    """What _getaddr answers without the fast path: the email parser."""
    if not arg:
        return '', ''
    return _outcome(smtpd_compat._parse_address, arg)


class _Channel:
    _on_escape = None


def channel_getaddr(arg):
    return _outcome(lambda a: smtpd_compat.SMTPChannel._getaddr(_Channel(), a), arg)


ADDRESS_TABLE = [
    '<a@b.c>', 'a@b.c', '<a@b.c> SIZE=1 BODY=8BITMIME', '<a@b.c>  X',
    'a.b-c+d=e_f@x-y.z', '<-a@-b>', '<a@b.c>x', '<a@b.c> (c)', 'a@b.c\tX',
    '<a@b.c> \tX', 'a@b.c SIZE=1', 'a@b.cc .=@b', '<a..b@c>', '<.a@b>',
    '<a.@b>', '<a@b..c>', '<a@b.>', '<a@[1.2.3.4]>', '<"a b"@c>', '<>',
    '<a@b.c>\n', 'a@b.c\n', '<a@b.c> \nX', '<A@B.C> size=10', '<é@b.c>',
    '<a@b.c> )', '<a@b.c> "x"', '<a@b.c>\\', ' <a@b.c>', '<a@b.c> ',
    '<a@b.c', 'a@b.c>', '<@a,@b:c@d>', 'a', '@', '<a@b@c>', '<a(b)@c>',
]


@pytest.mark.parametrize('arg', ADDRESS_TABLE, ids=repr)
def test_fast_address_parse_table(arg):
    assert channel_getaddr(arg) == parser_getaddr(arg)


def test_fast_address_parse_generated():
    """Near-valid addresses with a sprinkling of every awkward character;
    bounded: 15,000 inputs, fixed seed."""
    rnd = random.Random(3)
    good = 'abcxyzABZ0189_+=-.'
    awkward = ' \t()<>@"\\,;:[]é!#$%&\'*/?^`{|}~\r\n'
    fast_hits = 0

    def part(n):
        return ''.join(rnd.choice(good) if rnd.random() < 0.95 else rnd.choice(awkward)
                       for _ in range(n))
    for _ in range(15000):
        local, domain = part(rnd.randint(0, 6)), part(rnd.randint(0, 6))
        rest = rnd.choice(['', ' ', '  ', ' SIZE=1', '\t', ' (x)', 'x', ' ' + part(4)])
        if rnd.random() < 0.7:
            arg = '<%s@%s>%s' % (local, domain, rest)
        else:
            arg = '%s@%s%s' % (local, domain, rest)
        got = channel_getaddr(arg)
        assert got == parser_getaddr(arg), arg
        fast_hits += smtpd_compat._PLAIN_ADDR.match(arg) is not None
    # The generator must exercise the fast path, not only the fallback.
    assert fast_hits > 1000

# The distribution's version (not the stdlib's __version__ banner string).
VERSION = '1.0.0'

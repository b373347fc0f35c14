# The distribution's version (not the stdlib's __version__ banner string;
# ``python -m smtpd_compat --package-version`` prints it).
VERSION = '1.0.0'

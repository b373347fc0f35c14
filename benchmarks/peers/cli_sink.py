"""``python -m smtpd_compat -c cli_sink.Sink ...`` (with benchmarks/peers on
PYTHONPATH): the command line's server with a ``process_message`` that
keeps nothing, as in peers/sink.py, so that W6 measures the capability
stack the command line composes around it, not a delivery."""
import smtpd_compat


class Sink(smtpd_compat.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None

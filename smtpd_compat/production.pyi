# Types of the rule for production mode of python -m smtpd_compat.
from collections.abc import Container

__all__ = ["PRODUCTION_OPTIONS", "RULE", "hardening_requested"]

# Long options (without dashes) that switch production mode on.
PRODUCTION_OPTIONS: frozenset[str]
RULE: str

def hardening_requested(given: Container[str]) -> bool: ...

"""The inbox page's files (``index.html``, ``app.css``, ``app.js``), shipped
as package data beside this module and read with :mod:`importlib.resources`,
so they load from a checkout, an installed wheel or a zip alike.

This folder is a package (it has this module) so that Python 3.8's
``importlib.resources.read_binary``, which reads only files directly inside
a package, finds them; 3.9+ use ``files()`` (``read_binary`` warns there
from 3.11 on).
"""
import sys
from typing import Dict

__all__ = ['read', 'NAMES']

#: The files here, each served at ``/`` (index.html) or ``/<name>``.
NAMES = ('index.html', 'app.css', 'app.js')

# name -> bytes, filled on first use (two threads may both read a file
# once; either result is the same).
_read: Dict[str, bytes] = {}


def read(name: str) -> bytes:
    """The bytes of the file ``name`` (one of :data:`NAMES`), read once."""
    data = _read.get(name)
    if data is None:
        if name not in NAMES:
            raise ValueError('no such page file: %r' % (name,))
        # Imported on first use: importlib.resources (and the tempfile
        # module it brings) is not needed to run a server whose page is
        # never opened.
        import importlib.resources
        if sys.version_info >= (3, 9):
            data = importlib.resources.files(__name__).joinpath(name).read_bytes()
        else:
            data = importlib.resources.read_binary(__name__, name)
        _read[name] = data
    return data

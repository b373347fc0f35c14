"""``import smtpd`` for Python 3.12 and later, where the standard library's
smtpd module was removed: this makes the name refer to the smtpd_compat
module itself (the same module object, so ``smtpd.DEBUGSTREAM = ...`` and
``smtpd.socket = ...`` reach the code that reads them).

On Python 3.11 and older the standard library's smtpd normally wins, because
the standard library comes before site-packages on sys.path.  When this file
is found first anyway (run from a source checkout, say), it loads the
standard library's module in its place, so ``import smtpd`` always means
the standard module where one exists.
"""
import sys

if sys.version_info >= (3, 12):
    import smtpd_compat as _module
else:  # pragma: no cover - depends on the interpreter
    import importlib.util
    import os
    import sysconfig
    import warnings

    _path = os.path.join(sysconfig.get_paths()['stdlib'], 'smtpd.py')
    _spec = importlib.util.spec_from_file_location(__name__, _path)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module
    with warnings.catch_warnings():
        if __name__ == '__main__':
            warnings.simplefilter('ignore', DeprecationWarning)
        _spec.loader.exec_module(_module)

if __name__ == '__main__':
    if sys.version_info >= (3, 12):
        from smtpd_compat.__main__ import main
        main()
else:
    # The import system hands out whatever sys.modules holds for the name
    # once this file has run.
    sys.modules[__name__] = _module

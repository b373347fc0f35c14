# Sphinx configuration for smtpd_compat's documentation.
import os
import sys

sys.path.insert(0, os.path.abspath('..'))

project = 'smtpd_compat'
author = 'the smtpd_compat developers'
copyright = '2026, ' + author
extensions = ['sphinx.ext.autodoc']
exclude_patterns = ['_build']
html_theme = 'alabaster'
autodoc_member_order = 'bysource'
nitpicky = False

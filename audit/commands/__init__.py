"""Sub-commands of ``audit``; see :mod:`audit.cli`."""

"""The base class of errors caused by the user's input (files, configs, names), not by a bug.

The CLI prints these as one clear message (no traceback) and exits with status 2.
"""


class DomainfmError(Exception):
    """Bad input: the message names the offending file or key and says how to fix it."""

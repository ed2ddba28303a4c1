"""User-facing errors: one clear sentence that names the problem and the fix.

Anything raised as ``LmforgeError`` is printed by the CLI as a single ``error: ...`` line with exit
code 2, never as a traceback. The Python API lets it propagate like any other exception.
"""


class LmforgeError(Exception):
    """A problem with the user's input (paths, files, flags, prompts), not a bug in lmforge."""

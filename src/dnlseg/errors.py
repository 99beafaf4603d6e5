"""The one base class of the errors a user can fix: a bad config value, file, checkpoint or dataset layout.

Every exception dnlseg raises for a user's mistake derives from ``UserError`` (and from the builtin it is
closest to, e.g. ``ValueError``), and its message says what was wrong, where (the file or config key) and what
was expected. The ``dnlseg`` command reports a ``UserError`` as one line, ``dnlseg: <message>``, and exits
non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure caused by the user's input (config, files, checkpoint); the message names it and the fix."""

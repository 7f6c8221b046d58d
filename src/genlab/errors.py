"""genlab's own refusals: one exception type, shown by the CLI as one line without a traceback.

Anything else that escapes a command (a shape error inside torch, running out of memory, a bug)
is not a refusal and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["GenlabError", "ConfigError"]


class GenlabError(Exception):
    """A refusal of genlab's: the message names what is wrong and the fix.

    ``exit_code`` is the CLI's exit status for it (2: the command was refused; 1: the
    command ran and stopped, e.g. a diverged training run).
    """

    exit_code = 2


class ConfigError(GenlabError, ValueError):
    """An option out of range, or a combination of options that cannot work."""

"""genlab's own refusals: one exception type, shown by the CLI as one line without a traceback.

Anything else that escapes a command (a shape error inside torch, running out of memory, a bug)
is not a refusal and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["GenlabError", "ConfigError", "UnknownNameError", "NotFoundError", "MissingDependencyError"]


class GenlabError(Exception):
    """A refusal of genlab's: the message names what is wrong and the fix.

    ``exit_code`` is the CLI's exit status for it (2: the command was refused; 1: the
    command ran and stopped, e.g. a diverged training run).
    """

    exit_code = 2


class ConfigError(GenlabError, ValueError):
    """An option out of range, or a combination of options that cannot work."""


class UnknownNameError(GenlabError, KeyError):
    """A name that is not registered (an experiment, a profile); the message names the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotFoundError(GenlabError, FileNotFoundError):
    """A file or folder the command needs is missing; the message names it and the fix."""


class MissingDependencyError(GenlabError, RuntimeError):
    """An optional package the command needs is not installed (exit status 1)."""

    exit_code = 1

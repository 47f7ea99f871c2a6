"""The one exception type for user mistakes.

Anything the user can fix (a missing file, a malformed line, a wrong field, a nonsense
option, incompatible tokenizers) raises :class:`DeepAlignError`. The CLI prints it as a
single line ``deepalign: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import os


class DeepAlignError(Exception):
    """A user-facing error; its message is one line that names the problem."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, line: int | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        self.bare_message = " ".join(str(message).split())
        super().__init__(where + self.bare_message)


def require(condition: bool, message: str, **where) -> None:
    """Raise :class:`DeepAlignError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DeepAlignError(message, **where)


class OptionError(DeepAlignError):
    """A bad option value. ``option`` names the option (its dataclass field name), so the CLI
    can say where the value came from: ``--learning_rate must be > 0, got -1`` for a flag,
    ``train.yaml: learning_rate: must be > 0, got -1`` for a key of a config file."""

    def __init__(self, option: str, message: str):
        self.option = option
        self.detail = " ".join(str(message).split())
        super().__init__(f"--{option} {self.detail}")

"""Error classes, and finding the user's source line that caused a problem."""
from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class SourceLine:
    """Where in the user's code something was created."""

    filename: str
    lineno: int
    code: str

    def __str__(self):
        if self.filename.startswith("<recloop-cell-"):
            return f"cell line {self.lineno}: {self.code}"
        return f"{self.filename}, line {self.lineno}: {self.code}"


def user_line(skip_internal: bool = True) -> SourceLine | None:
    """The innermost stack frame outside this package (the user's line)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (skip_internal and os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)):
            code = linecache.getline(filename, frame.f_lineno, frame.f_globals).strip()
            return SourceLine(filename, frame.f_lineno, code)
        frame = frame.f_back
    return None


class RecDebugError(Exception):
    """Base class of all recdebug errors; carries the user's line when known."""

    def __init__(self, message: str, line: SourceLine | None = None, hint: str | None = None):
        self.message = message
        self.line = line if line is not None else user_line()
        self.hint = hint
        text = message
        if self.line is not None:
            text += f"\n  at {self.line}"
        if hint:
            text += f"\n  {hint}"
        super().__init__(text)


class LoopError(RecDebugError):
    """Misuse of Loop or State (wrong scope, double assign, missing end...)."""


class DimError(RecDebugError):
    """Dims that do not fit together."""


class RunError(RecDebugError):
    """Bad arguments to run/trace (missing inputs, wrong shapes, no GPU...)."""

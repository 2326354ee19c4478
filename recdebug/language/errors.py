"""Error classes, and finding the user's source line that caused a problem."""
from __future__ import annotations

import linecache
import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # recdebug/, all its layers
CELL_PREFIX = "<recloop-cell-"  # filename of a %%recloop cell's code (line 1 is the %%recloop line)
BREAK_FILENAME = "<recloop-break>"  # filename of a --break expression's code


@dataclass(frozen=True)
class SourceLine:
    """Where in the user's code something was created."""

    filename: str
    lineno: int
    code: str

    def __str__(self):
        if self.filename.startswith(CELL_PREFIX):
            return f"cell line {self.lineno}: {self.code}"
        if self.filename == BREAK_FILENAME:
            return f"--break {self.code}"
        return f"{self.filename}, line {self.lineno}: {self.code}"


# While a %%recloop cell runs: (its %%recloop line, the frame that runs the cell)
_running_cell: ContextVar = ContextVar("recdebug_running_cell", default=None)


@contextmanager
def running_cell(line: SourceLine, frame):
    """Errors raised while ``frame`` runs a %%recloop cell, from no line of the cell's body (feeds, options,
    TensorFlow), name ``line`` (the %%recloop line) instead of IPython's frames that called the magic."""
    token = _running_cell.set((line, frame))
    try:
        yield
    finally:
        _running_cell.reset(token)


def user_line(skip_internal: bool = True) -> SourceLine | None:
    """The innermost stack frame outside this package (the user's line); while a %%recloop cell runs, its
    %%recloop line when no line of its body is on the stack."""
    cell = _running_cell.get()
    frame = sys._getframe(1)
    while frame is not None:
        if cell is not None and frame is cell[1]:
            return cell[0]
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


class FeedError(RunError):
    """A fed array that does not fit its Input's axis order (a static size, or its sequences against the lengths).
    ``order_text``: the dims of the array's axes as they would fit, e.g. ``(time, batch, feat)``."""

    def __init__(self, message: str, input_name: str, order_text: str, line: SourceLine | None = None):
        self.input_name = input_name
        self.order_text = order_text
        super().__init__(message, line, hint=f'feed the array in that order, or give its own order with it: '
                                             f'{{"{input_name}": (array, {order_text})}}')


class RecDebugWarning(UserWarning):
    """Code that runs but most likely does not do what was meant (a State that is never assigned...)."""

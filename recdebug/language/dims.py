"""Named dimensions. A Dim is identified by the object, never by its name or size."""
from __future__ import annotations

import itertools
import numbers

from .errors import DimError

_counter = itertools.count()


class Dim:
    """A named dimension; ``size=None`` means dynamic (per-sequence lengths)."""

    def __init__(self, name: str, size: int | None = None, *, base: "Dim | None" = None, factor: int = 1):
        if size is not None and (not _is_int(size) or size <= 0):
            raise DimError(f"Dim {name!r}: size must be a positive whole number or None (dynamic), got {size!r}")
        self.name = name
        self.size = None if size is None else int(size)
        self.base = base  # for ``dim * k``: the dim it was multiplied from
        self.factor = factor
        self.order = next(_counter)  # creation order: the default axis order of arrays
        self._derived: dict = {}

    @property
    def is_dynamic(self) -> bool:
        return self.size is None and not self.is_batch

    @property
    def is_batch(self) -> bool:
        return self is batch_dim

    def __mul__(self, k: int) -> "Dim":
        if not _is_int(k) or k <= 0:
            return NotImplemented
        k = int(k)
        if self.size is None:
            raise ValueError(f"{self!r} * {k}: only static dims can be multiplied")
        if k == 1:
            return self
        key = ("mul", k)
        if key not in self._derived:
            self._derived[key] = Dim(f"{self.name}*{k}", self.size * k, base=self, factor=k)
        return self._derived[key]

    __rmul__ = __mul__

    def divided(self, n: int) -> "Dim":
        """The dim of one of ``n`` equal parts of this dim (``(dim * 4).divided(4) is dim``)."""
        if self.base is not None and self.factor == n:
            return self.base
        if self.size is None or self.size % n:
            raise ValueError(f"{self!r} cannot be split into {n} equal parts")
        key = ("div", n)
        if key not in self._derived:
            self._derived[key] = Dim(f"{self.name}/{n}", self.size // n)
        return self._derived[key]

    def derived(self, tag: str) -> "Dim":
        """A distinct dim of the same size (e.g. the input side of a square weight)."""
        key = ("tag", tag)
        if key not in self._derived:
            self._derived[key] = Dim(f"{self.name}_{tag}", self.size)
        return self._derived[key]

    def short(self) -> str:
        return self.name if self.size is None else f"{self.name}:{self.size}"

    def __repr__(self):
        return f"Dim({self.name!r})" if self.size is None else f"Dim({self.name!r}, {self.size})"


def _is_int(n) -> bool:
    """A whole number: a Python or numpy int (not a bool)."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


batch_dim = Dim("batch")


def sorted_dims(dims) -> tuple:
    """Canonical axis order: batch first, then dims in the order they were created."""
    return tuple(sorted(dims, key=lambda d: d.order))


def dims_str(dims) -> str:
    return "{" + ", ".join(d.short() for d in sorted_dims(dims)) + "}"


def dim_named(d, dims, what: str) -> Dim:
    """``d`` itself, or for a name (``"time"``) the one dim of ``dims`` so called; a DimError listing ``dims`` by
    name when no dim or several have that name. ``what``: where the dim was given (for the message)."""
    if not isinstance(d, str):
        return d
    found = [x for x in set(dims) if x.name == d]
    if len(found) == 1:
        return found[0]
    names = ", ".join(x.short() for x in sorted_dims(set(dims))) or "none"
    if not found:
        raise DimError(f"{what}: no dim is named {d!r}; the dims there are: {names}")
    raise DimError(f"{what}: {len(found)} dims are named {d!r} ({', '.join(repr(x) for x in sorted_dims(found))}), "
                   f"the name does not tell which; the dims there are: {names}",
                   hint="give the rd.Dim object itself instead of its name")

"""What ``%recdebug`` does, as a library function: a RETURNN config's rec layer traced (or stepped live) and shown.

``debug_returnn(config, ...)`` works without IPython; the magic (``recdebug.notebook.magics``) only parses options, looks
up the notebook's variables and shows the result.
"""
from __future__ import annotations

import numpy as np

from .cell import DEFAULT_BATCH, DEFAULT_MAX_LEN, RecloopError
from ..language.errors import RecDebugError


class RecdebugResult:
    """Everything one %recdebug line made (``-o NAME`` keeps it): ``.model`` (the rd.from_returnn model),
    ``.result`` (``m.run``: the top-level layers), ``.trace``, ``.stepper`` (made on first use unless the line
    stepped live), ``.widget`` (the debugger), ``.figure`` (with --static), ``.feeds`` and ``.seq_lens`` (what
    was fed, random data included). With --search, ``.result`` and ``.trace`` are None: the search is stepped."""

    def __init__(self, model, rec: str, feeds: dict, seq_lens: dict, result=None, trace=None, stepper=None,
                 widget=None, figure=None):
        self.model, self.rec = model, rec
        self.feeds, self.seq_lens = feeds, seq_lens
        self.result, self.trace, self.widget, self.figure = result, trace, widget, figure
        self._stepper = stepper
        self._closed: tuple | None = None

    @property
    def stepper(self):
        """Live stepping of the rec layer with the same inputs (teacher forcing unless --search)."""
        if self._closed is not None:
            raise RecDebugError(f"this %recdebug result is closed: {self._closed[0]}", hint=self._closed[1])
        if self._stepper is None:
            self._stepper = self.model.stepper(self.feeds, self.seq_lens, rec=self.rec)
        return self._stepper

    @property
    def net_dict(self) -> dict:
        return self.model.net

    def numpy(self, name: str) -> np.ndarray:
        """A top-level layer's output of the run, batch-major."""
        return self._result().numpy(name)

    def lens(self, name: str):
        """Per-sequence lengths of a top-level layer's time axis (None without one)."""
        return self._result().lens(name)

    @property
    def outputs(self) -> dict:
        """Top-level layers' outputs by name (batch-major)."""
        res = self._result()
        return {name: res.numpy(name) for name in res.keys()}

    def _result(self):
        if self.result is None:
            raise RecDebugError("a %recdebug --search line does not run the network teacher-forced: there is no "
                                "run", hint="read the search from .stepper (value, beams)")
        return self.result

    def show(self):
        """Display the debugger (or the static figure) again."""
        from IPython.display import display

        display(self.widget if self.widget is not None else self.figure)

    def close(self, why: str | None = None, hint: str | None = None):
        """Free the TensorFlow sessions and the widgets of this result. ``why``, ``hint``: what its stepper says
        when it is used after this."""
        why = why or "its %recdebug result was closed (close())"
        hint = hint or "run the %recdebug line again and use its result's stepper"
        if self.widget is not None:
            self.widget.close()
        if self._stepper is not None:
            self._stepper.close(why, hint)
        self.model.close()
        self._closed = (why, hint)

    def __repr__(self):
        what = "search" if self.trace is None else f"trace={self.trace!r}"
        return f"RecdebugResult({self.model!r}, {self.rec!r}, {what})"


def random_extern_data(extern_data: dict, feeds: dict, seq_lens: dict, seed: int):
    """Seeded random data for the extern data not fed (labels within their sparse dim), sized as the fed arrays
    where they share a dim, with random lengths for their dynamic dims (the first sequence the longest)."""
    rng = np.random.default_rng(seed)
    sizes, lens_of = {}, {}
    batch = None
    for key, value in feeds.items():
        arr = np.asarray(value)
        for tag, n in zip(extern_data[key].dim_tags, arr.shape):
            if tag.is_batch_dim():
                batch = batch or n
            elif tag.dimension is None:
                sizes.setdefault(tag, n)
                lens_of.setdefault(tag, seq_lens.get(key, np.full([arr.shape[0]], n, np.int32)))
    batch = batch or DEFAULT_BATCH
    feeds, seq_lens = dict(feeds), dict(seq_lens)
    for key, data in extern_data.items():
        if key in feeds:
            continue
        shape = []
        for tag in data.dim_tags:
            if tag.is_batch_dim():
                shape.append(batch)
            elif tag.dimension is not None:
                shape.append(tag.dimension)
            else:
                n = sizes.setdefault(tag, DEFAULT_MAX_LEN)
                if tag not in lens_of:
                    lens = rng.integers(1, n + 1, size=batch)
                    lens[0] = n
                    lens_of[tag] = lens.astype(np.int32)
                seq_lens[key] = lens_of[tag]
                shape.append(n)
        if data.sparse:
            feeds[key] = rng.integers(0, data.dim, size=shape).astype(data.dtype)
        elif data.dtype.startswith(("int", "uint")):
            feeds[key] = rng.integers(0, 10, size=shape).astype(data.dtype)
        else:
            feeds[key] = rng.standard_normal(shape).astype(data.dtype)
    return feeds, seq_lens


def debug_returnn(config, checkpoint=None, extern_data=None, feeds: dict | None = None,
                  seq_lens: dict | None = None, rec: str | None = None, live: bool = False, search: bool = False,
                  beam_size: int | None = None, device: str | None = None, static: bool = False, seed: int = 0,
                  verbose: bool = False, show_widget: bool = True) -> RecdebugResult:
    """Load a RETURNN config (or net dict) with rd.from_returnn, run and trace its rec layer, and make the debugger
    (or a static figure); with ``live`` the debugger steps ``m.stepper``, with ``search`` the beam search.

    ``feeds``, ``seq_lens``: arrays and lengths by extern_data name; the extern data not fed get seeded random
    data. Errors are RecloopErrors of one line (with ``verbose``, after the full traceback)."""
    from ..backend.returnn_model import from_returnn

    feeds, seq_lens = dict(feeds or {}), dict(seq_lens or {})
    try:
        model = from_returnn(config, checkpoint=checkpoint, extern_data=extern_data, device=device)
    except RecDebugError as e:
        raise _short(e, verbose) from None
    made = []
    try:
        recs = model.rec_layers
        if rec is None and len(recs) != 1 or rec is not None and rec not in recs:
            found = f"its rec layers with a unit are {recs}" if recs else "it has no rec layer with a unit"
            ask = "pick one with --rec NAME" if len(recs) > 1 or rec is not None and recs else \
                "recdebug opens a rec layer whose unit is a dict of layers"
            raise RecloopError([(f"no rec layer {rec!r} with a unit in the network: " if rec else
                                 "which rec layer? ") + f"{found}; {ask}"])
        rec = rec or recs[0]
        available = model._build("run", None).network.extern_data.data
        unknown = sorted((set(feeds) | set(seq_lens)) - set(available))
        if unknown:
            raise RecloopError([f"--feed/--lens name {unknown}, but the config's extern data are {sorted(available)}"])
        feeds, seq_lens = random_extern_data(available, feeds, seq_lens, seed)
        result = trace = stepper = None
        if search:
            stepper = model.stepper(feeds, seq_lens, rec=rec, search=True, beam_size=beam_size)
        else:
            result = model.run(feeds, seq_lens)
            trace = model.trace(feeds, seq_lens, rec=rec)
            if live:
                try:
                    stepper = model.stepper(feeds, seq_lens, rec=rec)
                except RecDebugError as e:
                    raise RecloopError([f"--live: {' '.join(e.message.split())} (without --live the debugger "
                                        "browses the trace)"], e, verbose) from None
        if stepper is not None:
            made.append(stepper)
        widget = figure = None
        if static:
            figure = trace.plot()
        elif show_widget:
            from ..views.widgets import debugger

            widget = debugger(stepper if stepper is not None else trace)
        return RecdebugResult(model, rec, feeds, seq_lens, result, trace, stepper, widget, figure)
    except BaseException as e:
        for stepper in made:
            stepper.close()
        model.close()  # nothing keeps this model: free its TensorFlow sessions now
        if isinstance(e, RecloopError) or not isinstance(e, Exception):
            raise
        if isinstance(e, RecDebugError):
            raise _short(e, verbose) from None
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise RecloopError([f"RETURNN could not build or run the config: {type(e).__name__}: {last} (--verbose "
                            "shows RETURNN's traceback)"], e, verbose) from None


def _short(e: RecDebugError, verbose: bool) -> RecloopError:
    """A recdebug error as one line: what went wrong, and what to do (its hint)."""
    text = " ".join(e.message.split())
    if e.hint:
        text += f" ({e.hint})"
    return RecloopError([f"{type(e).__name__}: {text}"], e, verbose)

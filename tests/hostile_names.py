"""A loop whose names hold markup, and a trace file whose keys and device do: text the debugger must show as
text. Used by the widget tests in Python and, imported into a notebook's kernel, by the browser tests."""
import json

import numpy as np

import recdebug as rd

IMG = '<img src=x onerror="window.__rd_pwned=1">'
SCRIPT = "<script>window.__rd_pwned=2</script>"
HOSTILE = (IMG, SCRIPT)

batch, time = rd.batch_dim, rd.Dim("time")
feat, hid = rd.Dim("feat", 3), rd.Dim(IMG, 4)  # a dim name: the hierarchy lists every layer's dims
LENS = np.array([6, 4], dtype=np.int32)


class Cell(rd.Module):
    """A module whose State attribute is named with markup (a name Python code can only give with setattr)."""

    def __init__(self):
        super().__init__()
        setattr(self, SCRIPT, rd.State({batch, hid}))
        self.lin = rd.Linear(hid)

    def forward(self, x):
        s = getattr(self, SCRIPT)
        s.assign(rd.tanh(self.lin(x) + s.get()))
        return s.get()


def hostile_graph():
    """(graph, State named IMG): States named by ``name=``, by a module attribute and plainly ("plain")."""
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        h = rd.State({batch, hid}, name=IMG)
        plain = rd.State({batch, hid}, name="plain")
        cell = Cell()
        with rd.Loop() as loop:
            y = cell(loop.unstack(x))
            h.assign(rd.tanh(y + h.get()))
            plain.assign(h.get() * 2.0)
            loop.stack(y)
    return g, h


def inputs(nan_at=None) -> np.ndarray:
    """The feed of x: batch 2, 6 frames; with ``nan_at`` = t, a NaN in sequence 0 at that frame."""
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    if nan_at is not None:
        x[0, nan_at, 0] = np.nan
    return x


def hostile_trace_file(tr: rd.Trace, path) -> str:
    """Save ``tr``, then rewrite its metadata as a hostile file could: every State's key (in the values, the
    hierarchy, the source lines and the net dict) and the device hold markup. Returns the path."""
    tr.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["meta"].tobytes())
    names = {"plain": IMG + "plain", "_img_src_x_onerror__window.__rd_pwned_1__": IMG,
             "_script_window.__rd_pwned_2_.script_": SCRIPT}

    def rewrite(v):
        if isinstance(v, str):
            for old, new in names.items():
                v = v.replace(old, new)
            return v
        if isinstance(v, list):
            return [rewrite(x) for x in v]
        if isinstance(v, dict):
            return {k: rewrite(x) for k, x in v.items()}
        return v

    meta = rewrite(meta)
    meta["device"] = SCRIPT
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return str(path)

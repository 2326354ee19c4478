"""Static rendering of a trace with matplotlib: for exported HTML without widget state, terminals, papers."""
from __future__ import annotations

import numpy as np


def plot_trace(trace, sequence: int = 0, keys=None, t: int | None = None, figsize=None):
    """One row per value (default: the States): heatmap units x time with padding grey and NaN/Inf marked,
    and the norm over time; a line at step ``t`` when given."""
    import matplotlib
    import matplotlib.pyplot as plt

    axis = trace._default_axis()
    keys = list(keys) if keys is not None else [e.key for e in trace.entries.values()
                                                 if e.kind == "state" and e.loop_axes == (axis,)]
    if not keys:
        raise ValueError("nothing to plot: this trace has no States on its main loop axis")
    fig, axes = plt.subplots(len(keys), 2, figsize=figsize or (11, 2.4 * len(keys)), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]})
    length = int(trace.lens(axis)[sequence])
    for row, key in zip(axes, keys):
        e = trace.entries[key]
        rest = [d for d in e.dims if d not in (axis, "batch")]
        per_step = trace.numpy(key, order=[axis, "batch"] + rest)[:, sequence]
        arr = per_step.reshape(per_step.shape[0], -1).astype(np.float64)  # [steps, units]
        steps = arr.shape[0]
        shown = np.ma.masked_invalid(arr.T)
        scale = np.nanmax(np.abs(np.where(np.isfinite(arr[:length]), arr[:length], np.nan))) if length else 1.0
        cmap = matplotlib.colormaps["bwr"].with_extremes(bad="#00c85a")  # NaN/Inf: green
        row[0].imshow(shown, aspect="auto", cmap=cmap, vmin=-scale, vmax=scale, interpolation="nearest")
        if length < steps:
            row[0].axvspan(length - 0.5, steps - 0.5, color="#cdcdcd")
        row[0].set_title(f"{key} (sequence {sequence}, {length} of {steps} steps)", fontsize=9)
        row[0].set_xlabel("t")
        row[0].set_ylabel("unit")
        norm = np.sqrt(np.nansum(arr[:length] ** 2, axis=1))
        row[1].plot(np.arange(length), norm)
        row[1].set_title("norm over time", fontsize=9)
        if t is not None:
            row[0].axvline(t, color="black")
            row[1].axvline(t, color="black")
    fig.tight_layout()
    return fig

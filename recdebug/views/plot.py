"""Static rendering of a trace with matplotlib: for exported HTML without widget state, terminals, papers."""
from __future__ import annotations

import numpy as np

from ..records.trace import connect_plot


def value_cmap(signed: bool):
    """The heatmaps' colour map: signed values blue (-scale), white (0), red (+scale); non-negative ones (coverage,
    probabilities, norms) white (0) to red (+scale), the same colours as the positive half."""
    import matplotlib
    from matplotlib.colors import LinearSegmentedColormap

    return matplotlib.colormaps["bwr"] if signed else LinearSegmentedColormap.from_list("rd_white_red", ["#ffffff",
                                                                                                         "#ff0000"])


def plot_trace(trace, sequence: int = 0, keys=None, t: int | None = None, figsize=None):
    """One row per value (default: the States): heatmap units x time with padding grey and NaN/Inf marked,
    and the norm over time; a line at step ``t`` when given."""
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
        valid = arr[:length][np.isfinite(arr[:length])]
        scale = float(np.abs(valid).max()) if valid.size and np.abs(valid).max() > 0 else 1.0
        signed = bool((valid < 0).any())
        cmap = value_cmap(signed).with_extremes(bad="#00c85a")  # NaN/Inf: green
        row[0].imshow(shown, aspect="auto", cmap=cmap, vmin=-scale if signed else 0.0, vmax=scale,
                      interpolation="nearest")
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


_PAD, _NAN, _INF = (190, 190, 190), (0, 200, 90), (255, 0, 255)
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _category(v: int) -> tuple:
    """The colour of label ``v``: as extension/heatmap.js draws it."""
    if 0 <= v < len(_PALETTE):
        return _PALETTE[v]
    import colorsys

    r, g, b = colorsys.hls_to_rgb(((v * 137.508) % 360) / 360, 0.5, 0.6)
    return round(255 * r), round(255 * g), round(255 * b)


def view_rgba(values: np.ndarray, length: int, shown: int, scale: float, categorical: bool) -> np.ndarray:
    """[U, T, 4] uint8: the colours the debugger's heatmap gives values [T, U] (blue-white-red over +-scale, or
    one colour per label; padding grey, NaN green, Inf magenta, steps not shown transparent)."""
    T, U = values.shape
    v = values.T.astype(np.float64)  # [U, T]
    out = np.zeros((U, T, 4), np.uint8)
    if categorical:
        finite = np.isfinite(v)
        labels = np.where(finite, np.round(v), 0).astype(np.int64)
        colors = {int(k): _category(int(k)) for k in np.unique(labels)}
        for k, rgb in colors.items():
            out[(labels == k) & finite, :3] = rgb
    else:
        x = np.clip(np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) / (scale or 1.0), -1, 1)
        pos, neg = np.clip(x, 0, 1), np.clip(-x, 0, 1)
        out[..., 0] = np.round(255 * (1 - neg))
        out[..., 1] = np.round(255 * (1 - np.maximum(pos, neg)))
        out[..., 2] = np.round(255 * (1 - pos))
    out[np.isnan(v), :3] = _NAN
    out[np.isinf(v), :3] = _INF
    out[..., 3] = 255
    t = np.arange(T)
    out[:, (t >= length) & (t < shown), :3] = _PAD
    out[:, t >= shown, 3] = 0
    return out


def draw_views(views: list, status: str, width: float = 10.0):
    """A matplotlib Figure of the debugger's views as shown now (no pyplot: nothing is displayed by itself).
    ``views``: dicts with title, unit_label, axis_label, values [T, U], length, known, cursor, scale (0: own
    range), categorical, labels, reveal."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    heights = [min(1.8, max(0.3, 0.14 * max(1, v["values"].shape[1]))) + 0.75 for v in views] or [0.5]
    fig = Figure(figsize=(width, 0.5 + sum(heights)), dpi=80)
    fig.suptitle(status, fontsize=9, x=0.01, ha="left")
    total = 0.5 + sum(heights)
    grid = fig.add_gridspec(max(1, len(views)), 2, height_ratios=heights, width_ratios=[60, 1], hspace=1.1,
                            wspace=0.02, left=0.07, right=0.92, top=1 - 0.45 / total, bottom=0.5 / total)
    for row, v in enumerate(views):
        ax = fig.add_subplot(grid[row, 0])
        values = np.asarray(v["values"], np.float32)
        T, U = values.shape
        shown = min(v["known"], v["cursor"] + 1) if v["reveal"] else v["known"]
        valid = values[:min(v["length"], v["known"])]
        finite = valid[np.isfinite(valid)]
        scale = v["scale"] or (float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0)
        ax.imshow(view_rgba(values, v["length"], shown, scale, v["categorical"]), aspect="auto",
                  interpolation="nearest", extent=(-0.5, T - 0.5, U - 0.5, -0.5))
        ax.set_title(f"{v['title']}   {v['unit_label']} × {v['axis_label']}", fontsize=9, loc="left")
        ax.set_xlabel(v["axis_label"], fontsize=8)
        ax.set_ylabel("unit", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if U <= 12:  # each unit its tick (one unit: no -0.5 and 0.5 ticks)
            ax.set_yticks(range(U))
        else:
            ax.yaxis.get_major_locator().set_params(integer=True)
        if shown < T:  # steps not run yet (or not revealed): hatched, as the widget draws them
            ax.axvspan(shown - 0.5, T - 0.5, facecolor="none", edgecolor="#909090", hatch="///", linewidth=0)
        if v["cursor"] >= 0:
            ax.axvline(v["cursor"], color="white", linewidth=3.5)
            ax.axvline(v["cursor"], color="black", linewidth=1.8)
        side = fig.add_subplot(grid[row, 1])
        if v["categorical"]:
            side.axis("off")
            present = sorted({int(round(x)) for x in valid[np.isfinite(valid)].ravel()})[:12]
            names = v.get("labels") or []
            handles = [Patch(color=np.array(_category(k)) / 255,
                             label=f"{k} {names[k]}" if k < len(names) else str(k)) for k in present]
            if handles:
                side.legend(handles=handles, loc="center left", fontsize=7, frameon=False,
                            title=v.get("value_word", "label") + "s", title_fontsize=7)
        else:
            signed = bool((finite < 0).any())  # (as the widget: 0 to +scale without negatives)
            bar = fig.colorbar(ScalarMappable(Normalize(-scale if signed else 0.0, scale), cmap=value_cmap(signed)),
                               cax=side)
            bar.ax.tick_params(labelsize=7)
    return fig


def png(fig) -> bytes:
    """The figure as PNG bytes (Agg), not shown anywhere."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})  # (fast; a few more bytes)
    return buf.getvalue()


connect_plot(plot_trace)

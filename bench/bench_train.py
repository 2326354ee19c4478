"""g.train against RETURNN's own command line on the same config and data: time per training step.

The model: an LSTM tagger (input 16, hidden 128, 2 classes, per-frame cross entropy), 256 sequences of 20-60
frames, 32 sequences per step. g.train runs it in this process; then g.save writes the config, checkpoint and data,
and RETURNN's command line (python -m returnn) trains three more epochs (8 steps each) from it, printing its
time per step (log_verbosity 5). Both medians exclude the first steps (graph warm-up). Target: g.train's time per
step at most 1.2x RETURNN's. Then the teaching notebooks that train (07, 08, 09): each executed top to bottom
(nbclient), its time in all and the time of its g.train calls (their builds included, timed in its kernel).
Usage: python bench/bench_train.py [--steps 40] [--no-notebooks]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

import numpy as np

import recdebug as rd

batch = rd.batch_dim


def tagger():
    time, feat, hid, classes = rd.Dim("time"), rd.Dim("feat", 16), rd.Dim("hid", 128), rd.Dim("classes", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=classes)
        lstm, lin_out = rd.LSTM(hid), rd.Linear(classes)
        with rd.Loop() as loop:
            logits = loop.stack(lin_out(lstm(loop.unstack(x))))
        loss = rd.cross_entropy(logits, y)
    return g, time, loss


def data(n=256, T=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, 16)).astype(np.float32)
    y = (x[:, :, 0] > 0).astype(np.int32)
    lens = rng.integers(20, T + 1, n).astype(np.int32)
    return {"x": x, "y": y}, lens


def returnn_step_times(config: str, warmup: int) -> list:
    env = dict(os.environ, DISABLE_CUDA="1")
    proc = subprocess.run([sys.executable, "-m", "returnn", config, "++num_epochs", "4", "++log_verbosity", "5"],
                          capture_output=True, text=True, env=env, cwd=os.path.dirname(config), timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    times = [float(m) for m in re.findall(r"train epoch \d+, step \d+, .*?([\d.]+) sec/step", proc.stdout + proc.stderr)]
    return times[warmup:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-notebooks", action="store_true")
    args = ap.parse_args()
    g, time, loss = tagger()
    feeds, lens = data()
    hist = g.train(feeds, seq_lens={time: lens}, loss=loss, steps=args.steps, learning_rate=1e-3, batch_size=32,
                   progress=False)
    ours = hist.step_seconds[args.warmup:]
    with tempfile.TemporaryDirectory() as d:
        config = g.save(os.path.join(d, "model"), inputs=feeds, seq_lens={time: lens}, batch_size=32)
        theirs = returnn_step_times(config, args.warmup)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{'':32s}{'steps':>8s}{'median s/step':>16s}{'ratio':>8s}")
    print(f"{'RETURNN command line':32s}{len(theirs):8d}{b:16.4f}{1.0:8.2f}")
    print(f"{'g.train':32s}{len(ours):8d}{a:16.4f}{a / b:8.2f}")
    print(f"target: g.train <= 1.2x RETURNN's time per step: {'met' if a / b <= 1.2 else 'NOT met'}")
    if not args.no_notebooks:
        notebook_times()


def notebook_times():
    """Each notebook that trains, executed as the tests do: its time in all and in g.train."""
    import pathlib
    import time as clock

    import nbformat
    from nbclient import NotebookClient

    root = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
    print(f"\n{'notebook':32s}{'all s':>8s}{'g.train s':>12s}")
    for path in sorted(root.glob("0[789]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        # the kernel times its g.train calls (their builds included) and reports after the notebook's own cells
        nb.cells.insert(0, nbformat.v4.new_code_cell(
            "import time as _clock, recdebug.language.graph as _graph\n"
            "_train, _spent = _graph.Graph.train, [0.0]\n"
            "def _timed(self, *args, **kwargs):\n"
            "    t0 = _clock.perf_counter()\n"
            "    try:\n"
            "        return _train(self, *args, **kwargs)\n"
            "    finally:\n"
            "        _spent[0] += _clock.perf_counter() - t0\n"
            "_graph.Graph.train = _timed"))
        nb.cells.append(nbformat.v4.new_code_cell("print('TRAIN_SECONDS', _spent[0])"))
        t0 = clock.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
        total = clock.perf_counter() - t0
        out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        train = float(out.split("TRAIN_SECONDS")[1].split()[0]) if "TRAIN_SECONDS" in out else float("nan")
        print(f"{path.name:32s}{total:8.1f}{train:12.1f}")


if __name__ == "__main__":
    main()

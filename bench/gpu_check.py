"""GPU check: the bench LSTM run, traced and stepped on the GPU, compared with the same on the CPU.

Prints which device TensorFlow placed the loop's ops on (per build: run, trace, stepper), the time of each, and
the largest difference between GPU and CPU values (outputs, every traced State at every step, the stepper's States
after every step). Exits 0 when they agree within the tolerance, 1 when not, 2 when TensorFlow sees no GPU.

    python bench/gpu_check.py [--steps 200] [--atol 1e-4]
"""
from __future__ import annotations

import argparse
import collections
import sys
import time as clock

import numpy as np

import recdebug as rd
from bench_stepping import bench_lstm

batch = rd.batch_dim


def build(steps: int):
    g, loop, out, lstm, time = bench_lstm()
    rng = np.random.default_rng(0)
    lens = rng.integers(steps // 2, steps + 1, 8).astype(np.int32)
    lens[0] = steps
    x_np = rng.standard_normal((8, steps, 64)).astype(np.float32)
    return g, loop, out, lstm, {"x": x_np}, {time: lens}


def placement(g, kind: str) -> str:
    """Where the ops of the last build of ``kind`` ("run", "trace", "stepper") were placed: device -> op count."""
    engines = [e for key, e in g._engines.items() if (key[0] == "stepper") == (kind == "stepper")]
    if kind != "stepper":
        engines = [e for e in engines if (e.capture is None) == (kind == "run")]
    if not engines:
        return "(no build)"
    counts = collections.Counter()
    for op in engines[-1].tf_graph.get_operations():
        dev = op.device or "(unplaced)"
        counts["GPU" if "GPU" in dev.upper() else "CPU" if "CPU" in dev.upper() else dev] += 1
    return ", ".join(f"{d}: {n} ops" for d, n in counts.most_common())


def executed_on(g, feed, lens) -> str:
    """Where the ops of the last run build really ran (TensorFlow's step stats): device -> node count."""
    import tensorflow as tf

    engine = [e for key, e in g._engines.items() if key[0] != "stepper" and e.capture is None][-1]
    fd, _, _ = engine.feed_dict(feed, lens)
    fetch = [engine.network.get_layer(name).output.placeholder for name in engine.emitted.fetch.values()]
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    metadata = tf.compat.v1.RunMetadata()
    engine.session.run(fetch, feed_dict=fd, options=options, run_metadata=metadata)
    counts = collections.Counter()
    for dev in metadata.step_stats.dev_stats:
        kind = "GPU" if "GPU" in dev.device.upper() else "CPU" if "CPU" in dev.device.upper() else dev.device
        counts[kind] += len(dev.node_stats)
    return ", ".join(f"{d}: {n} nodes" for d, n in counts.most_common())


def run_all(device: str, steps: int):
    g, loop, out, lstm, feed, lens = build(steps)
    times, values = {}, {}
    t0 = clock.perf_counter()
    res = g.run(feed, seq_lens=lens, device=device)
    times["run"] = clock.perf_counter() - t0
    hid = next(d for d in lstm.h.dims if not d.is_batch)
    values["out"] = res.numpy(out, order=(batch, loop.axis, hid))
    t0 = clock.perf_counter()
    tr = g.trace(feed, seq_lens=lens, device=device)
    times["trace"] = clock.perf_counter() - t0
    for name, state in (("h", lstm.h), ("c", lstm.c)):
        values[f"trace {name}"] = tr.numpy(state, order=(batch, loop.axis, hid))
    t0 = clock.perf_counter()
    st = g.stepper(feed, seq_lens=lens, device=device)
    stepped = {"h": [], "c": []}
    while not st.finished:
        st.step()
        stepped["h"].append(st.value(lstm.h, order=(batch, hid)))
        stepped["c"].append(st.value(lstm.c, order=(batch, hid)))
    times["stepper"] = clock.perf_counter() - t0
    for name, frames in stepped.items():
        values[f"stepper {name}"] = np.stack(frames, 1)
    where = {kind: placement(g, kind) for kind in ("run", "trace", "stepper")}
    where["run (executed)"] = executed_on(g, feed, lens)
    mask = np.arange(steps)[None, :] < np.asarray(lens[next(iter(lens))])[:, None]
    g.close()
    return times, values, where, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--first", default="gpu", help="the device compared with the CPU (cpu: check this script)")
    args = ap.parse_args()
    import tensorflow as tf

    print("TensorFlow", tf.__version__, "GPUs:", [d.name for d in tf.config.list_physical_devices("GPU")])
    if args.first == "gpu" and not rd.backend.engine.gpu_available():
        print("TensorFlow sees no GPU: nothing to check")
        return 2
    gpu_times, gpu_values, gpu_where, mask = run_all(args.first, args.steps)
    cpu_times, cpu_values, cpu_where, _ = run_all("cpu", args.steps)
    first = args.first.upper()
    print(f"\n{'build':<8} {first + ' s':>8} {'CPU s':>8}  ops placed ({first} build | CPU build)")
    for kind in ("run", "trace", "stepper"):
        print(f"{kind:<8} {gpu_times[kind]:8.2f} {cpu_times[kind]:8.2f}  {gpu_where[kind]} | {cpu_where[kind]}")
    print(f"run, where the nodes executed: {gpu_where['run (executed)']} | {cpu_where['run (executed)']}")
    print(f"\n{'value':<12} {'max |' + first + ' - CPU| on valid frames':>32}")
    worst = 0.0
    for key, gpu in gpu_values.items():
        cpu = cpu_values[key]
        m = mask.reshape(mask.shape + (1,) * (gpu.ndim - 2))
        diff = float(np.max(np.where(m, np.abs(gpu - cpu), 0.0)))
        worst = max(worst, diff)
        print(f"{key:<12} {diff:32.2e}")
    ok = worst <= args.atol
    print(f"\n{'agree' if ok else 'DIFFER'} within atol={args.atol:g} (largest difference {worst:.2e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

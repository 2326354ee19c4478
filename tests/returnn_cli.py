"""RETURNN's own command line, as a user runs it: train a config briefly, forward data through a checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

DEMOS = Path(__file__).parent / "returnn_demos"


def returnn(*args, cwd, timeout=600):
    env = dict(os.environ, DISABLE_CUDA="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "returnn", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"returnn {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def train(config: str, workdir: Path, train_data: str, dev_data: str) -> Path:
    """``python -m returnn CONFIG ++num_epochs 1 ++model DIR/model ++train ... ++dev ...``: the checkpoint."""
    workdir.mkdir(parents=True, exist_ok=True)
    returnn(DEMOS / config, "++num_epochs", 1, "++model", workdir / "model", "++train", train_data, "++dev", dev_data,
            "++log_verbosity", 2, cwd=workdir)
    ckpt = workdir / "model.001"
    assert (workdir / "model.001.index").exists()
    return ckpt


def _eval_data(workdir: Path, seqs: list, output_dim: dict) -> Path:
    """A config file that makes the given sequences RETURNN's ``eval`` dataset (a StaticDataset read from an .npz),
    and the only one (``dev = None``: RETURNN writes scores per sequence for one dataset only)."""
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(workdir / "feed.npz", **{f"{k}_{i}": v for i, seq in enumerate(seqs) for k, v in seq.items()})
    keys = sorted(seqs[0])
    extra = workdir / "eval_data.config"
    extra.write_text(
        "#!rnn.py\nimport numpy as _np\n"
        f"_d = _np.load({str(workdir / 'feed.npz')!r})\n"
        f"eval = {{'class': 'StaticDataset', 'output_dim': {output_dim!r}, 'data': "
        f"[{{_k: _d['%s_%d' % (_k, _i)] for _k in {keys!r}}} for _i in range({len(seqs)})]}}\n"
        "dev = None\n")
    return extra


def forward(config: str, ckpt: Path, workdir: Path, seqs: list, output_dim: dict, layer: str = "output") -> list:
    """RETURNN's forward task (``++task forward``) of ``layer`` over the given sequences (dicts of arrays by
    extern_data name, unpadded): one array [frames, ...] per sequence, in the given order."""
    import h5py

    extra = _eval_data(workdir, seqs, output_dim)
    out = workdir / "forward.hdf"
    returnn(DEMOS / config, extra, "++task", "forward", "++model", str(ckpt)[:-len(".001")], "++load_epoch", 1,
            "++forward_output_layer", layer, "++output_file", out, "++forward_batch_size", 100000,
            "++log_verbosity", 2, cwd=workdir)
    with h5py.File(out, "r") as f:
        frames, lens = f["inputs"][...], f["seqLengths"][:, 0]
        tags = [t.decode() if isinstance(t, bytes) else t for t in f["seqTags"][...]]
    starts = np.concatenate([[0], np.cumsum(lens)])
    by_tag = {tag: frames[starts[i]:starts[i + 1]] for i, tag in enumerate(tags)}
    return [by_tag[f"seq-{i}"] for i in range(len(seqs))]


def evaluate(config: str, ckpt: Path, workdir: Path, seqs: list, output_dim: dict, loss: str = "output") -> dict:
    """RETURNN's eval task (``++task eval``) over the given sequences: the config's loss per sequence, by index."""
    extra = _eval_data(workdir, seqs, output_dim)
    out = workdir / "scores.py"
    returnn(DEMOS / config, extra, "++task", "eval", "++model", str(ckpt)[:-len(".001")], "++load_epoch", 1,
            "++eval_output_file_per_seq", out, "++output_per_seq_file_format", "py", "++loss_name", loss,
            "++log_verbosity", 2,
            cwd=workdir)
    import re

    found = re.findall(r"'seq-(\d+)': \{'score': (?:np\.float32\()?([-+0-9.eE]+)", out.read_text())
    assert len(found) == len(seqs), out.read_text()
    return {int(i): float(v) for i, v in found}

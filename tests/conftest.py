import os

os.environ.setdefault("DISABLE_CUDA", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

# Tolerance for float32 RETURNN results against float64 numpy references of the same loop.
ATOL = 1e-5


def assert_frames_close(got, ref, lens, atol=ATOL):
    """Compare [batch, time, ...] arrays on the frames t < lens[b] only (the rest is padding)."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape[0] == ref.shape[0]
    for b, n in enumerate(lens):
        np.testing.assert_allclose(got[b, :n], ref[b, :n], atol=atol, rtol=0, err_msg=f"sequence {b}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_params(res, rng, scale=0.5):
    """Non-zero values for every parameter of a run (biases included), to be fed with ``params=``."""
    return {name: (rng.standard_normal(v.shape) * scale).astype(np.float32) for name, v in res.params().items()}


@pytest.fixture(scope="session")
def shell():
    """The test IPython shell, started once for the session (IPython's test app starts only once)."""
    from IPython import get_ipython as running
    from IPython.testing.globalipapp import get_ipython

    return get_ipython() or running()

"""A loop over a static dim inside another loop (the design text's sub-module iterating over a window per frame):
emitted as a while loop of the dim's size that reads each step's frame, the user's code as written. Run (optimize
on and off), trace, the stepper and its descend against numpy; ragged outer lengths, garbage in padding frames."""
import numpy as np
import pytest

import recdebug as rd

batch = rd.batch_dim
ATOL = 1e-5
LENS = np.array([4, 2, 3])


def window_loop():
    """Per frame of x, a window of 3 sub-frames read one by one (and a second input with the window, zipped):
    acc = tanh(acc * 0.5 + x_w * y_w + h); the frame's result feeds h."""
    time, win, feat = rd.Dim("time"), rd.Dim("win", 3), rd.Dim("feat", 2)
    with rd.Graph() as g:
        x = rd.Input("x", [batch, time, win, feat])
        y = rd.Input("y", [batch, win])
        h = rd.State({batch, feat}, initial=0.0)
        with rd.Loop() as outer:
            x_t = outer.unstack(x)
            acc = rd.State({batch, feat}, initial=0.0)
            with rd.Loop() as inner:
                x_w, y_w = inner.unstack(x_t, axis=win), inner.unstack(y, axis=win)
                acc.assign(rd.tanh(acc.get() * 0.5 + x_w * y_w + h.get()))
                ws = inner.stack(acc.get())
                first = inner.last(rd.cast(inner.index, "float32"))
            h.assign(acc.get())
            out, lasts = outer.stack(ws), outer.stack(first)
    return g, dict(x=x, y=y, h=h, acc=acc, ws=ws, out=out, lasts=lasts, time=time, win=win, feat=feat,
                   outer=outer, inner=inner)


def data(rng):
    x = rng.standard_normal((3, 4, 3, 2)).astype(np.float32)
    x[np.arange(4)[None, :] >= LENS[:, None]] = 1e3  # garbage in the padding frames
    y = rng.standard_normal((3, 3)).astype(np.float32)
    return x, y


def reference(x, y):
    """[batch, time, win, feat]: acc after each sub-frame of each frame."""
    ref = np.zeros((3, 4, 3, 2))
    for b in range(3):
        h = np.zeros(2)
        for t in range(LENS[b]):
            a = np.zeros(2)
            for w in range(3):
                a = np.tanh(a * 0.5 + x[b, t, w].astype(np.float64) * y[b, w] + h)
                ref[b, t, w] = a
            h = a
    return ref


@pytest.mark.parametrize("optimize", [True, False])
def test_a_window_loop_inside_a_loop_runs_as_numpy_computes_it(rng, optimize):
    g, v = window_loop()
    x, y = data(rng)
    ref = reference(x, y)
    res = g.run({"x": x, "y": y}, seq_lens={v["time"]: LENS}, optimize=optimize)
    got = res.numpy(v["out"], order=(batch, v["time"], v["win"], v["feat"]))  # the static dim back, as written
    for b in range(3):
        np.testing.assert_allclose(got[b, :LENS[b]], ref[b, :LENS[b]], atol=ATOL)
    lasts = res.numpy(v["lasts"], order=(batch, v["time"]))
    for b in range(3):
        np.testing.assert_array_equal(lasts[b, :LENS[b]], 2.0)  # the window's last step, t = 2


def test_the_hierarchy_shows_the_while_loop_that_was_emitted():
    g, v = window_loop()
    net = g.net_dict()
    inner = net["loop"]["unit"]["loop"]
    assert inner["class"] == "rec" and inner["from"] == [] and inner["max_seq_len"] == 3
    frames = [layer for layer in inner["unit"].values() if layer["class"] == "gather"]
    assert len(frames) == 2 and all(f["position"] == ":i" for f in frames)  # each step reads its frame


def test_a_window_loop_is_traced_stepped_and_descended_into_as_numpy_computes_it(rng):
    g, v = window_loop()
    x, y = data(rng)
    ref = reference(x, y)
    lens = {v["time"]: LENS}
    tr = g.trace({"x": x, "y": y}, seq_lens=lens)
    inner_acc = tr.numpy(v["acc"], order=(batch, v["time"], v["win"], v["feat"]))  # every sub-step of every frame
    for b in range(3):
        np.testing.assert_allclose(inner_acc[b, :LENS[b]], ref[b, :LENS[b]], atol=ATOL)
    st = g.stepper({"x": x, "y": y}, seq_lens=lens)
    for t in range(4):
        st.step()
        inner = st.descend()
        assert inner.T == 3
        for w in range(3):
            inner.step()
            got = inner.value(v["acc"], order=(batch, v["feat"]))
            for b in range(3):
                if t < LENS[b]:
                    np.testing.assert_allclose(got[b], ref[b, t, w], atol=ATOL, err_msg=f"t={t} w={w} b={b}")
        assert inner.finished
        h = st.value(v["h"], order=(batch, v["feat"]))
        for b in range(3):
            np.testing.assert_allclose(h[b], ref[b, min(t, LENS[b] - 1), 2], atol=ATOL)
    st.step_back(2)
    st.set_state(v["h"], np.zeros((3, 2), np.float32))  # a what-if: the window of frame 2 starts from h = 0
    st.step()
    a = np.zeros((3, 2))
    for w in range(3):
        a = np.tanh(a * 0.5 + x[:, 2, w].astype(np.float64) * y[:, w, None])
    np.testing.assert_allclose(st.value(v["h"], order=(batch, v["feat"]))[[0, 2]], a[[0, 2]], atol=ATOL)
    d = rd.debugger(st)
    assert list(d.views) == [v["h"].path(g)]
    d.close()
    st.close()


def test_a_window_loop_two_loops_deep_runs_as_numpy_computes_it(rng):
    """The static dim's loop inside a loop inside a loop."""
    time, sub, win = rd.Dim("time"), rd.Dim("sub", 2), rd.Dim("win", 3)
    with rd.Graph() as g:
        x = rd.Input("x", [batch, time, sub, win])
        with rd.Loop() as outer:
            x_t = outer.unstack(x)
            with rd.Loop() as middle:
                x_s = middle.unstack(x_t, axis=sub)
                s = rd.State({batch}, initial=1.0)
                with rd.Loop() as inner:
                    s.assign(s.get() * 0.5 + inner.unstack(x_s, axis=win))
                    ss = inner.stack(s.get())
                ms = middle.stack(ss)
            out = outer.stack(ms)
    x_np = rng.standard_normal((3, 4, 2, 3)).astype(np.float32)
    x_np[np.arange(4)[None, :] >= LENS[:, None]] = 1e3
    ref = np.zeros((3, 4, 2, 3))
    for b in range(3):
        for t in range(LENS[b]):
            for k in range(2):
                c = 1.0
                for w in range(3):
                    c = c * 0.5 + float(x_np[b, t, k, w])
                    ref[b, t, k, w] = c
    for optimize in (True, False):
        got = g.run({"x": x_np}, seq_lens={time: LENS}, optimize=optimize).numpy(out, order=(batch, time, sub, win))
        for b in range(3):
            np.testing.assert_allclose(got[b, :LENS[b]], ref[b, :LENS[b]], atol=ATOL, rtol=1e-6)

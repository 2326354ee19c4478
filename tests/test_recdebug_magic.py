"""%recdebug through a real IPython shell: RETURNN's demo configs and net dicts traced, stepped live and searched;
values against the model API and numpy; -o contents; every error a one-line message; the kernel usable after."""
import contextlib
import io
import shutil

import numpy as np
import pytest
from IPython.core.error import UsageError

import recdebug as rd
from recdebug.notebook.cell import RecloopError
from recdebug.notebook.returnn_debug import RecdebugResult
from returnn_cli import DEMOS, train
from test_from_returnn import ATOL, LSTM_CONFIG, assert_frames, lstm_feed, numpy_explicit_lstm, softmax, weights

CFG = str(DEMOS / LSTM_CONFIG)
LSTM_LAYERS = ("input", "input_gate", "forget_gate", "output_gate", "cell_in", "c", "output")

# A decoder with a choice layer (random init): the beam search --search steps.
SEARCH_NET = {
    "encoder": {"class": "linear", "from": "data", "n_out": 8, "activation": "tanh"},
    "output": {"class": "rec", "from": [], "max_seq_len": "max_len_from('base:encoder')", "target": "classes",
               "unit": {
                   "embed": {"class": "linear", "from": "prev:output", "n_out": 6, "activation": None},
                   "s": {"class": "linear", "from": ["prev:s", "embed"], "n_out": 8, "activation": "tanh"},
                   "prob": {"class": "softmax", "from": "s", "target": "classes"},
                   "output": {"class": "choice", "from": "prob", "target": "classes", "beam_size": 3,
                              "initial_output": 0},
                   "end": {"class": "compare", "from": "output", "value": 0}}},
}
SEARCH_DATA = {"data": {"dim": 9}, "classes": {"dim": 5, "sparse": True}}
# A layer inside the unit that keeps a hidden state of its own: traced, but not steppable live.
HIDDEN_STATE_NET = {"loop": {"class": "rec", "from": "data", "unit": {
    "inner": {"class": "rec", "unit": "lstm", "n_out": 4, "from": ["data:source", "prev:output"]},
    "output": {"class": "linear", "activation": "tanh", "n_out": 3, "from": "inner"}}}}


@pytest.fixture(scope="module")
def ip(shell):
    shell.run_cell("%load_ext recdebug")
    rng = np.random.default_rng(1234)
    x, lens = lstm_feed(rng)
    shell.user_ns.update(x_np=x, lens_np=lens, search_net=SEARCH_NET, search_data=SEARCH_DATA,
                         hidden_net=HIDDEN_STATE_NET, lstm_data={"data": {"dim": 9}}, not_array="abc",
                         broken_net={"loop": {"class": "rec", "from": "data", "unit": {
                             "output": {"class": "linear", "from": "nowhere", "n_out": 3}}}},
                         flat_net={"out": {"class": "linear", "from": "data", "n_out": 3}},
                         x_short=x[..., :4])
    return shell


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("recdebug_magic")
    return train(LSTM_CONFIG, root / "lstm", '{"class": "Task12AXDataset", "num_seqs": 200}',
                 '{"class": "Task12AXDataset", "num_seqs": 20, "fixed_random_seed": 42}')


def run(ip, code):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        result = ip.run_cell(code)
    return result, out.getvalue() + err.getvalue()


def ok(ip, code) -> RecdebugResult:
    r, out = run(ip, code)
    assert r.success, (r.error_in_exec, out[-2000:])
    return ip.user_ns["res"]


def test_help_lists_every_option_and_an_example(ip):
    doc = ip.find_line_magic("recdebug").__doc__
    for option in ("CONFIG", "--checkpoint", "--extern-data", "--feed", "--lens", "--seed", "--out", "--rec",
                   "--live", "--search", "--beam", "--device", "--static", "--verbose"):
        assert option in doc, option
    assert "%recdebug demo-tf-rec-explicit-lstm.config --checkpoint model.001 --feed data=x_np" in doc
    assert "res.trace" in doc and "res.stepper" in doc and "res.model" in doc  # what -o keeps
    assert ip.find_cell_magic("recloop") is not None  # %load_ext registers both


def test_trace_equals_the_model_api_and_o_keeps_everything(ip, tmp_path, monkeypatch):
    # a quoted path with a space under ~
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my configs").mkdir()
    shutil.copy(CFG, tmp_path / "my configs" / LSTM_CONFIG)
    res = ok(ip, f'%recdebug "~/my configs/{LSTM_CONFIG}" --feed data=x_np --lens data=lens_np --device cpu -o res')
    x, lens = ip.user_ns["x_np"], ip.user_ns["lens_np"]
    assert isinstance(res, RecdebugResult) and res.rec == "lstm" and res.model.device == "cpu"
    assert res.model.path == str(tmp_path / "my configs" / LSTM_CONFIG) and res.model.checkpoint is None
    assert res.feeds["data"] is x and sorted(res.feeds) == ["classes", "data"]  # classes: random labels
    assert res.feeds["classes"].min() >= 0 and res.feeds["classes"].max() < 2
    assert "lstm" in res.net_dict
    # the model's own API on the same inputs (its random initialization): the same trace and run
    m = res.model
    tr = m.trace({"data": x}, seq_lens={"data": lens})
    assert sorted(res.trace.keys()) == sorted(tr.keys()) == sorted(f"lstm/{n}" for n in LSTM_LAYERS)
    np.testing.assert_array_equal(res.trace.lens("lstm:time"), lens)
    for key in tr.keys():
        order = ["batch", "lstm:time"] + [d for d in tr.dims_of(key) if d not in ("batch", "lstm:time")]
        assert_frames(res.trace.numpy(key, order=order), tr.numpy(key, order=order), lens, key, atol=0)
    assert sorted(res.outputs) == sorted(res.result.keys()) and res.outputs["output"].shape == (5, 7, 2)
    # the debugger browses this trace
    assert res.widget.trace is res.trace and sorted(res.widget.views) == ["lstm/c", "lstm/output"]
    res.widget.seek(3)
    b = res.widget.sequence
    np.testing.assert_array_equal(res.widget.views["lstm/c"]._array[:lens[b]],
                                  res.trace.numpy("lstm/c", order=["batch", "lstm:time", tr.dims_of("lstm/c")[-1]])
                                  [b, :lens[b]])
    # the stepper, made on first use, steps the same values
    st = res.stepper.step(2)
    valid = 1 < lens  # the sequences still running at t=1
    want = res.trace.numpy("lstm/c", order=["lstm:time", "batch", tr.dims_of("lstm/c")[-1]])[1]
    np.testing.assert_allclose(st.value("lstm/c")[valid], want[valid], atol=ATOL)
    assert res.stepper is st


def test_checkpoint_trace_equals_numpy_of_the_unit(ip, trained):
    res = ok(ip, f"%recdebug {CFG} --checkpoint {trained} --feed data=x_np --lens data=lens_np -o res")
    x, lens = ip.user_ns["x_np"], ip.user_ns["lens_np"]
    assert res.model.checkpoint == str(trained)
    ref = numpy_explicit_lstm(weights(trained), x.astype(np.float64), lens)
    for name, want in ref.items():
        key = f"lstm/{name}"
        rest = [d for d in res.trace.dims_of(key) if d not in ("batch", "lstm:time")]
        assert_frames(res.trace.numpy(key, order=["batch", "lstm:time"] + rest), want, lens, name)
    w = weights(trained)  # the run: the softmax layer after the loop
    assert_frames(res.numpy("output"), softmax(ref["output"] @ w["output/W"] + w["output/b"]), lens, "run: output")
    # a checkpoint given by its .index file is the same checkpoint
    res2 = ok(ip, f"%recdebug {CFG} --checkpoint {trained}.index --feed data=x_np --lens data=lens_np -o res")
    assert res2.model.checkpoint == str(trained)


def test_live_steps_the_stepper_in_the_widget(ip, trained):
    res = ok(ip, f"%recdebug {CFG} --checkpoint {trained} --feed data=x_np --lens data=lens_np --live -o res")
    x, lens = ip.user_ns["x_np"], ip.user_ns["lens_np"]
    st, d = res.stepper, res.widget
    assert d.stepper is st and st.t == 0 and st.T == 7
    ref = numpy_explicit_lstm(weights(trained), x.astype(np.float64), lens)
    for t in range(3):
        d.step()
        valid = t < lens
        for name in ("c", "output", "forget_gate"):
            np.testing.assert_allclose(st.value(f"lstm/{name}")[valid], ref[name][valid, t], atol=ATOL,
                                       err_msg=f"{name} at t={t}")
    assert st.t == 3 and d.t == 3 and "3 of 7 steps" in d.status
    b = d.sequence
    np.testing.assert_allclose(d.views["lstm/c"]._array[:3], ref["c"][b, :3], atol=ATOL)
    # the trace of the same line: what the stepper stepped
    np.testing.assert_allclose(res.trace.numpy("lstm/c", order=["batch", "lstm:time", "input_gate:feature-dense"])
                               [b, :3], ref["c"][b, :3], atol=ATOL)


def test_search_steps_the_beam_search_of_a_net_dict(ip):
    res = ok(ip, "%recdebug search_net --extern-data search_data --feed data=x_np --lens data=lens_np "
                 "--search --beam 2 -o res")
    assert res.trace is None and res.result is None and res.rec == "output"
    st, d = res.stepper, res.widget
    assert st.search and st.beam == 2 and d.stepper is st
    d.step()
    # after the first step: each sequence's two best labels, scored by the log-probabilities of the first one
    prob = st.value("output/prob").astype(np.float64)  # [batch, beam, classes]
    beams = st.beams()
    for b in range(5):
        logp = np.log(prob[b, 0])
        best = np.argsort(-logp)[:2]
        np.testing.assert_array_equal(beams.labels[0, b], best)
        np.testing.assert_allclose(beams.scores[0, b], logp[best], atol=ATOL)
    d.step(2)
    assert st.t == 3 and beams.labels.shape == (1, 5, 2) and st.beams().labels.shape == (3, 5, 2)
    with pytest.raises(rd.RecDebugError, match="--search line does not run"):
        res.numpy("encoder")


def test_static_shows_a_figure_of_the_trace(ip):
    res = ok(ip, "%recdebug hidden_net --extern-data lstm_data --static --seed 3 -o res")
    assert res.widget is None and res.figure is not None
    lens = res.seq_lens["data"]
    assert res.feeds["data"].shape == (3, 8, 9) and lens[0] == 8 and lens.min() >= 1  # seeded random data
    np.testing.assert_array_equal(res.trace.lens("loop:time"), lens)


def one_line_error(r) -> str:
    err = r.error_in_exec
    assert isinstance(err, (UsageError, RecloopError)), repr(err)
    text = str(err) if isinstance(err, UsageError) else "\n".join(err._render_traceback_())
    assert "\n" not in text.strip(), text
    return text


@pytest.mark.parametrize("line,error,message", [
    ("%recdebug", UsageError, "CONFIG"),
    ("%recdebug --bogus x.config", UsageError, "unrecognized arguments: --bogus"),
    ("%recdebug nowhere.config", UsageError, "no config file 'nowhere.config': give the path of a RETURNN config"),
    ("%recdebug nothing_here", UsageError, "and no notebook variable 'nothing_here'"),
    ("%recdebug x_np", UsageError, "x_np is a ndarray: give a RETURNN config file's path or a variable holding a "
                                   "net dict"),
    ("%recdebug not_array", UsageError, "no config file 'abc' (the value of not_array)"),
    (f"%recdebug {CFG} --checkpoint /nowhere/model.001", UsageError, "no RETURNN checkpoint there (expected "
                                                                      "/nowhere/model.001.index)"),
    (f"%recdebug {CFG} --feed data=nope", UsageError, "--feed: no variable 'nope' in the notebook"),
    (f"%recdebug {CFG} --feed data", UsageError, "--feed expects NAME=VAR"),
    (f"%recdebug {CFG} --feed data=not_array", UsageError, "not_array is a str, not an array of numbers"),
    (f"%recdebug {CFG} --beam 3", UsageError, "--beam sets the beam of the search: add --search"),
    (f"%recdebug {CFG} --live --static", UsageError, "--static draws the trace; it cannot step live"),
    (f"%recdebug {CFG} --device tpu", UsageError, "invalid choice"),
    ("%recdebug hidden_net", UsageError, "hidden_net is a net dict: give its extern data with --extern-data VAR"),
    ("%recdebug hidden_net --extern-data not_array", UsageError, "--extern-data not_array: expected a dict"),
    (f"%recdebug {CFG} --feed x=x_np", RecloopError, "--feed/--lens name ['x'], but the config's extern data are "
                                                     "['classes', 'data']"),
    (f"%recdebug {CFG} --feed data=x_short", RecloopError, "RunError: input 'data': axis 2 (feature:data) has size "
                                                           "4, expected 9"),
    (f"%recdebug {CFG} --rec nope", RecloopError, "no rec layer 'nope' with a unit in the network: its rec layers "
                                                  "with a unit are ['lstm']"),
    ("%recdebug broken_net --extern-data lstm_data", RecloopError, "RETURNN could not build the network"),
    ("%recdebug flat_net --extern-data lstm_data", RecloopError, "it has no rec layer with a unit"),
    ("%recdebug hidden_net --extern-data lstm_data --live", RecloopError,
     "--live: stepping: layer loop/inner (class 'rec') keeps a hidden state"),
    (f"%recdebug {CFG} --search", RecloopError, "rec layer 'lstm' has no choice layer: there is no search to step"),
])
def test_bad_input_is_a_one_line_error_naming_what_to_do(ip, line, error, message):
    r, _ = run(ip, line)
    assert isinstance(r.error_in_exec, error), repr(r.error_in_exec)
    assert message in one_line_error(r)


def test_verbose_shows_the_traceback_and_a_later_line_works(ip):
    r, _ = run(ip, "%recdebug hidden_net --extern-data lstm_data --live --verbose")
    text = "\n".join(r.error_in_exec._render_traceback_())
    assert "returnn_stepper.py" in text and text.splitlines()[-1].startswith("--live: stepping")
    for line in ("%recdebug nowhere.config", f"%recdebug {CFG} --feed data=x_short",
                 "%recdebug broken_net --extern-data lstm_data"):
        assert not run(ip, line)[0].success
    res = ok(ip, f"%recdebug {CFG} --feed data=x_np --lens data=lens_np -o res")
    assert res.trace.numpy("lstm/c").shape[0] == 5
    r, _ = run(ip, "y = 1 + 1")
    assert r.success and ip.user_ns["y"] == 2


def test_the_previous_result_is_closed_when_the_next_line_runs(ip):
    run(ip, f"%recdebug {CFG} --live")
    st = ip.magics_manager.registry["RecloopMagics"]._last_recdebug.stepper.step()
    assert ok(ip, f"%recdebug {CFG} -o res")
    with pytest.raises(rd.RecDebugError, match="this stepper is closed: a later %recdebug line ran"):
        st.step()
    first = ip.user_ns["res"]
    st = first.stepper.step()
    assert ok(ip, f"%recdebug {CFG} -o res") is not first
    with pytest.raises(rd.RecDebugError, match="this stepper is closed: %recdebug -o res ran again") as info:
        st.value("lstm/c")
    assert "res.stepper" in str(info.value)
    with pytest.raises(rd.RecDebugError, match="this %recdebug result is closed"):
        first.stepper

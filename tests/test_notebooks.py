"""Every teaching notebook runs top to bottom on CPU, and the values its text claims are what it prints."""
import pathlib
import time

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


def first_overflow_step() -> int:
    """Independently: the first t at which h = 10 h + 1 (float32) is no longer finite."""
    h = np.float32(0)
    with np.errstate(over="ignore"):
        for t in range(100):
            h = np.float32(h * np.float32(10) + np.float32(1))
            if not np.isfinite(h):
                return t
    raise AssertionError("no overflow")


# notebook -> (text its markdown states, line its claim cells print)
CLAIMS = {
    "01_first_loop.ipynb": [("sequence 1 runs 3 steps", "CLAIM steps of sequence 1: 3"),
                            ("better than 1e-5", "CLAIM matches numpy: True")],
    "02_modules_with_state.ipynb": [
        ("`my_rec/h_linear/bias`, `my_rec/h_linear/weight`,\n`my_rec/x_linear/bias`, `my_rec/x_linear/weight`",
         "CLAIM parameter names: ['my_rec/h_linear/bias', 'my_rec/h_linear/weight', 'my_rec/x_linear/bias', "
         "'my_rec/x_linear/weight']"),
        ("strictly between -1 and 1", "CLAIM max |h| < 1: True")],
    "03_nested_loops.ipynb": [("the emitted net has 2 rec layers", "CLAIM rec layers: 2"),
                              ("it restarted at 0", "CLAIM restarts at 0: True")],
    "04_while_loops.ipynb": [("`[3, 2, 3]` without the end frame", "CLAIM lengths without eos: [3, 2, 3]"),
                             ("`[4, 3, 4]` with it", "CLAIM lengths with eos: [4, 3, 4]")],
    "05_moved_out_of_the_loop.ipynb": [("`my_rec.x_linear` is moved out", "CLAIM x_linear moved out: True"),
                                       ("`my_rec.h_linear` stays in the loop", "CLAIM h_linear in loop: True"),
                                       ("the two traces agree", "CLAIM traces agree: True")],
    "07_beam_search.ipynb": [("sorted by score, best first", "CLAIM sorted best first: True"),
                             ("backtracking the best one gives exactly", "CLAIM backtracking gives the result: True"),
                             ("greedy decoding, checked against numpy", "CLAIM beam size 1 is greedy: True"),
                             ("beam search beats greedy on sequence 1",
                              "CLAIM beam search beats greedy on sequence 1: True"),
                             ("at `t=3` greedy takes 2, the most probable label there",
                              "CLAIM sequence 1 parts at t=3: greedy takes 2, beam search's best 5, "
                              "behind greedy there: True"),
                             ("takes 5 and is behind greedy at that step",
                              "CLAIM sequence 1 parts at t=3: greedy takes 2, beam search's best 5, "
                              "behind greedy there: True"),
                             ("`[4, 3, 2, 5, 0]`, greedy ends with `[4, 3, 2, 2, 5, 0]`",
                              "CLAIM sequence 1: beam search [4, 3, 2, 5, 0] is right, greedy [4, 3, 2, 2, 5, 0] "
                              "is not: True"),
                             ("gets 6 right, greedy 4", "CLAIM right: beam search 6 of 8, greedy 4 of 8"),
                             ("finds exactly the hypotheses of the trace", "CLAIM live search equals the trace: True"),
                             ("every final hypothesis extends the edited one, and none of them is the right answer",
                              "CLAIM after the edit every final hypothesis extends the edited one, "
                              "none is right: True"),
                             ("higher than the second-best hypothesis did before it",
                              "CLAIM after the edit the best scores higher than the second-best before: True")],
    "06_hunting_nan.ipynb": [(f"the first Inf appears at t={first_overflow_step()}",
                              f"CLAIM breakpoint: NaN/Inf in h at t={first_overflow_step()}"),
                             ("stepping continues from it", "CLAIM finite after set_state: True")],
    "08_lstm_memory.ipynb": [
        ("the frame accuracy on the held-out data is at least 0.95", "CLAIM frame accuracy >= 0.95: True"),
        ("the depth is 3 throughout `t=9` to `t=15`, and 0 again from `t=21` to `t=24`",
         "CLAIM sequence 0: depth 3 at t=9..15, depth 0 again at t=21..24"),
        ("waits 16 steps on fillers", "CLAIM sequence 1: 16 fillers at depth 3"),
        ("a correlation with the depth above 0.9 in magnitude",
         "CLAIM best selected unit tracks the depth, |correlation| > 0.9: True"),
        ("monotonic from depth 0 to depth 4", "CLAIM mean per depth is monotonic: True"),
        ("the unit moves less than the smallest step between the mean levels",
         "CLAIM moves less than a step between depth levels during the fillers: True")],
    "09_vanishing_gradients.ipynb": [
        ("on sequence 0 the tanh RNN's gradient decays from the last step to `t=0`\nby a larger factor than the "
         "LSTM's", "CLAIM rnn decays more than lstm: True"),
        ("the RNN's median decay is larger than the LSTM's", "CLAIM median decay: rnn more than lstm: True"),
        ("decays by a larger factor than the RNN on every held-out string",
         "CLAIM lstm with forget bias 0 decays more than the rnn on every string: True"),
        ("below 5% of its height in the RNN's `h`, above 20% in the\nLSTM's `h` and above 90% in the LSTM's `c`",
         "CLAIM orange line at t=0: rnn h below 5%, lstm h above 20%, lstm c above 90%: True"),
        ("the LSTM is at least 0.95 accurate", "CLAIM lstm accuracy >= 0.95: True"),
        ("the tanh RNN is still below 0.65", "CLAIM rnn accuracy < 0.65: True"),
        ("gets its loss below 0.1 sooner than the one with bias 0",
         "CLAIM forget bias 3 learns sooner than bias 0: True"),
        ("whose forget gate opened\nduring training", "CLAIM the forget gate opened during training: True")],
    "10_bring_your_own_returnn.ipynb": [
        ("the dev score is below 1.5", "CLAIM dev score < 1.5: True"),
        ("the trace reproduces RETURNN's dev score and error of the last epoch",
         "CLAIM trace reproduces RETURNN's dev score and error: True"),
        ("in more frames than always guessing the blank", "CLAIM accuracy above always-blank: True"),
        ("its accuracy is at least 0.55", "CLAIM accuracy >= 0.55: True"),
        ("reproduce the `c` that RETURNN computed", "CLAIM recomputed attention reproduces c within 1e-5: True"),
        ("the peak lies on frame 0 in more than half of the steps that write a closing",
         "CLAIM peak on frame 0 in most closing-tag steps, rarely elsewhere: True"),
        ("the live stepper's values equal the trace's at every step",
         "CLAIM stepper equals the trace at every step: True")],
    "11_attention.ipynb": [
        ("before training, the attention's argmax is on the right frame in at most\n30% of the valid steps",
         "CLAIM before training: argmax on the right frame in at most 30% of the valid steps: True"),
        ("after training, in at least 95% of them",
         "CLAIM after training: argmax on the right frame in at least 95% of the valid steps: True"),
        ("after `k` steps every sequence's coverage sums to `k` over its valid frames",
         "CLAIM after k steps each sequence's coverage sums to k over its valid frames: True"),
        ("the debugger's coverage view holds its 4 valid frames",
         "CLAIM the coverage view of sequence 0 holds its 4 valid frames: True"),
        ("the alignment under the\nviews is the coverage's",
         "CLAIM the alignment under the views is the coverage's: True"),
        ("gets less than 1% of the attention, where it\nhad the largest weight before",
         "CLAIM after the edit the frame about to be read gets less than 1% of the attention, the most before: True"),
        ("the skipped frame gets less than 1% of the attention at every step from `t=2` to the\nend",
         "CLAIM the skipped frame gets less than 1% of the attention at every later step: True")],
}

# seconds a notebook may take (60 unless named here): 10 trains RETURNN's demo with RETURNN's command line, which on
# a machine without RETURNN's op cache first compiles its native ops (about 40 s idle, up to 100 s on a busy 2-core one)
TIME_LIMIT = {"10_bring_your_own_returnn.ipynb": 180}


def test_every_notebook_is_checked():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CLAIMS)


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_notebook_runs_and_its_claims_hold(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    limit = TIME_LIMIT.get(name, 60)
    start = time.perf_counter()
    NotebookClient(nb, timeout=max(120, limit), kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    elapsed = time.perf_counter() - start
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    printed = "".join(o.get("text", "") for c in nb.cells if "claim" in c.metadata.get("tags", [])
                      for o in c.get("outputs", []))
    stderr = [o.get("text", "")[:300] for c in nb.cells for o in c.get("outputs", [])
              if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, f"{name}: red stderr boxes (TensorFlow log lines?): {stderr}"
    for stated, line in CLAIMS[name]:
        assert stated in text, f"{name} no longer says {stated!r}"
        assert line in printed, f"{name} printed {printed!r}"
    assert nb.cells[-2].cell_type == "markdown" and nb.cells[-2].source.startswith("## Exercise")
    assert elapsed < limit, f"{name} took {elapsed:.0f} s"

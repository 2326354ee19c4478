"""The emitted RETURNN net dict: one rec layer per Loop, prev: state references, maps to layers and lines."""
import recdebug as rd

batch = rd.batch_dim
SOURCE = open(__file__).read().splitlines()


def line_of(marker):
    return next(i + 1 for i, text in enumerate(SOURCE) if text.rstrip().endswith(f"# line: {marker}"))


def build_nested():
    time, hid = rd.Dim("time"), rd.Dim("hid", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        h = rd.State({batch, hid}, initial=0.5)
        inner_h = rd.State({batch, hid})
        with rd.Loop() as outer:  # line: outer
            x_t = outer.unstack(x)
            with rd.Loop(max_seq_len=4) as inner:
                inner_h.assign(inner_h.get() + x_t)  # line: inner-assign
                inner.end(rd.reduce_sum(inner_h.get(), hid) > 1.0)
                y = inner.last(inner_h.get())
            h_new = rd.tanh(h.get() + y)  # line: tanh
            h.assign(h_new)
            out = outer.stack(h_new)
    return g, dict(x=x, h=h, y=y, h_new=h_new, out=out, outer=outer, inner=inner)


def test_each_loop_becomes_one_rec_layer_with_a_unit():
    g, t = build_nested()
    net = g.net_dict()
    recs = [name for name, layer in net.items() if layer["class"] == "rec"]
    assert recs == ["loop"]
    unit = net["loop"]["unit"]
    assert net["loop"]["from"] == "data:x"
    inner = [name for name, layer in unit.items() if layer["class"] == "rec"]
    assert inner == ["loop"] and "end" in unit["loop"]["unit"] and unit["loop"]["max_seq_len"] == 4
    assert "unit" in unit["loop"] and "output" in unit["loop"]["unit"] and "output" in unit


def test_state_reads_become_prev_references_with_the_initial_output():
    g, t = build_nested()
    net = g.net_dict()
    unit = net["loop"]["unit"]
    # a number initial is a top-level constant with the State's dims and dtype (RETURNN takes them from it)
    # the assigned value plus zeros of the State's dims (RETURNN guesses a State's dims from its value otherwise)
    assert unit["h"] == {"class": "combine", "kind": "add", "from": ["tanh", "h.zeros"], "is_output_layer": True,
                         "initial_output": "base:h.initial"}
    # zeros computed from the step (RETURNN may not stack a State made from values outside its loop otherwise)
    assert unit["h.zeros"]["class"] == "combine" and unit["h.zeros"]["from"][0] == "h.zeros.const"
    assert unit["h.zeros.const"]["class"] == "constant" and unit["h.zeros.const"]["value"] == 0
    assert unit[unit["h.zeros"]["from"][1]]["from"] == ":i"
    assert net["h.initial"]["class"] == "constant" and net["h.initial"]["value"] == 0.5
    assert net["h.initial"]["with_batch_dim"] and net["h.initial"]["dtype"] == "float32"
    assert unit["h.prev"] == {"class": "copy", "from": "prev:h"}
    inner_unit = unit["loop"]["unit"]
    assert inner_unit["inner_h.prev"]["from"] == "prev:inner_h"
    # restarts at its initial value (the top-level layer of the number) in every outer step
    assert inner_unit["inner_h"]["initial_output"] == "base:base:inner_h.initial"


def test_stack_and_last_are_exposed_outside_their_loop():
    g, t = build_nested()
    em = g.emitted()
    net = em.net
    assert em.layer_of[t["out"]] == "stack"
    assert net["stack"]["from"] == "loop/tanh" and net["loop"]["unit"]["tanh"]["is_output_layer"]
    y_layer = net["loop"]["unit"][em.layer_of[t["y"]].split("/")[-1]]
    assert y_layer["class"] == "gather" and y_layer["from"].startswith("loop/")


def test_every_tensor_maps_to_its_layer_and_the_users_line():
    g, t = build_nested()
    em = g.emitted()
    assert em.layer_of[t["h_new"]] == "loop/tanh"
    assert em.lines["loop/tanh"].lineno == line_of("tanh")
    assert em.lines["loop"].lineno == line_of("outer")
    assert em.lines["loop/loop/inner_h"].lineno == line_of("inner-assign")
    assert em.rec_paths[t["inner"]] == "loop/loop"
    assert em.layer_of[t["x"]] == "data:x"


def test_optimize_flag_reaches_every_rec_layer():
    g, _ = build_nested()
    for optimize in (True, False):
        net = g.net_dict(optimize=optimize)
        assert net["loop"]["optimize_move_layers_out"] is False  # it has a loop inside
        assert net["loop"]["unit"]["loop"]["optimize_move_layers_out"] is optimize


def test_reprs_are_short_and_say_what_it_is():
    g, t = build_nested()
    assert repr(t["h_new"]) == "Tensor('loop/tanh', {batch, hid:3})"
    assert repr(rd.Dim("hidden", 4)) == "Dim('hidden', 4)"
    assert repr(t["out"]).startswith("Tensor('stack', {batch, time, hid:3})")

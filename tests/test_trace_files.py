"""Trace files: a saved trace loads back equal and opens in the debugger as the original does; any invalid or
hostile file (truncated, flipped bits, swapped members, edited metadata, deflate bombs, pickles) raises one
RecDebugError, with bounded memory, before it inflates anything it cannot afford."""
import io
import json
import resource
import struct
import time
import warnings
import zipfile
import zlib

import matplotlib.pyplot as plt
import numpy as np
import pytest

import recdebug as rd
from recdebug.records import tracefile
from test_design_examples import lstm_loop
from test_search import build as build_decoder
from test_search import params as decoder_params

batch = rd.batch_dim
LENS = np.array([6, 3, 1, 5], dtype=np.int32)
INVALID = ": not a valid recdebug trace: "


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two real traces (an LSTM over frames, a beam search), each saved once: name -> (trace, path, bytes, extra)."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("traces")
    g, time_, dim, x, lstm, h, out, loop = lstm_loop()
    lstm_trace = g.trace({"x": rng.standard_normal((4, 6, 3)).astype(np.float32)}, seq_lens={time_: LENS})
    g2, loop2, y, labels = build_decoder(beam_size=3)
    search_trace = g2.trace({"enc": rng.standard_normal((3, 4)).astype(np.float32)}, params=decoder_params(rng),
                            search=True)
    out = {}
    for name, tr, extra in (("lstm", lstm_trace, lstm), ("search", search_trace, y)):
        path = folder / f"{name}.npz"
        tr.save(path)
        out[name] = (tr, path, path.read_bytes(), extra)
    return out


# --- building files ---
def members(data: bytes) -> list:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def zipped(parts, method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a duplicate member name, on purpose
        with zipfile.ZipFile(buf, "w", method) as zf:
            for name, data in parts:
                zf.writestr(name, data)
    return buf.getvalue()


def raw_zip(parts) -> bytes:
    """A zip written by hand, its header saying what the caller wants: (name, payload, method, crc, size)."""
    body, central = bytearray(), bytearray()
    for name, payload, method, crc, size in parts:
        n = name.encode()
        offset = len(body)
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(payload), size, len(n), 0)
        body += n + payload
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(payload), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    count = min(len(parts), 0xFFFF)  # zipfile reads entries until the directory ends, whatever this says
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(body), 0)
    return bytes(body + central + end)


def stored(parts) -> list:
    return [(name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)) for name, data in parts]


def npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_claiming(shape, data: bytes, descr="<f4") -> bytes:
    """An .npy member whose header claims ``shape`` over ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + data


def meta_of(parts) -> dict:
    return json.loads(np.load(io.BytesIO(dict(parts)["meta.npy"])).tobytes())


def with_member(parts, name, data) -> list:
    return [(n, data if n == name else d) for n, d in parts]


def with_meta(parts, meta) -> list:
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return with_member(parts, "meta.npy", npy(np.frombuffer(raw, np.uint8)))


def deflate_bomb(header: bytes, zeros_mib: int, honest_crc=True):
    """A deflate stream of ``header`` then ``zeros_mib`` MiB of zeros, about 1 KB per MiB: (payload, crc, size)."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    mib = co.compress(bytes(2 ** 20)) + co.flush(zlib.Z_FULL_FLUSH)  # a full flush: each copy stands alone
    payload = head + mib * zeros_mib + co.flush()
    crc = zlib.crc32(header)
    if honest_crc:
        zero = bytes(2 ** 20)
        for _ in range(zeros_mib):
            crc = zlib.crc32(zero, crc)
    return payload, crc, len(header) + zeros_mib * 2 ** 20


def bomb_file(parts, name, zeros_mib, honest_crc=True, claimed=None, prefix=None) -> bytes:
    """``parts`` with member ``name`` replaced by a deflate bomb: float32 zeros (its header says so), or
    ``prefix`` then zeros; ``claimed``: the size the zip's header gives instead of the true one."""
    header = npy_claiming((zeros_mib * 2 ** 20 // 4,), b"") if prefix is None else prefix
    payload, crc, size = deflate_bomb(header, zeros_mib, honest_crc)
    raw = [(n, payload, zipfile.ZIP_DEFLATED, crc, size if claimed is None else claimed) if n == name else
           (n, d, zipfile.ZIP_STORED, zlib.crc32(d), len(d)) for n, d in parts]
    return raw_zip(raw)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def refused(path, match=None) -> str:
    with pytest.raises(rd.RecDebugError) as e:
        rd.Trace.load(path)
    assert type(e.value) is rd.RecDebugError
    message = str(e.value).splitlines()[0]
    assert message.startswith(f"{path}{INVALID}"), message
    if match is not None:
        assert match in message, message
    return message


# --- round trips ---
def assert_same_trace(a, b):
    assert list(a.entries) == list(b.entries)
    for key, e in a.entries.items():
        o = b.entries[key]
        assert (o.dims, o.kind, o.loop_axes, o.line) == (e.dims, e.kind, e.loop_axes, e.line), key
        assert o.array.dtype == e.array.dtype and o.array.flags.writeable, key
        np.testing.assert_array_equal(o.array, e.array, err_msg=key)
    assert a.dims == b.dims
    assert set(a._lens) == set(b._lens)
    for axis, (arr, dims) in a._lens.items():
        np.testing.assert_array_equal(b.lens(axis), arr)
        assert b._lens[axis][1] == dims
    assert (b.moved_out, b.in_loop, b.device, b.after_choice) == (a.moved_out, a.in_loop, a.device, a.after_choice)
    assert b.hierarchy == a.hierarchy and len(b.hierarchy) > 10
    assert b.net_text == a.net_text and '"class": "rec"' in b.net_text


@pytest.mark.parametrize("name", ["lstm", "search"])
def test_a_saved_trace_loads_back_equal(saved, name):
    tr, path, data, extra = saved[name]
    back = rd.Trace.load(path)
    assert back.emitted is None
    assert_same_trace(tr, back)
    assert not tr.diff(back)


def widget_state(d) -> dict:
    views = {k: (v.title, v.shape, v.values, v.length, v.known, v.cursor) for k, v in d.views.items()}
    picked = d.picked
    state = {"status": d.status, "t": d.t, "T": d.T, "views": views, "nodes": d.hierarchy.nodes,
             "net": d.net_text.value, "picked": (picked.title, picked.shape, picked.values, picked.cursor)}
    if d.beam_tree is not None:
        state["beams"] = (d.beam_tree.nodes, d.beam_tree.selected, d.beam_tree.path, d.hypothesis)
    return state


def test_the_debugger_on_a_loaded_trace_shows_what_it_shows_on_the_original(saved):
    tr, path, data, lstm = saved["lstm"]
    fresh, loaded = rd.debugger(tr), rd.debugger(rd.Trace.load(path))
    assert set(loaded.views) == {"loop/lstm.h", "loop/lstm.c"} and len(loaded.hierarchy.nodes) > 10
    nodes = {n["path"]: n for n in loaded.hierarchy.nodes}
    assert nodes["loop/lstm.ff_linear"]["moved_out"] and "self.rec_linear(self.h.get())" in \
        nodes["loop/lstm.rec_linear"]["line"]
    assert widget_state(loaded) == widget_state(fresh)
    for action in (lambda d: d.step(3), lambda d: d.select_sequence(1), lambda d: d.select_layer("loop/lstm.sigmoid"),
                   lambda d: d.run(), lambda d: d.step_back(2)):
        action(fresh)
        action(loaded)
        assert widget_state(loaded) == widget_state(fresh)
    h = tr.numpy(lstm.h, order=(batch, "time", "dim"))
    np.testing.assert_array_equal(loaded.views["loop/lstm.h"].readout(), h[1, 3])
    fresh.close()
    loaded.close()


def test_the_debugger_on_a_loaded_search_trace_draws_the_same_beam_tree(saved):
    tr, path, data, y = saved["search"]
    back = rd.Trace.load(path)
    fresh, loaded = rd.debugger(tr), rd.debugger(back)
    assert loaded.beam_tree is not None and len(loaded.beam_tree.nodes) == tr.beams(y).shape[0] * 3
    assert widget_state(loaded) == widget_state(fresh)
    for action in (lambda d: d.select_hypothesis(2, 1), lambda d: d.step(2), lambda d: d.select_sequence(2),
                   lambda d: d.select_layer("loop/tanh")):
        action(fresh)
        action(loaded)
        assert widget_state(loaded) == widget_state(fresh)
    a, b = tr.beams(y), back.beams("loop/choice")
    assert b.include_eos == a.include_eos
    np.testing.assert_array_equal(b.ended, a.ended)
    for s in range(3):
        assert b.hypotheses(s) == a.hypotheses(s)
    fresh.close()
    loaded.close()


def test_a_file_of_the_first_format_loads_without_a_hierarchy(saved, tmp_path):
    tr, path, data, extra = saved["lstm"]
    parts = members(data)
    meta = meta_of(parts)
    first = {k: meta[k] for k in ("entries", "lens", "dims", "moved_out", "in_loop", "device", "after_choice")}
    path = tmp_path / "first.npz"
    path.write_bytes(zipped(with_meta(parts, dict(first, format="recdebug-trace-1"))))
    back = rd.Trace.load(path)
    np.testing.assert_array_equal(back.numpy("loop/lstm.h"), tr.numpy("loop/lstm.h"))
    assert back.hierarchy == [] and back.net_text == ""
    d = rd.debugger(back)
    d.step(2)  # from t=0, where a trace's debugger opens
    assert d.hierarchy.nodes == [] and "does not keep the net dict" in d.net_text.value
    assert d.views["loop/lstm.h"].cursor == 2
    d.close()


# --- specific hostile files ---
def test_a_deflate_bomb_is_refused_before_it_inflates(saved, tmp_path):
    tr, path, data, extra = saved["lstm"]
    bomb = bomb_file(members(data), "v0.npy", 2900)  # 2.9 MB that inflate to 2.9 GiB
    assert len(bomb) < 4e6
    with zipfile.ZipFile(io.BytesIO(bomb)) as zf, zf.open("v0.npy") as f:  # a real bomb: it does inflate
        assert f.read(2 ** 23).count(0) > 2 ** 23 - 200
    path = tmp_path / "bomb.npz"
    path.write_bytes(bomb)
    rss = max_rss_mb()
    message = refused(path, match="budget")
    assert max_rss_mb() - rss < 20  # refused from the zip header: nothing was inflated
    assert "max_bytes" in message
    path.write_bytes(bomb_file(members(data), "v0.npy", 400))  # within the budget: refused by its ratio
    refused(path, match="would inflate")
    assert max_rss_mb() - rss < 20


def test_lengths_of_a_billion_are_refused(saved, tmp_path):
    tr, path, data, extra = saved["lstm"]
    parts = members(data)
    lens_member = next(m["array"] for m in meta_of(parts)["lens"] if m["axis"] == "time") + ".npy"
    path = tmp_path / "long.npz"
    path.write_bytes(zipped(with_member(parts, lens_member, npy(np.full(4, 10 ** 9, np.int64)))))
    rss = max_rss_mb()
    refused(path, match="lengths of 'time' are not within 0..6")
    path.write_bytes(zipped(with_member(parts, lens_member, npy(np.array([6, -1, 1, 5], np.int32)))))
    refused(path, match="lengths of 'time' are not within 0..6")
    assert max_rss_mb() - rss < 20


def _unpickled(marker):
    with open(marker, "w"):
        pass


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _unpickled, (self.marker,)


def test_a_pickle_member_is_refused_without_unpickling(saved, tmp_path):
    tr, path, data, extra = saved["lstm"]
    marker = tmp_path / "unpickled"
    payload = npy(np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    path = tmp_path / "pickle.npz"
    for name in ("v0.npy", "meta.npy"):
        path.write_bytes(zipped(with_member(members(data), name, payload)))
        refused(path, match=f"{name}: object arrays (pickle) are not read")
    assert not marker.exists()


def test_an_unknown_format_version_is_refused_clearly(saved, tmp_path):
    tr, path, data, extra = saved["lstm"]
    parts = members(data)
    path = tmp_path / "future.npz"
    path.write_bytes(zipped(with_meta(parts, dict(meta_of(parts), version=3, new_field=[1]))))
    message = refused(path, match="format version 3 is not supported")
    assert "reads versions 1 to 2" in message
    path.write_bytes(zipped(with_meta(parts, dict(meta_of(parts), version="2"))))
    refused(path, match="format version '2' is not a number")


def test_the_memory_budget_is_a_parameter(saved):
    tr, path, data, extra = saved["lstm"]
    with pytest.raises(rd.RecDebugError, match="more than the budget of 1000 bytes"):
        rd.Trace.load(path, max_bytes=1000)
    assert tracefile.MAX_LOAD_BYTES == 2 * 1024 ** 3
    rd.Trace.load(path, max_bytes=len(data))


# --- the fuzz test ---
POOL = [None, True, False, 0, 1, -1, 7, 10 ** 9, -10 ** 9, 2 ** 64, 1.5, "", "x", "batch", "time", "beam",
        "loop/lstm.h", "loop/choice", [], {}, ["batch"], ["batch", "batch"], ["time", "batch"], [1, 2], {"a": 1}]


def mutate_json(meta, rng):
    """One random edit somewhere in the metadata: a value replaced, a field removed or added, a list edited."""
    meta = json.loads(json.dumps(meta))
    node = meta
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        k = keys[rng.integers(len(keys))]
        child = node[k]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.75:
            node = child
            continue
        op = rng.integers(5)
        if op == 0 or not isinstance(node, (dict, list)):
            node[k] = POOL[rng.integers(len(POOL))]
        elif op == 1:
            del node[k]
        elif op == 2 and isinstance(node, dict):
            node["extra"] = POOL[rng.integers(len(POOL))]
        elif op == 3 and isinstance(node, list):
            node.insert(int(rng.integers(len(node) + 1)), node[k])
        else:
            node[k] = child[::-1] if isinstance(child, (list, str)) else POOL[rng.integers(len(POOL))]
        break
    return meta


def array_edits(parts, meta):
    """Members with other contents (the zip itself valid): lengths out of range, shapes, dtypes, headers."""
    lens_name = meta["lens"][0]["array"] + ".npy"
    lens = np.load(io.BytesIO(dict(parts)[lens_name]))
    yield lens_name, npy(np.full(lens.shape, 10 ** 9, np.int64))
    yield lens_name, npy(np.full(lens.shape, -1, np.int32))
    yield lens_name, npy(lens.astype(np.float32))
    yield lens_name, npy(np.append(lens, 1))
    yield lens_name, npy(np.full(lens.shape, 2 ** 63, np.uint64))
    yield lens_name, npy(np.zeros(lens.shape, np.int32))
    yield lens_name, npy(lens.astype(">i8"))
    for m in meta["entries"][::3]:
        name = m["array"] + ".npy"
        arr = np.load(io.BytesIO(dict(parts)[name]))
        yield name, npy(arr.T)
        yield name, npy(arr.astype(np.float64))
        yield name, npy(arr.astype(np.complex64))
        yield name, npy(np.asfortranarray(arr))
        yield name, npy(arr.astype(arr.dtype.newbyteorder(">")))
        yield name, npy(arr.reshape(-1))
        yield name, npy(arr[..., :0])
        yield name, npy(np.full_like(arr, np.nan) if arr.dtype.kind == "f" else arr + 5)
        yield name, npy_claiming((10 ** 6,) + arr.shape, arr.tobytes(), arr.dtype.str)
        yield name, npy_claiming(arr.shape, arr.tobytes()[:-4], arr.dtype.str)
        yield name, npy(np.zeros(arr.shape, [("a", "<f4")]))
        yield name, npy(np.array([_Payload("/nonexistent/unpickled")], dtype=object), allow_pickle=True)


def variants(data: bytes, rng):
    """Cheap mutations of one real trace file: (what, bytes)."""
    parts = members(data)
    meta = meta_of(parts)
    for offset in sorted(set(np.linspace(0, len(data) - 1, 50).astype(int)) | set(rng.integers(0, len(data), 20))):
        yield "truncated", data[:offset]
    for _ in range(70):
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), rng.integers(1, 5)):
            flipped[pos] ^= 1 << int(rng.integers(8))
        yield "bit flips", bytes(flipped)
    for _ in range(30):  # bit flips in the zip's central directory (at the end of the file)
        flipped = bytearray(data)
        flipped[len(data) - 1 - int(rng.integers(min(len(data), 60 * len(parts))))] ^= 1 << int(rng.integers(8))
        yield "directory bit flips", bytes(flipped)
    for _ in range(20):  # members cut short, the zip rewritten around them
        name, content = parts[rng.integers(len(parts))]
        yield "member truncated", zipped(with_member(parts, name, content[:rng.integers(len(content))]))
    for _ in range(20):  # bit flips inside members, the zip rewritten around them (valid CRCs)
        name, content = parts[rng.integers(len(parts))]
        flipped = bytearray(content)
        for pos in rng.integers(0, len(content), rng.integers(1, 4)):
            flipped[pos] ^= 1 << int(rng.integers(8))
        yield "member bit flips", zipped(with_member(parts, name, bytes(flipped)))
    names = [n for n, _ in parts]
    for _ in range(8):
        i, j = rng.choice(len(parts), 2, replace=False)
        swapped = list(parts)
        swapped[i], swapped[j] = (names[i], parts[j][1]), (names[j], parts[i][1])
        yield "swapped members", zipped(swapped)
        yield "removed member", zipped(parts[:i] + parts[i + 1:])
        yield "duplicated member", zipped(parts + [parts[i]])
        renamed = list(parts)
        renamed[i] = ("x.npy", parts[i][1])
        yield "renamed member", zipped(renamed)
    yield "extra member", zipped(parts + [("extra.npy", npy(np.zeros(3)))])
    yield "many members", raw_zip(stored(parts) + [(f"{i}", b"", zipfile.ZIP_STORED, 0, 0) for i in range(100000)])
    yield "deflated", zipped(parts, zipfile.ZIP_DEFLATED)
    yield "lzma", zipped(parts, zipfile.ZIP_LZMA)
    for _ in range(90):
        yield "metadata edit", zipped(with_meta(parts, mutate_json(meta, rng)))
    for version in (0, 1, 3, 2 ** 40, -2, 2.0, None, "2", [2]):
        yield "version", zipped(with_meta(parts, dict(meta, version=version)))
    raw = json.dumps(meta).encode()
    version = b'"version": 2'
    for bad in (raw[:-1], b"[" * 100000 + b"]" * 100000, b'{"a":' * 50000, raw.replace(version, b'"version": NaN'),
                raw.replace(version, version + b", " + version), b"\xff\xfe" + raw, b"[]", b"null", b"1" * 5000,
                raw + b" " * (tracefile.MAX_META_BYTES + 1), json.dumps([[[[[[[[meta]]]]]]]]).encode()):
        yield "raw metadata", zipped(with_meta(parts, bad))
    floats = np.frombuffer(raw[:len(raw) // 4 * 4], "<f4")
    yield "metadata as floats", zipped(with_member(parts, "meta.npy", npy(floats)))
    yield "metadata 2-d", zipped(with_member(parts, "meta.npy", npy(np.frombuffer(raw, np.uint8)[None])))
    for name, content in array_edits(parts, meta):
        yield "array edit", zipped(with_member(parts, name, content))
    target = next(n for n, _ in parts if n != "meta.npy")
    for zeros_mib, claimed in ((2900, None), (600, None), (300, None), (40, None), (40, 2 ** 20), (40, 4)):
        yield "deflate bomb", bomb_file(parts, target, zeros_mib, honest_crc=False, claimed=claimed)
    yield "meta bomb", bomb_file(parts, "meta.npy", 40, honest_crc=False)
    for name, content in parts[::4]:  # the member as it was, then zeros the header does not count: never read
        yield "lying bomb", bomb_file(parts, name, 40, honest_crc=False, claimed=len(content), prefix=content)
    yield "lying sizes", raw_zip([(n, d, m, c, s * 1000 + 1) for n, d, m, c, s in stored(parts)])
    yield "encrypted flag", raw_zip(stored(parts)).replace(b"PK\x01\x02\x14\x00\x14\x00\x00\x00",
                                                          b"PK\x01\x02\x14\x00\x14\x00\x01\x00")


def use(tr, plotted: set):
    """Everything a loaded trace offers, read once: it must not fail."""
    for key, e in tr.entries.items():
        tr.numpy(key)
        if e.loop_axes:
            tr.mask(key)
            for axis in e.loop_axes:
                tr.lens(axis)
    tr.at(0)
    for key in tr.entries:
        if key.endswith(".backpointers"):
            beams = tr.beams(key[:-len(".backpointers")])
            for b in range(beams.shape[1]):
                beams.hypotheses(b)
    layout = repr(([(e.key, e.dims, e.kind, e.loop_axes, np.isfinite(e.array).all()) for e in tr.entries.values()],
                   [(k, a.tolist(), d) for k, (a, d) in tr._lens.items()], tr.dims))
    if layout not in plotted:  # a plot and a debugger per distinct layout (plotting takes a quarter second)
        plotted.add(layout)
        plt.close(tr.plot())
        d = rd.debugger(tr)
        d.step()
        d.run()
        d.select_sequence(d.batch - 1)
        d.close()


def test_fuzzed_trace_files_load_correctly_or_raise_one_rec_debug_error(saved, tmp_path):
    rng = np.random.default_rng(2024)
    path = tmp_path / "variant.npz"
    counts, plotted, loaded_kinds, load_growth = {}, set(), set(), 0.0
    use(rd.Trace.load(saved["search"][1]), set())  # imports and first figure before measuring
    rss, start = max_rss_mb(), time.perf_counter()
    for name in ("lstm", "search"):
        for what, data in variants(saved[name][2], rng):
            path.write_bytes(data)
            before = max_rss_mb()
            try:
                tr = rd.Trace.load(path)
            except rd.RecDebugError as e:
                assert type(e) is rd.RecDebugError and str(e).startswith(f"{path}{INVALID}"), (what, str(e))
                counts["refused"] = counts.get("refused", 0) + 1
                continue
            finally:
                load_growth = max(load_growth, max_rss_mb() - before)
            counts["loaded"] = counts.get("loaded", 0) + 1
            loaded_kinds.add(what)
            use(tr, plotted)
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    growth = max_rss_mb() - rss  # making the variants included (a 16 MiB metadata, bombs)
    print(f"{total} variants in {elapsed:.1f} s: {counts}, {len(plotted)} plotted; peak RSS +{growth:.0f} MB, "
          f"+{load_growth:.0f} MB at most in one load")
    assert total >= 500 and counts["loaded"] >= 20 and counts["refused"] >= 400
    assert {"metadata edit", "array edit", "deflated", "lying bomb"} <= loaded_kinds
    assert load_growth < 50 and growth < 300

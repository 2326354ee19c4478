"""Trace files: an .npz (a zip of .npy arrays) with JSON metadata, written without pickle and checked on load.

``meta.npy`` holds the metadata (JSON as uint8 bytes); every recorded value and every loop's lengths is one
``.npy`` member that the metadata names. Version 2 also keeps what the debugger shows besides the values: the
RecLayer hierarchy, the net dict as text and how each beam search ends. Version 1 files (the first format,
without those) are read as well; their debugger has no hierarchy.

Loading trusts nothing in the file: the zip's header gives every member's size before anything is inflated
(the total must fit ``max_bytes``; a compressed member may inflate ``MAX_COMPRESSION_RATIO`` times at most),
object arrays (pickle) are refused, and every shape, dim and length is checked against the metadata, so that
the trace's readers (values, masks, beams, plot, debugger) can rely on it.
"""
from __future__ import annotations

import json
import os
import re
import struct
import tokenize
import zipfile
import zlib

import numpy as np

from ..language.errors import RecDebugError
from .hierarchy import NODE_FIELDS, OPTIONAL_NODE_FIELDS

FORMAT, VERSION = "recdebug-trace", 2
FORMAT_V1 = "recdebug-trace-1"  # the first format: no version field
MAX_LOAD_BYTES = 2 * 1024 ** 3  # default memory budget of Trace.load: the members' inflated bytes together
MAX_META_BYTES = 16 * 1024 ** 2
MAX_DIRECTORY_BYTES = 4 * 1024 ** 2  # the zip's list of members: some 50000 of them
MAX_COMPRESSION_RATIO = 200  # numpy writes members stored; real float data deflates far less than this
MAX_META_DEPTH = 6  # the deepest valid metadata: top level, list, object, list of labels
MAX_NDIM = 32
_CHUNK = 16 * 1024 ** 2
_KINDS = ("layer", "state", "value", "search", "grad")
_BATCH, _BEAM = "batch", "beam"


class _Invalid(Exception):
    """Why a file is not a valid trace (becomes the RecDebugError's reason)."""


def _need(cond, reason: str):
    if not cond:
        raise _Invalid(reason)


# --- writing ---
def save(trace, path) -> None:
    """Write ``trace`` as a version 2 file."""
    arrays, meta_entries = {}, []
    for i, e in enumerate(trace.entries.values()):
        arrays[f"v{i}"] = np.ascontiguousarray(e.array)
        meta_entries.append({"key": e.key, "array": f"v{i}", "dims": list(e.dims), "kind": e.kind,
                             "loop_axes": list(e.loop_axes), "line": e.line})
    meta_lens = []
    for i, (label, (arr, lens_dims)) in enumerate(trace._lens.items()):
        arrays[f"len{i}"] = np.ascontiguousarray(arr)
        meta_lens.append({"axis": label, "array": f"len{i}", "dims": list(lens_dims)})
    beams = []
    for key in trace.entries:
        if key.endswith(".backpointers"):
            choice = key[:-len(".backpointers")]
            end, include_eos, lens_axis, normalized = trace._beam_setup(choice)
            beams.append({"choice": choice, "end": end, "include_eos": include_eos, "lens_axis": lens_axis,
                          "length_normalization": normalized})
    meta = {"format": FORMAT, "version": VERSION, "entries": meta_entries, "lens": meta_lens,
            "dims": [vars(d) for d in trace.dims.values()], "moved_out": list(trace.moved_out),
            "in_loop": list(trace.in_loop), "device": trace.device, "after_choice": sorted(trace.after_choice),
            "beams": beams, "hierarchy": trace.hierarchy, "net_text": trace.net_text}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# --- reading ---
def load(path, max_bytes: int = MAX_LOAD_BYTES) -> tuple:
    """The checked contents of a trace file: (metadata, arrays by member name). Any problem with the file
    raises one RecDebugError naming it; a path that cannot be opened raises the OSError of ``open``."""
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", repr(path))
    f = open(path, "rb") if isinstance(path, (str, os.PathLike)) else path
    try:
        return _read(f, max_bytes)
    except _Invalid as e:
        reason = str(e)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, OSError, ValueError,
            TypeError, KeyError, IndexError, OverflowError, NotImplementedError, SyntaxError, RecursionError) as e:
        reason = f"{type(e).__name__}: {e}"  # the zip or .npy structure itself is broken
    finally:
        if f is not path:
            f.close()
    raise RecDebugError(f"{name}: not a valid recdebug trace: {reason}")


def _read(f, max_bytes: int) -> tuple:
    # Opening a zip makes one ZipInfo per entry of its central directory (about ten times the entry's bytes):
    # its size, from the end record as zipfile reads it, is checked first.
    end = zipfile._EndRecData(f)
    _need(end is not None, "not a zip file")
    _need(end[zipfile._ECD_SIZE] <= MAX_DIRECTORY_BYTES,
          f"its zip directory has {end[zipfile._ECD_SIZE]} bytes (at most {MAX_DIRECTORY_BYTES})")
    with zipfile.ZipFile(f) as zf:
        infos = _check_members(zf, max_bytes)
        _need("meta.npy" in infos, "no metadata member (meta.npy)")
        _need(infos["meta.npy"].file_size <= MAX_META_BYTES,
              f"the metadata has {infos['meta.npy'].file_size} bytes (at most {MAX_META_BYTES})")
        meta_header = _npy_header(zf, infos["meta.npy"])
        _need(meta_header[2] == np.dtype(np.uint8) and len(meta_header[0]) == 1, "the metadata is not bytes")
        meta = _parse_meta(_npy_data(zf, infos["meta.npy"], meta_header).tobytes())
        refs = [m["array"] for m in meta["entries"]] + [m["array"] for m in meta["lens"]]
        _need(len(set(refs)) == len(refs), "a member is named by two values")
        members = {r + ".npy" for r in refs} | {"meta.npy"}
        _need(set(infos) == members, f"members {sorted(set(infos) ^ members)[:5]} are missing or unexpected")
        headers = {r: _npy_header(zf, infos[r + ".npy"]) for r in refs}
        _check_shapes(meta, {r: (shape, dtype) for r, (shape, _, dtype, _) in headers.items()})
        arrays = {r: _npy_data(zf, infos[r + ".npy"], headers[r]) for r in refs}
    _check_values(meta, arrays)
    return meta, arrays


def _check_members(zf: zipfile.ZipFile, max_bytes: int) -> dict:
    """Name -> ZipInfo, from the zip's header only: nothing is inflated before the sizes are known to fit."""
    total = sum(info.file_size for info in zf.infolist())
    _need(total <= max_bytes, f"its arrays need {_size(total)}, more than the budget of {_size(max_bytes)} "
                              f"(Trace.load(path, max_bytes=...) allows more)")
    infos = {}
    for info in zf.infolist():
        _need(info.filename not in infos, f"member {info.filename!r} is there twice")
        _need(not info.flag_bits & 0x1, f"member {info.filename!r} is encrypted")
        _need(info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED),
              f"member {info.filename!r} uses compression method {info.compress_type}")
        if info.compress_type == zipfile.ZIP_DEFLATED:
            _need(info.file_size <= MAX_COMPRESSION_RATIO * max(info.compress_size, 1),
                  f"member {info.filename!r} would inflate {info.compress_size} bytes to {info.file_size} (more "
                  f"than {MAX_COMPRESSION_RATIO} times)")
        else:
            _need(info.file_size == info.compress_size, f"member {info.filename!r} has two sizes")
        infos[info.filename] = info
    return infos


def _size(n: int) -> str:
    return f"{n} bytes" if n < 2 ** 20 else f"{n / 2 ** 20:.1f} MiB"


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    """(shape, fortran order, dtype, header bytes) of an .npy member, checked against the member's size."""
    where = info.filename
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        _need(version in ((1, 0), (2, 0)), f"{where}: .npy version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:  # numpy parses the header's Python literal (tokenize, then ast.literal_eval)
            shape, fortran, dtype = read(f)
        except (ValueError, SyntaxError, TypeError, tokenize.TokenError) as e:
            raise _Invalid(f"{where}: bad .npy header ({type(e).__name__}: {e})") from None
        offset = f.tell()
    _need(not dtype.hasobject, f"{where}: object arrays (pickle) are not read")
    _need(dtype.fields is None and dtype.subdtype is None and dtype.kind in "biuf" and dtype.itemsize > 0,
          f"{where}: dtype {dtype} is not a number type")
    _need(isinstance(shape, tuple) and len(shape) <= MAX_NDIM and all(type(n) is int and n >= 0 for n in shape),
          f"{where}: bad shape {shape!r}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    _need(nbytes == info.file_size - offset,
          f"{where}: shape {shape} needs {nbytes} bytes, the member holds {info.file_size - offset}")
    return shape, bool(fortran), dtype, offset


def _npy_data(zf: zipfile.ZipFile, info: zipfile.ZipInfo, header) -> np.ndarray:
    """The array of an .npy member (its header checked): read into one writable buffer, CRC checked."""
    shape, fortran, dtype, offset = header
    nbytes = info.file_size - offset
    buf = bytearray(nbytes)
    view = memoryview(buf)
    with zf.open(info) as f:
        f.read(offset)
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:got + _CHUNK])
            _need(n, f"{info.filename}: ends after {got} of {nbytes} bytes")
            got += n
        _need(f.read(1) == b"", f"{info.filename}: longer than its header says")  # reaching the end checks the CRC
    arr = np.frombuffer(buf, dtype=dtype)
    if not dtype.isnative:
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))
    if dtype.kind == "b":  # only 0 and 1 are booleans
        np.minimum(arr.view(np.uint8), 1, out=arr.view(np.uint8))
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


# --- metadata ---
def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    _need(len(set(keys)) == len(keys), "a metadata object has a field twice")
    return dict(pairs)


def _no_constant(name):
    raise _Invalid(f"the metadata has {name}")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _text_depth(raw: bytes) -> int:
    """How deep the brackets of JSON text nest, strings left out; counted without recursion."""
    b = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    steps = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _depth(obj) -> int:
    deepest, todo = 0, [(obj, 1)]
    while todo:
        x, d = todo.pop()
        deepest = max(deepest, d)
        if d > MAX_META_DEPTH:
            break
        if isinstance(x, dict):
            todo.extend((v, d + 1) for v in x.values())
        elif isinstance(x, list):
            todo.extend((v, d + 1) for v in x)
    return deepest


_LABELS = "labels"  # a list of distinct strings
_OPT_STR, _OPT_INT = "str or null", "int or null"
_SPEC = {
    "top1": {"format": str, "entries": list, "lens": list, "dims": list, "moved_out": _LABELS, "in_loop": _LABELS,
             "device": str, "after_choice": _LABELS},
    "entry": {"key": str, "array": str, "dims": _LABELS, "kind": str, "loop_axes": _LABELS, "line": _OPT_STR},
    "lens": {"axis": str, "array": str, "dims": _LABELS},
    "dim": {"label": str, "name": str, "size": _OPT_INT, "is_batch": bool, "order": int},
    "beam": {"choice": str, "end": _OPT_STR, "include_eos": bool, "lens_axis": _OPT_STR, "length_normalization": bool},
    "node": NODE_FIELDS,
}
_SPEC["top2"] = dict(_SPEC["top1"], version=int, beams=list, hierarchy=list, net_text=str)


def _is(x, typ) -> bool:
    if typ is _LABELS:
        return isinstance(x, list) and all(isinstance(s, str) for s in x) and len(set(x)) == len(x)
    if typ == _OPT_STR:
        return x is None or isinstance(x, str)
    if typ == _OPT_INT:
        return x is None or type(x) is int
    return type(x) is typ  # bool is not an int here, nor an int a bool


def _fields(obj, where: str, spec: str, optional=()):
    _need(isinstance(obj, dict), f"{where} is not an object")
    fields = _SPEC[spec]
    unknown = sorted(set(obj) - set(fields))
    _need(not unknown, f"{where} has unknown fields {unknown[:5]}")
    for field, typ in fields.items():
        if field not in obj and field in optional:
            continue
        _need(field in obj, f"{where} has no field {field!r}")
        kind = typ.__name__ if isinstance(typ, type) else typ
        _need(_is(obj[field], typ), f"{where}: {field!r} is not {kind}")


def _parse_meta(raw: bytes) -> dict:
    """The metadata, its fields and types checked (not yet against the arrays)."""
    # json's parser recurses per level: a deep file would run it into the interpreter's recursion limit
    _need(_text_depth(raw) <= MAX_META_DEPTH, f"the metadata is nested deeper than {MAX_META_DEPTH} levels")
    try:
        meta = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ValueError as e:
        raise _Invalid(f"the metadata is not JSON ({e})") from None
    _need(_depth(meta) <= MAX_META_DEPTH, f"the metadata is nested deeper than {MAX_META_DEPTH} levels")
    _need(isinstance(meta, dict), "the metadata is not an object")
    fmt, version = meta.get("format"), meta.get("version")
    if fmt == FORMAT_V1 and "version" not in meta:
        _fields(meta, "the metadata", "top1", optional=("after_choice",))
        meta.setdefault("after_choice", [])
    else:
        _need(fmt == FORMAT, f"format {fmt!r} is not {FORMAT!r}")
        _need(type(version) is int, f"format version {version!r} is not a number")
        _need(version == VERSION, f"format version {version} is not supported (this recdebug reads versions 1 "
                                  f"to {VERSION}; a newer recdebug may read it)")
        _fields(meta, "the metadata", "top2")
    for i, m in enumerate(meta["entries"]):
        _fields(m, f"entry {i}", "entry")
    for i, m in enumerate(meta["lens"]):
        _fields(m, f"lengths {i}", "lens")
    for i, m in enumerate(meta["dims"]):
        _fields(m, f"dim {i}", "dim")
    for i, m in enumerate(meta.get("beams", [])):
        _fields(m, f"beam search {i}", "beam", optional=("length_normalization",))  # (older files: none)
    for i, m in enumerate(meta.get("hierarchy", [])):
        _fields(m, f"hierarchy node {i}", "node", optional=OPTIONAL_NODE_FIELDS)
    return meta


def _check_shapes(meta: dict, headers: dict):
    """Dims, shapes, kinds and references of the metadata against the arrays' headers (before their data)."""
    dims = {}
    for d in meta["dims"]:
        _need(d["label"] not in dims, f"dim {d['label']!r} is there twice")
        _need(d["size"] is None or d["size"] >= 1, f"dim {d['label']!r} has size {d['size']}")
        dims[d["label"]] = d
    batch = [lab for lab, d in dims.items() if d["is_batch"]]
    _need(batch == [_BATCH] and dims[_BATCH]["size"] is None, "the batch dim is missing or not named 'batch'")
    entries, extent = {}, {}
    for m in meta["entries"]:
        key = m["key"]
        _need(key not in entries, f"value {key!r} is there twice")
        entries[key] = m
        shape, dtype = headers[m["array"]]
        _need(all(lab in dims for lab in m["dims"]), f"{key!r} has dims {m['dims']} not all in the dim table")
        _need(len(shape) == len(m["dims"]), f"{key!r} has {len(m['dims'])} dims and an array of shape {shape}")
        for lab, n in zip(m["dims"], shape):
            size = dims[lab]["size"]
            _need(n >= 1, f"{key!r} has no entries along {lab!r}")
            _need(size is None or n == size, f"{key!r} has {n} entries along {lab!r} of size {size}")
            extent[lab] = max(extent.get(lab, 0), n)
        _need(m["kind"] in _KINDS, f"{key!r} has kind {m['kind']!r}")
        _need(set(m["loop_axes"]) <= set(m["dims"]), f"{key!r}: loop axes {m['loop_axes']} not among its dims")
        _need(bool(m["loop_axes"]) == (m["kind"] != "value"), f"{key!r} of kind {m['kind']!r} has loop axes "
                                                               f"{m['loop_axes']}")
    _need(_BATCH in extent, "no value has the batch dim")
    for m in meta["entries"]:
        if m["kind"] == "state":  # the debugger's and the plot's views: every sequence and step of it
            shape = headers[m["array"]][0]
            _need(_BATCH in m["dims"], f"State {m['key']!r} has no batch dim")
            _need(all(n == extent[lab] for lab, n in zip(m["dims"], shape)),
                  f"State {m['key']!r} has shape {shape}, not its dims' {[extent[lab] for lab in m['dims']]}")
    lens = {}
    for m in meta["lens"]:
        axis = m["axis"]
        _need(axis not in lens, f"the lengths of {axis!r} are there twice")
        _need(axis in extent, f"lengths of {axis!r}, which no value has")
        shape, dtype = headers[m["array"]]
        _need(dtype.kind in "iu", f"the lengths of {axis!r} are {dtype}, not integers")
        _need(all(lab in extent for lab in m["dims"]), f"the lengths of {axis!r} have unknown dims {m['dims']}")
        expected = tuple(extent[lab] for lab in m["dims"])
        _need(shape == expected, f"the lengths of {axis!r} have shape {shape}, not {expected} ({m['dims']})")
        lens[axis] = m
    for m in meta["entries"]:
        for axis in m["loop_axes"]:
            _need(axis in lens, f"{m['key']!r} has loop axis {axis!r} without lengths")
        if m["loop_axes"]:
            _need(lens[m["loop_axes"][0]]["dims"] == [_BATCH],
                  f"the lengths of the top-level loop axis {m['loop_axes'][0]!r} are not one per sequence")
    _need(set(meta["after_choice"]) <= set(entries), "after_choice names values the trace does not have")
    _need(len(meta["device"]) <= 200, "the device name is too long")
    _check_beam_shapes(meta, entries, headers, dims, lens, extent)
    paths = {""}
    for node in meta.get("hierarchy", []):
        _need(node["path"] not in paths, f"hierarchy node {node['path']!r} is there twice")
        _need(node["parent"] in paths, f"hierarchy node {node['path']!r} comes before its parent")
        paths.add(node["path"])


def _check_beam_shapes(meta, entries, headers, dims, lens, extent):
    """Each beam search: labels, scores and backpointers [steps, batch, beam], every step of every sequence."""
    choices = [k[:-len(".backpointers")] for k in entries if k.endswith(".backpointers")]
    setups = {m["choice"]: m for m in meta.get("beams", [])}
    _need(set(setups) <= set(choices), "a beam search is described for a value without backpointers")
    for choice in choices:
        parts = [choice, choice + ".scores", choice + ".backpointers"]
        _need(all(p in entries for p in parts), f"the beams of {choice!r} lack labels or scores")
        axis = entries[choice]["loop_axes"][:1]
        want = set(axis) | {_BATCH, _BEAM}
        _need(_BEAM in dims and dims[_BEAM]["size"] is not None, f"the beams of {choice!r} have no beam dim")
        end = setups.get(choice, {}).get("end")
        for p in parts + ([end] if end is not None else []):
            _need(p in entries, f"the beams of {choice!r} name a value {p!r} the trace does not have")
            m = entries[p]
            shape = headers[m["array"]][0]
            _need(len(axis) == 1 and set(m["dims"]) == want and len(m["dims"]) == 3 and m["loop_axes"][:1] == axis,
                  f"{p!r} has dims {m['dims']}, not {sorted(want)}")
            _need(all(n == extent[lab] for lab, n in zip(m["dims"], shape)), f"{p!r} does not have every step")
        _need(headers[entries[choice + ".backpointers"]["array"]][1].kind in "iu", "backpointers are not integers")
        _need(headers[entries[choice]["array"]][1].kind in "iu", f"the labels of {choice!r} are not integers")
        _need(headers[entries[choice + ".scores"]["array"]][1].kind == "f", f"the scores of {choice!r} are not floats")
        lens_axis = setups.get(choice, {}).get("lens_axis")
        _need(lens_axis is None or (lens_axis in lens and lens[lens_axis]["dims"] == [_BATCH]),
              f"the beams of {choice!r} end with the lengths of {lens_axis!r}, which are not one per sequence")


def _check_values(meta: dict, arrays: dict):
    """Lengths within their axis, backpointers within the beam."""
    extent = {}
    for m in meta["entries"]:
        for lab, n in zip(m["dims"], arrays[m["array"]].shape):
            extent[lab] = max(extent.get(lab, 0), n)
    for m in meta["lens"]:
        arr = arrays[m["array"]]
        steps = extent[m["axis"]]
        _need(arr.size == 0 or (int(arr.min()) >= 0 and int(arr.max()) <= steps),
              f"the lengths of {m['axis']!r} are not within 0..{steps}")
    entries = {m["key"]: m for m in meta["entries"]}
    for key, m in entries.items():
        if key.endswith(".backpointers"):
            arr, beam = arrays[m["array"]], extent[_BEAM]
            _need(int(arr.min()) >= 0 and int(arr.max()) < beam, f"{key!r} points outside the beam of {beam}")

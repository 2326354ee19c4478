"""The emitted RecLayer hierarchy as plain data: what the debugger's tree and its raw net dict view show.

Plain data (strings and flags), so that a saved trace keeps it and a debugger on a loaded trace shows it.
"""
from __future__ import annotations

import json

# Each node of the hierarchy has exactly these fields (a trace file's nodes are checked against them).
NODE_FIELDS = {"path": str, "name": str, "cls": str, "parent": str, "from": str, "dims": str, "params": str,
               "moved_out": bool, "in_loop": bool, "line": str, "children": bool, "helper": bool}
# "helper": a layer recdebug adds to make RETURNN compute the user's loop (zeros that give a State its dims, a
# loop's lengths, the gather of a last value...), not one of the user's values: the tree hides them by default.
# Trace files written before the field existed have no "helper" (read as False).
OPTIONAL_NODE_FIELDS = ("helper",)


def net_nodes(net: dict, moved_out=(), in_loop=(), skip=None, default_from: bool = False, more=None) -> list:
    """Tree nodes for a net dict of either front end, a rec layer's unit below it: each layer's path, class and
    sources, whether RETURNN moved it out of its loop or kept it inside (paths in ``moved_out``, ``in_loop``).
    ``skip(name)``: layers left out; ``default_from``: a layer without "from" reads RETURNN's default (``data``, in a
    unit ``data:source``); ``more(path, layer, sources)``: the node's other fields (dims, params, line, helper)."""
    nodes = []

    def visit(layers: dict, prefix: str, parent: str):
        for name, layer in layers.items():
            if not isinstance(layer, dict) or (skip is not None and skip(name)):
                continue
            path = prefix + name
            src = layer.get("from", ("data:source" if prefix else "data") if default_from else [])
            src = [src] if isinstance(src, str) else [s[0] if isinstance(s, tuple) else s for s in src]
            src = [s for s in src if isinstance(s, str)]
            node = {"path": path, "name": name, "cls": str(layer.get("class", "")), "parent": parent,
                    "from": ", ".join(src), "dims": "", "params": "", "moved_out": path in moved_out,
                    "in_loop": path in in_loop, "line": "", "children": isinstance(layer.get("unit"), dict),
                    "helper": False}
            if more is not None:
                node.update(more(path, layer, src))
            nodes.append(node)
            if node["children"]:
                visit(layer["unit"], path + "/", path)

    visit(net, "", "")
    return nodes


def hierarchy_nodes(em, moved_out=(), in_loop=()) -> list:
    """The language's emitted net as tree nodes (``net_nodes``): each layer's dims in the user's terms, the
    parameters it reads, the user's line; the layers recdebug adds to the user's are marked helpers."""
    from ..language.dims import dims_str

    dims_of = {path: t.dims for t, path in em.layer_of.items()}
    for state, paths in em.state_layers.items():
        for p in paths:
            dims_of[p] = state.dims
    users = set(dims_of) | set(em.lines)  # the layers of the user's ops and States, and those with a source line
    params = {}
    for name, layer in em.net.items():
        if layer.get("class") == "variable":
            params[name] = "(" + ", ".join(f"{d.dimension}" for d in layer["shape"]) + ")"

    def more(path: str, layer: dict, src: list) -> dict:
        used = [r.split(":")[-1] for r in src if r.split(":")[-1] in params]
        return {"dims": dims_str(dims_of[path]) if path in dims_of else "",
                "params": ", ".join(f"{p} {params[p]}" for p in used) or params.get(path.rsplit("/", 1)[-1], ""),
                "line": str(em.lines[path]) if path in em.lines else "",
                "helper": path not in users and layer.get("class") not in ("rec", "variable")}

    return net_nodes(em.net, moved_out, in_loop, skip=lambda name: name.startswith("trace.") or name == "output",
                     more=more)


def net_text(em) -> str:
    """The emitted net dict as the debugger's raw view shows it: indented like JSON, one key per line (dims and
    other objects by their repr)."""
    return json.dumps(em.net, indent=2, default=repr)

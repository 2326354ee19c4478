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


def hierarchy_nodes(em, moved_out=(), in_loop=()) -> list:
    """Tree nodes for the net dict: rec layers with their units, each layer's class, from, dims, params, line."""
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
    nodes = []

    def refs(layer):
        src = layer.get("from", [])
        src = [src] if isinstance(src, str) else [s[0] if isinstance(s, tuple) else s for s in src]
        return [s for s in src if isinstance(s, str)]

    def visit(layers: dict, prefix: str, parent: str):
        for name, layer in layers.items():
            if name.startswith("trace.") or name in ("output",):
                continue
            path = prefix + name
            used = [r.split(":")[-1] for r in refs(layer) if r.split(":")[-1] in params]
            node = {"path": path, "name": name, "cls": layer.get("class", ""), "parent": parent,
                    "from": ", ".join(refs(layer)), "dims": dims_str(dims_of[path]) if path in dims_of else "",
                    "params": ", ".join(f"{p} {params[p]}" for p in used) or (params.get(name, "")),
                    "moved_out": path in moved_out, "in_loop": path in in_loop,
                    "line": str(em.lines[path]) if path in em.lines else "", "children": "unit" in layer,
                    "helper": path not in users and layer.get("class") not in ("rec", "variable")}
            nodes.append(node)
            if "unit" in layer:
                visit(layer["unit"], path + "/", path)

    visit(em.net, "", "")
    return nodes


def net_text(em) -> str:
    """The emitted net dict as the debugger's raw view shows it: indented like JSON, one key per line (dims and
    other objects by their repr)."""
    return json.dumps(em.net, indent=2, default=repr)

// recdebug hierarchy view: the emitted RETURNN net dict as a tree (rec layers, their unit subnetworks,
// nested rec layers), with class, from, dims, parameters, moved-out flag and the user's source line per
// layer. Clicking a layer selects it (synced to Python, which shows its values).

function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function render({ model, el: root }) {
  root.classList.add("rd-tree");
  root.style.fontFamily = "monospace";
  root.style.fontSize = "12px";
  root.style.maxHeight = "520px";
  root.style.overflow = "auto";

  function draw() {
    root.textContent = "";
    const nodes = model.get("nodes");
    const selected = model.get("selected");
    const list = el("ul", "rd-tree-root", root);
    list.style.listStyle = "none";
    list.style.paddingLeft = "0";
    const parents = { "": list };
    for (const n of nodes) {
      const parent = parents[n.parent] || list;
      const li = el("li", "rd-node", parent);
      li.dataset.path = n.path;
      li.style.margin = "1px 0";
      const head = el("span", "rd-node-name", li, (n.children ? "▾ " : "  ") + n.name);
      head.style.cursor = "pointer";
      head.style.fontWeight = n.cls === "rec" ? "bold" : "normal";
      if (n.path === selected) { head.style.background = "#ffe08a"; li.classList.add("rd-selected"); }
      el("span", "rd-node-class", li, " " + n.cls).style.color = "#6040a0";
      if (n.moved_out) {
        const b = el("span", "rd-moved", li, " moved out");
        b.style.color = "#b06000";
      } else if (n.in_loop) {
        el("span", "rd-in-loop", li, " in loop").style.color = "#2a7a2a";
      }
      const info = [];
      if (n.dims) info.push(n.dims);
      if (n.from) info.push("from " + n.from);
      if (n.params) info.push("params " + n.params);
      if (n.line) info.push(n.line.replace(/^.*, (line \d+: )/, "$1"));
      li.title = [n.path, n.cls].concat(info).concat(n.line ? [n.line] : []).join("\n");
      if (n.dims) el("span", "rd-node-dims", li, " " + n.dims).style.color = "#666";
      if (info.length && n.path === selected) {
        const box = el("div", "rd-node-info", li, info.join(" · "));
        box.style.color = "#444";
        box.style.background = "#fff8dc";
        box.style.whiteSpace = "pre-wrap";
      }
      head.addEventListener("click", () => {
        model.set("selected", n.path);
        model.save_changes();
      });
      if (n.children) {
        const ul = el("ul", "rd-children", li);
        ul.style.listStyle = "none";
        ul.style.paddingLeft = "16px";
        parents[n.path] = ul;
      }
    }
  }

  model.on("change:nodes", draw);
  model.on("change:selected", draw);
  draw();
}

export default { render };

// recdebug hierarchy view: the emitted RETURNN net dict as a tree (rec layers, their unit subnetworks,
// nested rec layers), with class, from, dims, parameters, moved-out flag and the user's source line per
// layer. Clicking a layer selects it (synced to Python, which shows its values). Helper layers (that recdebug adds
// for RETURNN: zeros, lengths, gathers of last values) are hidden unless asked for. Colours read on light and
// dark themes.

function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function render({ model, el: root }) {
  root.classList.add("rd-tree");
  root.style.fontFamily = "var(--jp-code-font-family, monospace)";
  root.style.fontSize = "12px";
  root.style.maxHeight = "520px";
  root.style.overflowY = "auto";
  root.style.overflowX = "hidden";
  root.style.width = "100%";
  root.style.boxSizing = "border-box";
  root.style.color = "var(--jp-ui-font-color1, #222)";
  let showHelpers = false;

  function draw() {
    root.textContent = "";
    const all = model.get("nodes");
    const selected = model.get("selected");
    const helpers = all.filter((n) => n.helper && n.path !== selected).length;
    const nodes = showHelpers ? all : all.filter((n) => !n.helper || n.path === selected);
    const list = el("ul", "rd-tree-root", root);
    list.style.listStyle = "none";
    list.style.paddingLeft = "0";
    const parents = { "": list };
    for (const n of nodes) {
      const parent = parents[n.parent] || list;
      const li = el("li", "rd-node", parent);
      li.dataset.path = n.path;
      li.style.margin = "1px 0";
      // one line per layer, never wider than the view: a long row ends in "…" (the whole row is in its tooltip,
      // and in the info box once the layer is picked)
      li.style.whiteSpace = "nowrap";
      li.style.overflow = "hidden";
      li.style.textOverflow = "ellipsis";
      if (n.helper) { li.classList.add("rd-helper"); li.style.opacity = "0.6"; }
      const head = el("span", "rd-node-name", li, (n.children ? "▾ " : "  ") + n.name);
      head.style.cursor = "pointer";
      head.style.fontWeight = n.cls === "rec" ? "bold" : "normal";
      if (n.path === selected) { head.style.background = "rgba(255, 196, 0, 0.45)"; li.classList.add("rd-selected"); }
      el("span", "rd-node-class", li, " " + n.cls).style.color = "#8c6bd6";
      if (n.moved_out) {
        const b = el("span", "rd-moved", li, " moved out");
        b.style.color = "#d98a1c";
      } else if (n.in_loop) {
        el("span", "rd-in-loop", li, " in loop").style.color = "#3fa34d";
      }
      const info = [];
      if (n.dims) info.push(n.dims);
      if (n.from) info.push("from " + n.from);
      if (n.params) info.push("params " + n.params);
      if (n.line) info.push(n.line.replace(/^.*, (line \d+: )/, "$1"));
      li.title = [n.path, n.cls].concat(info).concat(n.line ? [n.line] : []).join("\n");
      if (n.dims) el("span", "rd-node-dims", li, " " + n.dims).style.opacity = "0.7";
      if (info.length && n.path === selected) {
        const box = el("div", "rd-node-info", li, info.join(" · "));
        box.style.background = "rgba(255, 196, 0, 0.15)";
        box.style.whiteSpace = "pre-wrap";
        box.style.maxWidth = "min(60ch, 100%)";
        box.style.overflowWrap = "anywhere";
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
    if (helpers || showHelpers) {
      const toggle = el("a", "rd-helpers-toggle", root,
        showHelpers ? "hide the helper layers" : `show ${helpers} helper layers (zeros, lengths, gathers)`);
      toggle.style.cursor = "pointer";
      toggle.style.textDecoration = "underline";
      toggle.style.opacity = "0.8";
      toggle.addEventListener("click", () => { showHelpers = !showHelpers; draw(); });
    }
  }

  model.on("change:nodes", draw);
  model.on("change:selected", draw);
  draw();
}

export default { render };

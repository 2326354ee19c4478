// recdebug beam tree: the hypotheses of a beam search over time (one column per step, one row per beam slot),
// edges to the hypothesis each one extends, the label in the node, the score on hover. Clicking a node selects
// that hypothesis (synced to Python, which shows its States along its path).

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function render({ model, el }) {
  el.classList.add("rd-beamtree");
  el.style.fontFamily = "monospace";
  el.style.fontSize = "11px";
  el.style.overflowX = "auto";
  const info = document.createElement("div");
  info.className = "rd-beam-info";
  info.textContent = "hover a hypothesis for its score; click it to show its states";

  function draw() {
    el.textContent = "";
    const nodes = model.get("nodes");
    const [sel_t, sel_k] = model.get("selected");
    const path = new Set(model.get("path").map(([t, k]) => `${t},${k}`));
    const steps = 1 + Math.max(-1, ...nodes.map((n) => n.t));
    const beams = 1 + Math.max(-1, ...nodes.map((n) => n.k));
    const dx = 46, dy = 30, r = 11;
    const root = svg("svg", { width: 30 + steps * dx, height: 16 + beams * dy }, el);
    const pos = (t, k) => [24 + t * dx, 14 + k * dy];
    for (const n of nodes) {
      if (n.t === 0) continue;
      const [x0, y0] = pos(n.t - 1, n.src), [x1, y1] = pos(n.t, n.k);
      const on = path.has(`${n.t},${n.k}`) && path.has(`${n.t - 1},${n.src}`);
      svg("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: on ? "#d04000" : "#999", "stroke-width": on ? 2.5 : 1 },
        root);
    }
    for (const n of nodes) {
      const [x, y] = pos(n.t, n.k);
      const g = svg("g", { class: "rd-beam-node", "data-t": n.t, "data-k": n.k }, root);
      const fill = n.t === sel_t && n.k === sel_k ? "#ffe08a" : n.ended ? "#e8e8e8" : "#dbe8ff";
      svg("circle", { cx: x, cy: y, r, fill, stroke: path.has(`${n.t},${n.k}`) ? "#d04000" : "#557" }, g);
      const text = svg("text", { x, y: y + 4, "text-anchor": "middle" }, g);
      text.textContent = String(n.label);
      svg("title", {}, g).textContent = `t=${n.t} beam ${n.k}: label ${n.label}, score ${n.score.toFixed(4)}` +
        (n.t > 0 ? `, extends beam ${n.src}` : "") + (n.ended ? " (ended)" : "");
      g.style.cursor = "pointer";
      g.addEventListener("mouseenter", () => {
        info.textContent = `t=${n.t} beam ${n.k}: label ${n.label}, score ${n.score.toFixed(6)}`;
      });
      g.addEventListener("click", () => {
        model.set("selected", [n.t, n.k]);
        model.save_changes();
      });
    }
    el.appendChild(info);
  }

  model.on("change:nodes", draw);
  model.on("change:selected", draw);
  model.on("change:path", draw);
  draw();
}

export default { render };

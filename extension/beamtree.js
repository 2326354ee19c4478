// recdebug beam tree: the hypotheses of a beam search over the steps t (one column per step, one row per beam
// slot), an edge from each hypothesis to the one it extends, its label in the node, its score on hover. The best
// hypothesis' path (up to the step where it ended) stays drawn in orange; the selected one is drawn in blue over
// it. Clicking a node selects that hypothesis (synced to Python, which shows its States along its path).

const NS = "http://www.w3.org/2000/svg";
const BEST = "#e07020", SELECTED = "#2f6fd0", EDGE = "#9a9a9a";

function svg(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function legendItem(parent, draw, text) {
  const item = document.createElement("span");
  item.className = "rd-beam-legend-item";
  item.style.marginRight = "14px";
  item.style.whiteSpace = "nowrap";
  const icon = svg("svg", { width: 26, height: 12 }, item);
  icon.style.verticalAlign = "middle";
  draw(icon);
  const label = document.createElement("span");
  label.textContent = " " + text;
  item.appendChild(label);
  parent.appendChild(item);
}

function render({ model, el }) {
  el.classList.add("rd-beamtree");
  el.style.fontFamily = "var(--jp-code-font-family, monospace)";
  el.style.fontSize = "11px";
  el.style.color = "var(--jp-ui-font-color1, #222)";
  const legend = document.createElement("div");
  legend.className = "rd-beam-legend";
  legend.style.margin = "2px 0 4px 0";
  legendItem(legend, (s) => svg("line", { x1: 1, y1: 6, x2: 25, y2: 6, stroke: BEST, "stroke-width": 3 }, s),
    "best hypothesis (to where it ended)");
  legendItem(legend, (s) => svg("line", { x1: 1, y1: 6, x2: 25, y2: 6, stroke: SELECTED, "stroke-width": 2,
    "stroke-dasharray": "4 2" }, s), "selected hypothesis");
  legendItem(legend, (s) => svg("circle", { cx: 13, cy: 6, r: 5, fill: "#e8e8e8", stroke: "#777" }, s),
    "ended (grey)");
  legendItem(legend, (s) => svg("circle", { cx: 13, cy: 6, r: 5, fill: "#ffe08a", stroke: SELECTED }, s),
    "selected node");
  const box = document.createElement("div");
  box.style.overflowX = "auto";
  const info = document.createElement("div");
  info.className = "rd-beam-info";
  el.appendChild(legend);
  el.appendChild(box);
  el.appendChild(info);
  const hint = "the label is in the node; hover a node for its score, click it to show its states";
  info.textContent = hint;

  function draw() {
    box.textContent = "";
    const nodes = model.get("nodes");
    const [sel_t, sel_k] = model.get("selected");
    const onPath = (pairs) => new Set(pairs.map(([t, k]) => `${t},${k}`));
    const path = onPath(model.get("path")), best = onPath(model.get("best") || []);
    const steps = 1 + Math.max(-1, ...nodes.map((n) => n.t));
    const beams = 1 + Math.max(-1, ...nodes.map((n) => n.k));
    const dx = 46, dy = 30, r = 11, left = 58, top = 14;
    const root = svg("svg", { width: left + 10 + steps * dx, height: top + beams * dy + 18 }, box);
    const pos = (t, k) => [left + t * dx, top + k * dy];
    for (let k = 0; k < beams; k++) {  // beam slots
      const t = svg("text", { x: 4, y: top + k * dy + 4, fill: "currentColor", opacity: 0.7 }, root);
      t.textContent = `beam ${k}`;
    }
    for (let t = 0; t < steps; t++) {  // the step axis
      const x = left + t * dx;
      const label = svg("text", { x, y: top + beams * dy + 6, "text-anchor": "middle", fill: "currentColor" }, root);
      label.textContent = String(t);
    }
    const axisLabel = svg("text", { x: 4, y: top + beams * dy + 6, fill: "currentColor", opacity: 0.7 }, root);
    axisLabel.textContent = "t";
    const edges = [];
    for (const n of nodes) {
      if (n.t === 0) continue;
      const on = (set) => set.has(`${n.t},${n.k}`) && set.has(`${n.t - 1},${n.src}`);
      edges.push([n, on(best), on(path)]);
    }
    for (const [n, isBest, isSel] of edges) {  // plain edges first, then the best path, then the selected one
      if (isBest || isSel) continue;
      const [x0, y0] = pos(n.t - 1, n.src), [x1, y1] = pos(n.t, n.k);
      svg("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: EDGE, "stroke-width": 1 }, root);
    }
    for (const [n, isBest] of edges) {
      if (!isBest) continue;
      const [x0, y0] = pos(n.t - 1, n.src), [x1, y1] = pos(n.t, n.k);
      svg("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: BEST, "stroke-width": 4, class: "rd-beam-best" }, root);
    }
    for (const [n, , isSel] of edges) {
      if (!isSel) continue;
      const [x0, y0] = pos(n.t - 1, n.src), [x1, y1] = pos(n.t, n.k);
      svg("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: SELECTED, "stroke-width": 2, "stroke-dasharray": "5 3",
        class: "rd-beam-selected" }, root);
    }
    for (const n of nodes) {
      const [x, y] = pos(n.t, n.k);
      const g = svg("g", { class: "rd-beam-node", "data-t": n.t, "data-k": n.k }, root);
      const key = `${n.t},${n.k}`;
      const fill = n.t === sel_t && n.k === sel_k ? "#ffe08a" : n.ended ? "#e8e8e8" : "#dbe8ff";
      const stroke = path.has(key) ? SELECTED : best.has(key) ? BEST : "#557";
      svg("circle", { cx: x, cy: y, r, fill, stroke, "stroke-width": path.has(key) || best.has(key) ? 2.5 : 1 }, g);
      const text = svg("text", { x, y: y + 4, "text-anchor": "middle", fill: "#111" }, g);
      text.textContent = String(n.label);
      const about = `t=${n.t} beam ${n.k}: label ${n.label}, score ${n.score.toFixed(4)}` +
        (n.t > 0 ? `, extends beam ${n.src} of t=${n.t - 1}` : "") + (n.ended ? " (ended)" : "");
      svg("title", {}, g).textContent = about;
      g.style.cursor = "pointer";
      g.addEventListener("mouseenter", () => { info.textContent = about; });
      g.addEventListener("mouseleave", () => { info.textContent = hint; });
      g.addEventListener("click", () => {
        model.set("selected", [n.t, n.k]);
        model.save_changes();
      });
    }
  }

  model.on("change:nodes", draw);
  model.on("change:selected", draw);
  model.on("change:path", draw);
  model.on("change:best", draw);
  draw();
}

export default { render };

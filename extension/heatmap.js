// recdebug state view: a units x t heatmap of one State (or layer) of one sequence, with axes (unit and step
// ticks, the dims named), a colour bar with its numeric range (or, for labels, a legend), the cursor on the last
// step run, padding greyed out, NaN/Inf in colours of their own, exact values in a tooltip at the pointer, the
// norm per step and the values at the cursor. Steps not run yet (a live stepper) are hatched. The picture follows
// from the model's state alone: `values` (a float32 buffer [T][U], time-major, as last sent whole) with `rows` (the
// rows changed since, each an int32 step and its float32 row) written over it, so that a view drawn at any
// moment (the widget shown late or again, the page reloaded) draws what the stepper holds.
//
// Step numbering, the same everywhere in the debugger: t=k is iteration k of the loop (loop.index == k), counted
// from 0; the cursor marks the last step run (t=-1: none yet, the initial values), or in a recorded trace the step
// looked at.

const NAN_COLOR = [0, 200, 90];     // green
const INF_COLOR = [255, 0, 255];    // magenta
const PAD_COLOR = [190, 190, 190];  // grey
const MAX_W = 1200;                 // at most this many pixel columns: longer loops are downsampled
const MAX_H = 256;                  // at most this many pixel rows: wider states are downsampled
const LEFT = 48, RIGHT = 70, AXIS_H = 30;  // gutters (CSS px): unit ticks, colour bar, step ticks
const HATCH_BG = "rgba(128, 128, 128, 0.10)", HATCH_LINE = "rgba(128, 128, 128, 0.6)";  // not run yet
const PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]];

function floats(view) {
  if (!view || view.byteLength === 0) return new Float32Array(0);
  return new Float32Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function bytes(view) {
  if (!view || view.byteLength === 0) return new Uint8Array(0);
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function diverging(v, scale) {  // blue (-scale) - white (0) - red (+scale)
  const x = Math.max(-1, Math.min(1, v / scale));
  if (x >= 0) return [255, Math.round(255 * (1 - x)), Math.round(255 * (1 - x))];
  return [Math.round(255 * (1 + x)), Math.round(255 * (1 + x)), 255];
}

function category(v) {  // one colour per label
  const i = Math.round(v);
  if (i >= 0 && i < PALETTE.length) return PALETTE[i];
  const h = ((i * 137.508) % 360 + 360) % 360;  // golden-angle hues after the palette
  const c = (1 - Math.abs(2 * 0.5 - 1)) * 0.6, x = c * (1 - Math.abs((h / 60) % 2 - 1)), m = 0.5 - c / 2;
  const [r, g, b] = h < 60 ? [c, x, 0] : h < 120 ? [x, c, 0] : h < 180 ? [0, c, x] : h < 240 ? [0, x, c]
    : h < 300 ? [x, 0, c] : [c, 0, x];
  return [Math.round(255 * (r + m)), Math.round(255 * (g + m)), Math.round(255 * (b + m))];
}

function fmt(v) {
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "+Inf" : "-Inf";
  return v.toPrecision(6);
}

function short(v) {  // tick labels
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

function niceSteps(n, room) {
  const want = Math.max(1, Math.floor(room));
  const steps = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000];
  const step = steps.find((s) => Math.ceil(n / s) <= want) || Math.ceil(n / want);
  const out = [];
  for (let i = 0; i < n; i += step) out.push(i);
  return out;
}

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function sized(canvas) {  // a canvas' buffer at the size shown (lines and text stay sharp)
  const r = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round((canvas.clientWidth || 600) * r));
  canvas.height = Math.max(1, Math.round((canvas.clientHeight || 40) * r));
  const ctx = canvas.getContext("2d");
  ctx.setTransform(r, 0, 0, r, 0, 0);
  return [ctx, canvas.width / r, canvas.height / r];
}

function plotHeight(U) {  // a one-unit State is one thin strip, a wide one at most 180 px
  return Math.max(20, Math.min(180, U * (U <= 4 ? 18 : U <= 12 ? 14 : 9)));
}

function render({ model, el: root }) {
  root.classList.add("rd-heatmap");
  root.style.fontFamily = "var(--jp-code-font-family, monospace)";
  root.style.fontSize = "12px";
  root.style.margin = "4px 0 12px 0";
  root.style.color = "var(--jp-ui-font-color1, #222)";
  const head = el("div", "rd-head", root);
  const title = el("span", "rd-title", head);
  title.style.fontWeight = "bold";
  const dims = el("span", "rd-dims", head);
  dims.style.opacity = "0.75";
  const wrap = el("div", "rd-wrap", root);
  wrap.style.position = "relative";
  wrap.style.width = "100%";
  const heat = el("canvas", "rd-heat", wrap);
  heat.style.position = "absolute";
  heat.style.left = LEFT + "px";
  heat.style.top = "0";
  heat.style.width = `calc(100% - ${LEFT + RIGHT}px)`;
  heat.style.imageRendering = "pixelated";
  const axes = el("canvas", "rd-overlay", wrap);  // ticks, labels, colour bar, cursor, diff marks; gets the hover
  axes.style.position = "absolute";
  axes.style.left = "0";
  axes.style.top = "0";
  axes.style.width = "100%";
  const tooltip = el("div", "rd-tooltip", wrap);
  Object.assign(tooltip.style, {
    position: "absolute", display: "none", pointerEvents: "none", whiteSpace: "nowrap", zIndex: "5",
    padding: "2px 6px", borderRadius: "3px", background: "var(--jp-layout-color0, #fff)",
    color: "var(--jp-ui-font-color0, #000)", border: "1px solid var(--jp-border-color1, #888)",
    boxShadow: "0 1px 4px rgba(0,0,0,0.3)",
  });
  const units = el("div", "rd-units", root);  // the unit selection over a brushed step range
  units.style.margin = `2px 0 2px ${LEFT}px`;
  units.style.color = "#d0a000";
  const legend = el("div", "rd-legend", root);
  legend.style.margin = `2px 0 2px ${LEFT}px`;
  const norm = el("canvas", "rd-norm", root);
  norm.style.width = "100%";
  norm.style.height = "58px";
  norm.style.display = "block";
  const readout = el("div", "rd-readout", root);
  readout.style.margin = `2px 0 2px ${LEFT}px`;
  readout.style.whiteSpace = "pre-line";  // the statistics, then the values on a line of their own
  const bars = el("canvas", "rd-bars", root);
  bars.style.width = "100%";
  bars.style.height = "72px";
  bars.style.display = "block";

  let values = new Float32Array(0), T = 0, U = 0, scale = 1, diff = new Uint8Array(0);
  let signed = true;  // a negative value among the valid steps: diverging scale, else sequential (0 to +scale)
  let norms = new Float32Array(0), present = [], grads = new Float32Array(0);

  const categorical = () => model.get("categorical");
  const shown = () => {  // steps drawn: computed (known), and with reveal only up to the cursor
    const known = model.get("known");
    return model.get("reveal") ? Math.min(known, model.get("cursor") + 1) : known;
  };

  function textColor() { return getComputedStyle(root).color || "#222"; }
  function backColor() {  // the page's background behind this view (light or dark theme)
    for (let e = root; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (c && c !== "transparent" && !/rgba\(.*,\s*0\)$/.test(c)) return c;
    }
    return "white";
  }

  function load() {
    values = floats(model.get("values"));
    [T, U] = model.get("shape");
    if (values.length !== T * U) values = new Float32Array(T * U);
    applyRows();
    diff = bytes(model.get("diff"));
    const h = plotHeight(U);
    wrap.style.height = (h + AXIS_H) + "px";
    heat.style.height = h + "px";
    axes.style.height = (h + AXIS_H) + "px";
    rescale();
    drawAll();
  }

  function applyRows() {  // the rows changed since `values` was sent: int32 step, then U float32, each
    const view = model.get("rows");
    if (!view || view.byteLength === 0 || U === 0) return;
    const buf = view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength);
    const record = 4 + 4 * U, steps = new DataView(buf);
    for (let off = 0; off + record <= buf.byteLength; off += record) {
      const t = steps.getInt32(off, true);
      if (t >= 0 && t < T) values.set(new Float32Array(buf, off + 4, U), t * U);
    }
  }

  function rescale() {
    // the colour range: the valid steps computed so far of this sequence, or the scale shared by the debugger
    let m = 0, negative = false;
    const length = Math.min(model.get("length"), model.get("known"));
    const seen = new Set();
    for (let t = 0; t < Math.min(T, length); t++) {
      for (let u = 0; u < U; u++) {
        const v = values[t * U + u];
        if (Number.isFinite(v)) {
          if (Math.abs(v) > m) m = Math.abs(v);
          if (v < 0) negative = true;
          seen.add(Math.round(v));
        }
      }
    }
    const fixed = model.get("scale");
    scale = fixed > 0 ? fixed : m > 0 ? m : 1;
    signed = negative;  // (non-negative values, e.g. coverage or probabilities: white at 0 to red at +scale)
    present = Array.from(seen).sort((a, b) => a - b);
    norms = new Float32Array(T);
    for (let t = 0; t < T; t++) {
      let s = 0;
      for (let u = 0; u < U; u++) s += values[t * U + u] * values[t * U + u];
      norms[t] = Math.sqrt(s);
    }
  }

  function colorOf(v) {
    if (Number.isNaN(v)) return NAN_COLOR;
    if (!Number.isFinite(v)) return INF_COLOR;
    return categorical() ? category(v) : diverging(v, scale);
  }

  function drawHeat() {
    const W = Math.max(1, Math.min(T, MAX_W)), H = Math.max(1, Math.min(U, MAX_H));
    heat.width = W; heat.height = H;
    const ctx = heat.getContext("2d");
    const img = ctx.createImageData(W, H);
    const length = model.get("length"), upto = shown();
    for (let px = 0; px < W; px++) {
      const t0 = Math.floor(px * T / W), t1 = Math.max(t0 + 1, Math.floor((px + 1) * T / W));
      for (let py = 0; py < H; py++) {
        const u0 = Math.floor(py * U / H), u1 = Math.max(u0 + 1, Math.floor((py + 1) * U / H));
        let best = 0, nan = false, inf = false, any = false, pad = false, run = false;
        for (let t = t0; t < t1; t++) {
          if (t >= upto) continue;  // not run yet (or not revealed): left empty
          run = true;
          if (t >= length) { pad = true; continue; }
          for (let u = u0; u < u1; u++) {
            const v = values[t * U + u];
            if (Number.isNaN(v)) nan = true;
            else if (!Number.isFinite(v)) inf = true;
            else if (!any || Math.abs(v) > Math.abs(best)) { best = v; any = true; }
          }
        }
        const i = 4 * (py * W + px);
        if (!run) { img.data[i + 3] = 0; continue; }
        const rgb = nan ? NAN_COLOR : inf ? INF_COLOR : any ? colorOf(best) : PAD_COLOR;
        img.data[i] = rgb[0]; img.data[i + 1] = rgb[1]; img.data[i + 2] = rgb[2]; img.data[i + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  function drawAxes() {
    const [ctx, W, Hall] = sized(axes);
    const H = Hall - AXIS_H, pw = W - LEFT - RIGHT;
    ctx.clearRect(0, 0, W, Hall);
    const fg = textColor();
    ctx.font = "11px sans-serif";
    ctx.fillStyle = fg; ctx.strokeStyle = fg; ctx.lineWidth = 1;
    const upto = shown();
    if (upto < T && T > 0 && pw > 0 && H > 0) {  // steps not run yet (or not revealed): hatched, no colour of the scale
      const x0 = LEFT + upto * pw / T;
      ctx.save();
      ctx.beginPath(); ctx.rect(x0, 0, LEFT + pw - x0, H); ctx.clip();
      ctx.fillStyle = HATCH_BG; ctx.fillRect(x0, 0, LEFT + pw - x0, H);
      ctx.strokeStyle = HATCH_LINE; ctx.lineWidth = 1.5;
      ctx.beginPath();
      for (let s = x0 - H; s < LEFT + pw; s += 7) { ctx.moveTo(s, H); ctx.lineTo(s + H, 0); }
      ctx.stroke();
      ctx.restore();
      ctx.strokeStyle = fg;
    }
    root.dataset.shown = String(upto);
    // frame of the plot area (the part of a loop not run yet is still framed)
    ctx.globalAlpha = 0.5; ctx.strokeRect(LEFT - 0.5, -0.5 + 0.5, pw + 1, H); ctx.globalAlpha = 1;
    if (T > 0 && pw > 0) {  // step ticks at the centre of their column
      ctx.textAlign = "center"; ctx.textBaseline = "top";
      for (const t of niceSteps(T, pw / 38)) {
        const x = LEFT + (t + 0.5) * pw / T;
        ctx.beginPath(); ctx.moveTo(x, H); ctx.lineTo(x, H + 4); ctx.stroke();
        ctx.fillText(String(t), x, H + 5);
      }
      ctx.textAlign = "right";
      ctx.fillText(model.get("axis_label") || "t", LEFT + pw, H + 17);
    }
    if (U > 0 && H > 0) {  // unit ticks
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (const u of niceSteps(U, H / 14)) {
        const y = (u + 0.5) * H / U;
        ctx.beginPath(); ctx.moveTo(LEFT - 4, y); ctx.lineTo(LEFT, y); ctx.stroke();
        ctx.fillText(String(u), LEFT - 6, Math.max(6, Math.min(H - 6, y)));  // whole, not cut at the edges
      }
      ctx.save(); ctx.translate(10, H / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
      ctx.fillText("unit", 0, 0); ctx.restore();
    }
    if (!categorical() && H > 0) {  // colour bar: its range and zero
      const x0 = LEFT + pw + 8, bw = 12;
      const grad = ctx.createLinearGradient(0, 0, 0, H);
      grad.addColorStop(0, "rgb(255,0,0)");
      if (signed) { grad.addColorStop(0.5, "rgb(255,255,255)"); grad.addColorStop(1, "rgb(0,0,255)"); }
      else grad.addColorStop(1, "rgb(255,255,255)");
      ctx.fillStyle = grad; ctx.fillRect(x0, 0, bw, H);
      ctx.strokeStyle = fg; ctx.globalAlpha = 0.6; ctx.strokeRect(x0 + 0.5, 0.5, bw - 1, H - 1); ctx.globalAlpha = 1;
      ctx.fillStyle = fg; ctx.textAlign = "left"; ctx.textBaseline = "middle";
      const labels = !signed ? (H >= 40 ? [[0, short(scale)], [H / 2, short(scale / 2)], [H, "0"]]
        : [[4, "0…" + short(scale)]])
        : H >= 40 ? [[0, "+" + short(scale)], [H / 2, "0"], [H, "-" + short(scale)]] : [[4, "±" + short(scale)]];
      for (const [y, s] of labels) ctx.fillText(s, x0 + bw + 3, Math.max(6, Math.min(H - 4, y)));
    }
    // differing cells (another run): a dot in each, the first differing step in orange
    if (diff.length === T * U && model.get("diff_first") >= 0 && T > 0 && U > 0) {
      ctx.fillStyle = "rgba(0,0,0,0.8)";
      const cw = pw / T, ch = H / U, r = Math.max(1, Math.min(cw, ch) / 4);
      for (let t = 0; t < T; t++) for (let u = 0; u < U; u++) {
        if (diff[t * U + u]) ctx.fillRect(LEFT + (t + 0.5) * cw - r, (u + 0.5) * ch - r, 2 * r, 2 * r);
      }
      const x = LEFT + (model.get("diff_first") + 0.5) * cw;
      ctx.strokeStyle = "orange"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke();
    }
    const cursor = model.get("cursor");
    if (cursor >= 0 && T > 0) {  // the cursor: the text colour with an edge of the page's, seen on any colour and theme
      const x = LEFT + (cursor + 0.5) * pw / T;
      ctx.strokeStyle = backColor(); ctx.lineWidth = 4;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke();
      ctx.strokeStyle = fg; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke();
      root.dataset.cursorX = x.toFixed(2);
    } else {
      root.dataset.cursorX = "";
    }
    root.dataset.cursor = String(cursor);
    root.dataset.scale = String(scale);
    root.dataset.signed = signed ? "1" : "0";
    const picked = model.get("highlight") || [];
    if (picked.length && U > 0) {  // selected units: a marker at their rows and a frame around the brushed range
      ctx.fillStyle = "#f0b400";
      for (const u of picked) {
        const y = (u + 0.5) * H / U;
        ctx.beginPath(); ctx.moveTo(LEFT - 1, y); ctx.lineTo(LEFT - 7, y - 4); ctx.lineTo(LEFT - 7, y + 4); ctx.fill();
      }
      const b = model.get("brush") || [];
      if (b.length === 2 && T > 0) {
        ctx.strokeStyle = "#f0b400"; ctx.lineWidth = 2;
        const x0 = LEFT + Math.min(b[0], b[1]) * pw / T, x1 = LEFT + (Math.max(b[0], b[1]) + 1) * pw / T;
        for (const u of picked) ctx.strokeRect(x0, u * H / U + 1, x1 - x0, Math.max(2, H / U - 2));
      }
    }
    if (dragging && T > 0) {  // the range being brushed
      ctx.fillStyle = "rgba(240, 180, 0, 0.25)";
      const a = Math.min(dragging[0], dragging[1]), z = Math.max(dragging[0], dragging[1]);
      ctx.fillRect(LEFT + a * pw / T, 0, (z - a + 1) * pw / T, H);
    }
  }

  function drawLegend() {
    legend.textContent = "";
    if (!categorical()) { legend.style.display = "none"; return; }
    legend.style.display = "block";
    const names = model.get("labels") || [];
    const cap = el("span", "", legend);
    const word = model.get("value_word") || "label";  // a label of a vocabulary, or an int value (a counter)
    cap.textContent = present.length ? `${word}s: ` : `${word}s: (none in the steps shown)`;
    for (const v of present.slice(0, 24)) {
      const item = el("span", "rd-legend-item", legend);
      item.style.marginRight = "10px"; item.style.whiteSpace = "nowrap";
      const sw = el("span", "", item);
      const [r, g, b] = category(v);
      Object.assign(sw.style, { display: "inline-block", width: "10px", height: "10px", marginRight: "3px",
        background: `rgb(${r},${g},${b})`, verticalAlign: "middle" });
      const name = el("span", "", item);
      name.textContent = names[v] !== undefined ? `${v} ${names[v]}` : String(v);
    }
    if (present.length > 24) el("span", "", legend).textContent = `... ${present.length - 24} more`;
  }

  function drawNorm() {
    norm.style.display = categorical() ? "none" : "block";  // the norm of labels means nothing
    if (categorical()) return;
    const [ctx, W, H] = sized(norm);
    const pw = W - LEFT - RIGHT;
    ctx.clearRect(0, 0, W, H);
    const fg = textColor();
    ctx.font = "11px sans-serif";
    const length = Math.min(model.get("length"), shown());
    let m = 0;
    for (let t = 0; t < length; t++) if (Number.isFinite(norms[t]) && norms[t] > m) m = norms[t];
    grads = floats(model.get("grad_norms"));
    let gm = 0;
    for (let t = 0; t < Math.min(length, grads.length); t++) if (Number.isFinite(grads[t]) && grads[t] > gm) gm = grads[t];
    // a band for the captions above the plot: the line never crosses them
    const TOPBAND = 16, y0 = TOPBAND + 2, y1 = H - 3;
    ctx.fillStyle = fg; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.fillText(short(m), LEFT - 6, y0);
    ctx.fillText("0", LEFT - 6, y1);
    ctx.textAlign = "left"; ctx.textBaseline = "top"; ctx.globalAlpha = 0.75;
    ctx.fillText("norm per step (L2 over units)", LEFT + 4, 1);
    ctx.globalAlpha = 0.4; ctx.strokeStyle = fg;
    ctx.beginPath(); ctx.moveTo(LEFT, y1 + 0.5); ctx.lineTo(LEFT + pw, y1 + 0.5); ctx.stroke();
    ctx.globalAlpha = 1;
    if (T > 0) {
      ctx.strokeStyle = "#3a78d8"; ctx.lineWidth = 1.5; ctx.beginPath();
      for (let t = 0; t < length; t++) {
        const x = LEFT + (t + 0.5) * pw / T;
        const y = y1 - (Number.isFinite(norms[t]) ? norms[t] / (m || 1) : 1) * (y1 - y0);
        if (t === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      }
      ctx.stroke();
      if (grads.length === T && gm > 0) {  // the gradient of the loss with respect to the value, per step
        ctx.strokeStyle = "#e07020"; ctx.lineWidth = 1.5; ctx.setLineDash([4, 2]); ctx.beginPath();
        for (let t = 0; t < Math.min(length, T); t++) {
          const x = LEFT + (t + 0.5) * pw / T, y = y1 - grads[t] / gm * (y1 - y0);
          if (t === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
        }
        ctx.stroke(); ctx.setLineDash([]);
        ctx.fillStyle = "#e07020"; ctx.textAlign = "right"; ctx.textBaseline = "top";
        ctx.fillText(`- - |dloss/dvalue| per step (max ${short(gm)})`, LEFT + pw, 1);
      }
      const cursor = model.get("cursor");
      if (cursor >= 0) { ctx.fillStyle = fg; ctx.fillRect(LEFT + (cursor + 0.5) * pw / T - 1, y0, 2, y1 - y0); }
    }
  }

  function drawReadout() {
    const cursor = model.get("cursor");
    const [ctx, W, H] = sized(bars);
    ctx.clearRect(0, 0, W, H);
    bars.style.display = "none";
    if (cursor < 0) {
      readout.textContent = "t=-1: no step run yet (the initial values)";
      return;
    }
    if (cursor >= T || cursor >= model.get("known")) { readout.textContent = `t=${cursor}: not run yet`; return; }
    if (cursor >= model.get("length")) {
      readout.textContent = `t=${cursor}: padding (this sequence has ${model.get("length")} steps, ` +
        `t=0…${model.get("length") - 1})`;
      return;
    }
    const row = values.subarray(cursor * U, (cursor + 1) * U);
    let mn = Infinity, mx = -Infinity, sum = 0, n = 0, bad = 0;
    for (const v of row) {
      if (!Number.isFinite(v)) { bad++; continue; }
      mn = Math.min(mn, v); mx = Math.max(mx, v); sum += v; n++;
    }
    if (categorical()) {
      const names = model.get("labels") || [];
      const shownLabels = Array.from(row.slice(0, 16), (v) => names[Math.round(v)] !== undefined
        ? `${Math.round(v)} ${names[Math.round(v)]}` : Number.isInteger(v) ? String(v) : fmt(v));
      const word = model.get("value_word") || "label";
      readout.textContent = `t=${cursor}: ${word}${U > 1 ? "s" : ""} ${shownLabels.join(", ")}` +
        (U > 16 ? ` ... (${U} in all)` : "");
      return;
    }
    const stats = n ? `min ${fmt(mn)} · max ${fmt(mx)} · mean ${fmt(sum / n)}${bad ? ` · ${bad} NaN/Inf` : ""}`
      : `all ${bad} values NaN/Inf`;
    readout.textContent = `t=${cursor}: ${stats}` + (U <= 8 ? `\nvalues (unit 0…${U - 1}): ` +
      Array.from(row, fmt).join(" ") : "");
    bars.style.display = "block";
    // the values at the cursor as bars: one per unit, the colour bar's range up and down, the axes named
    const [ctx2, W2, H2] = sized(bars);
    // (non-negative values: the bars stand on zero at the bottom, as the colour bar's range runs 0 to +scale)
    const pw = W2 - LEFT - RIGHT, top = 14, bottom = H2 - 16;
    const mid = signed ? (top + bottom) / 2 : bottom, half = signed ? (bottom - top) / 2 : bottom - top;
    const fg = textColor();
    ctx2.font = "11px sans-serif"; ctx2.fillStyle = fg;
    ctx2.textAlign = "left"; ctx2.textBaseline = "top"; ctx2.globalAlpha = 0.75;
    ctx2.fillText(`values at t=${cursor}, one bar per unit`, LEFT + 4, 0);
    ctx2.globalAlpha = 1;
    ctx2.textAlign = "left"; ctx2.textBaseline = "middle";  // value axis, on the right like the colour bar's
    const ticks = signed ? [[top, "+" + short(scale)], [mid, "0"], [bottom, "-" + short(scale)]]
      : [[top, short(scale)], [bottom, "0"]];
    for (const [y, s] of ticks) {
      ctx2.fillText(s, LEFT + pw + 6, y);
    }
    ctx2.globalAlpha = 0.4; ctx2.strokeStyle = fg;
    ctx2.beginPath(); ctx2.moveTo(LEFT, mid + 0.5); ctx2.lineTo(LEFT + pw, mid + 0.5); ctx2.stroke();
    ctx2.strokeRect(LEFT - 0.5, top - 0.5, pw + 1, bottom - top + 1);
    ctx2.globalAlpha = 1;
    const bw = pw / U;
    ctx2.textAlign = "center"; ctx2.textBaseline = "top";  // unit axis
    for (const u of niceSteps(U, pw / 38)) ctx2.fillText(String(u), LEFT + (u + 0.5) * bw, bottom + 2);
    ctx2.textAlign = "right"; ctx2.fillText("unit", LEFT - 6, bottom + 2);
    for (let u = 0; u < U; u++) {
      const v = row[u];
      const rgb = Number.isNaN(v) ? NAN_COLOR : !Number.isFinite(v) ? INF_COLOR : v >= 0 ? [214, 70, 60] : [55, 105, 215];
      ctx2.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      const h = !signed && v < 0 ? 0 : Number.isFinite(v) ? Math.min(1, Math.abs(v) / scale) * (half - 1) : half - 1;
      ctx2.fillRect(LEFT + u * bw, v >= 0 ? mid - h : mid, Math.max(1, bw - (bw > 3 ? 1 : 0)), Math.max(1, h));
    }
  }

  function drawAll() {
    title.textContent = model.get("title");
    units.textContent = model.get("units_text") || "";
    units.style.display = units.textContent ? "block" : "none";
    const label = model.get("unit_label");
    dims.textContent = label ? `  ${label} × ${model.get("axis_label") || "t"}` : "";
    drawHeat(); drawAxes(); drawLegend(); drawNorm(); drawReadout();
  }

  function onMove(ev) {
    const r = axes.getBoundingClientRect();
    const pw = r.width - LEFT - RIGHT, H = r.height - AXIS_H;
    const x = ev.clientX - r.left - LEFT, y = ev.clientY - r.top;
    if (!T || !U || pw <= 0 || x < 0 || x >= pw || y < 0 || y >= H) { tooltip.style.display = "none"; return; }
    const t = Math.min(T - 1, Math.floor(x / pw * T));
    const u = Math.min(U - 1, Math.floor(y / H * U));
    const v = values[t * U + u];
    let what;
    if (t >= shown()) what = model.get("recorded") ? "after the cursor (not revealed)" : "not run yet";
    else if (t >= model.get("length")) what = "padding";
    else if (categorical()) {
      const names = model.get("labels") || [];
      what = names[Math.round(v)] !== undefined ? `${Math.round(v)} (${names[Math.round(v)]})` : fmt(v);
    } else what = fmt(v);
    tooltip.textContent = `t=${t} unit=${u} value=${what}`;
    tooltip.style.display = "block";
    // beside the pointer and inside the plot: never over the colour bar and its numbers
    const wide = tooltip.offsetWidth, high = tooltip.offsetHeight || 20;
    let left = x + LEFT + 14;
    if (left + wide > LEFT + pw) left = x + LEFT - 14 - wide;
    tooltip.style.left = Math.max(0, left) + "px";
    tooltip.style.top = (y - high - 8 >= 0 ? y - high - 8 : y + 16) + "px";
  }
  const onLeave = () => { tooltip.style.display = "none"; };
  axes.addEventListener("mousemove", onMove);
  axes.addEventListener("mouseleave", onLeave);

  // brushing a step range (unit selection): press, drag across steps, release
  let dragging = null;
  function stepAt(ev) {
    const r = axes.getBoundingClientRect();
    const pw = r.width - LEFT - RIGHT;
    const x = ev.clientX - r.left - LEFT;
    if (!T || pw <= 0) return null;
    return Math.max(0, Math.min(T - 1, Math.floor(x / pw * T)));
  }
  function onDown(ev) {
    const r = axes.getBoundingClientRect();
    if (ev.clientY - r.top > r.height - AXIS_H) return;
    const t = stepAt(ev);
    if (t === null) return;
    dragging = [t, t];
    ev.preventDefault();
  }
  function onDrag(ev) {
    if (!dragging) return;
    const t = stepAt(ev);
    if (t !== null && t !== dragging[1]) { dragging[1] = t; drawAxes(); }
  }
  function onUp() {
    if (!dragging) return;
    const b = [Math.min(dragging[0], dragging[1]), Math.max(dragging[0], dragging[1])];
    dragging = null;
    model.set("brush", b);
    model.save_changes();
    drawAxes();
  }
  axes.addEventListener("mousedown", onDown);
  axes.addEventListener("mousemove", onDrag);
  window.addEventListener("mouseup", onUp);

  model.on("change:values", load);
  model.on("change:shape", load);
  model.on("change:diff", load);
  for (const name of ["length", "known", "scale", "categorical", "labels", "value_word", "reveal", "grad_norms"]) {
    model.on("change:" + name, () => { rescale(); drawAll(); });
  }
  model.on("change:title", drawAll);
  model.on("change:unit_label", drawAll);
  model.on("change:axis_label", drawAll);
  model.on("change:cursor", () => {
    if (model.get("reveal")) { rescale(); drawHeat(); drawLegend(); }
    drawAxes(); drawNorm(); drawReadout();
  });
  model.on("change:rows", load);
  model.on("change:highlight", drawAxes);
  model.on("change:units_text", drawAll);
  const resize = new ResizeObserver(() => { drawAxes(); drawNorm(); drawReadout(); });
  resize.observe(wrap);
  load();
  return () => {
    axes.removeEventListener("mousemove", onMove);
    axes.removeEventListener("mouseleave", onLeave);
    axes.removeEventListener("mousedown", onDown);
    axes.removeEventListener("mousemove", onDrag);
    window.removeEventListener("mouseup", onUp);
    resize.disconnect();
  };
}

export default { render };

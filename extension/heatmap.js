// recdebug state view: a units x time heatmap with a cursor at the current step, padding greyed out,
// NaN/Inf in colours of their own, exact values on hover, a readout of the values at the cursor and the
// norm over time. Values arrive once as a float32 buffer [T][U] (time-major); afterwards only the cursor
// (and, when stepping live, one new row) changes.

const NAN_COLOR = [0, 200, 90];     // green
const INF_COLOR = [255, 0, 255];    // magenta
const PAD_COLOR = [205, 205, 205];  // grey
const MAX_W = 1200;                 // at most this many pixel columns: longer loops are downsampled
const MAX_H = 256;                  // at most this many pixel rows: wider states are downsampled

function floats(view) {
  if (!view || view.byteLength === 0) return new Float32Array(0);
  return new Float32Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function bytes(view) {
  if (!view || view.byteLength === 0) return new Uint8Array(0);
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function color(v, scale) {
  // diverging blue - white - red
  const x = Math.max(-1, Math.min(1, v / scale));
  if (x >= 0) return [255, Math.round(255 * (1 - x)), Math.round(255 * (1 - x))];
  return [Math.round(255 * (1 + x)), Math.round(255 * (1 + x)), 255];
}

function fmt(v) {
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "+Inf" : "-Inf";
  return v.toPrecision(6);
}

function fit(canvas) {
  // draw lines at the size shown, not at the (downsampled) data resolution
  const r = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round((canvas.clientWidth || 600) * r));
  canvas.height = Math.max(1, Math.round((canvas.clientHeight || 40) * r));
  return canvas;
}

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function render({ model, el: root }) {
  root.classList.add("rd-heatmap");
  root.style.fontFamily = "monospace";
  root.style.fontSize = "12px";
  root.style.margin = "4px 0 10px 0";
  const title = el("div", "rd-title", root);
  title.style.fontWeight = "bold";
  const wrap = el("div", "rd-wrap", root);
  wrap.style.position = "relative";
  wrap.style.width = "100%";
  const heat = el("canvas", "rd-heat", wrap);
  const overlay = el("canvas", "rd-overlay", wrap);
  for (const c of [heat, overlay]) {
    c.style.width = "100%";
    c.style.height = "180px";
    c.style.imageRendering = "pixelated";
    c.style.display = "block";
  }
  overlay.style.position = "absolute";
  overlay.style.left = "0";
  overlay.style.top = "0";
  const tooltip = el("div", "rd-tooltip", root);
  tooltip.style.minHeight = "1.3em";
  tooltip.textContent = "hover the heatmap for exact values";
  const norm = el("canvas", "rd-norm", root);
  norm.style.width = "100%";
  norm.style.height = "40px";
  norm.style.display = "block";
  const readout = el("div", "rd-readout", root);
  const bars = el("canvas", "rd-bars", root);
  bars.style.width = "100%";
  bars.style.height = "50px";
  bars.style.display = "block";

  let values = new Float32Array(0), T = 0, U = 0, scale = 1, diff = new Uint8Array(0);
  let norms = new Float32Array(0);

  function load() {
    values = floats(model.get("values"));
    [T, U] = model.get("shape");
    diff = bytes(model.get("diff"));
    rescale();
    drawAll();
  }

  function rescale() {
    let m = 0;
    const length = model.get("length");
    for (let t = 0; t < Math.min(T, length); t++) {
      for (let u = 0; u < U; u++) {
        const a = Math.abs(values[t * U + u]);
        if (Number.isFinite(a) && a > m) m = a;
      }
    }
    scale = m > 0 ? m : 1;
    norms = new Float32Array(T);
    for (let t = 0; t < T; t++) {
      let s = 0;
      for (let u = 0; u < U; u++) s += values[t * U + u] * values[t * U + u];
      norms[t] = Math.sqrt(s);
    }
  }

  function drawHeat() {
    const W = Math.max(1, Math.min(T, MAX_W)), H = Math.max(1, Math.min(U, MAX_H));
    heat.width = W; heat.height = H;
    const ctx = heat.getContext("2d");
    const img = ctx.createImageData(W, H);
    const length = model.get("length"), known = model.get("known");
    for (let px = 0; px < W; px++) {
      const t0 = Math.floor(px * T / W), t1 = Math.max(t0 + 1, Math.floor((px + 1) * T / W));
      for (let py = 0; py < H; py++) {
        const u0 = Math.floor(py * U / H), u1 = Math.max(u0 + 1, Math.floor((py + 1) * U / H));
        let best = 0, nan = false, inf = false, any = false, pad = true;
        for (let t = t0; t < t1; t++) {
          if (t >= length || t >= known) continue;
          pad = false;
          for (let u = u0; u < u1; u++) {
            const v = values[t * U + u];
            if (Number.isNaN(v)) nan = true;
            else if (!Number.isFinite(v)) inf = true;
            else if (!any || Math.abs(v) > Math.abs(best)) { best = v; any = true; }
          }
        }
        const rgb = pad ? PAD_COLOR : nan ? NAN_COLOR : inf ? INF_COLOR : color(best, scale);
        const i = 4 * (py * W + px);
        img.data[i] = rgb[0]; img.data[i + 1] = rgb[1]; img.data[i + 2] = rgb[2]; img.data[i + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  function drawOverlay() {
    fit(overlay);
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const cursor = model.get("cursor");
    const W = overlay.width, H = overlay.height;
    if (diff.length === T * U && model.get("diff_first") >= 0) {
      // differing cells: a dot in the middle of each (downsampled to the shown size)
      ctx.fillStyle = "rgba(0,0,0,0.8)";
      const cw = W / T, ch = H / U, r = Math.max(1, Math.min(cw, ch) / 4);
      for (let t = 0; t < T; t++) for (let u = 0; u < U; u++) {
        if (diff[t * U + u]) ctx.fillRect((t + 0.5) * cw - r, (u + 0.5) * ch - r, 2 * r, 2 * r);
      }
      const x = (model.get("diff_first") + 0.5) * cw;
      ctx.strokeStyle = "orange"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke();
    }
    if (cursor >= 0 && T > 0) {
      const x = (cursor + 0.5) * W / T;
      ctx.strokeStyle = "black"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke();
      root.dataset.cursorX = x.toFixed(2);
    } else {
      root.dataset.cursorX = "";
    }
    root.dataset.cursor = String(cursor);
  }

  function drawNorm() {
    fit(norm);
    const W = norm.width, H = norm.height;
    const ctx = norm.getContext("2d");
    ctx.clearRect(0, 0, W, H);
    const length = Math.min(model.get("length"), model.get("known"));
    let m = 0;
    for (let t = 0; t < length; t++) if (Number.isFinite(norms[t]) && norms[t] > m) m = norms[t];
    ctx.strokeStyle = "#3060c0"; ctx.lineWidth = 1.5; ctx.beginPath();
    for (let t = 0; t < length; t++) {
      const x = (t + 0.5) * W / T, y = H - 2 - (Number.isFinite(norms[t]) ? norms[t] / (m || 1) : 1) * (H - 4);
      if (t === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
    const cursor = model.get("cursor");
    if (cursor >= 0) { ctx.fillStyle = "black"; ctx.fillRect((cursor + 0.5) * W / T - 1, 0, 2, H); }
  }

  function drawReadout() {
    const cursor = model.get("cursor");
    fit(bars);
    const ctx = bars.getContext("2d");
    const W = bars.width, H = bars.height;
    ctx.clearRect(0, 0, W, H);
    if (cursor < 0 || cursor >= T || cursor >= model.get("known")) {
      readout.textContent = cursor < 0 ? "t: before the first step (initial values)" : "";
      return;
    }
    const row = values.subarray(cursor * U, (cursor + 1) * U);
    let mn = Infinity, mx = -Infinity, sum = 0, n = 0, bad = 0;
    for (const v of row) {
      if (!Number.isFinite(v)) { bad++; continue; }
      mn = Math.min(mn, v); mx = Math.max(mx, v); sum += v; n++;
    }
    const padded = cursor >= model.get("length");
    const stats = n ? `min ${fmt(mn)} max ${fmt(mx)} mean ${fmt(sum / n)}${bad ? `, ${bad} NaN/Inf` : ""}`
      : `all ${bad} values NaN/Inf`;
    readout.textContent = `t=${cursor}${padded ? " (padding)" : ""}: ${stats}` +
      (U <= 8 ? " | " + Array.from(row, fmt).join(" ") : "");
    const bw = W / U;
    for (let u = 0; u < U; u++) {
      const v = row[u];
      const rgb = Number.isNaN(v) ? NAN_COLOR : !Number.isFinite(v) ? INF_COLOR : color(v, scale);
      ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      const h = Number.isFinite(v) ? Math.abs(v) / scale * (H / 2) : H / 2;
      ctx.fillRect(u * bw, v >= 0 ? H / 2 - h : H / 2, Math.max(1, bw - (bw > 3 ? 1 : 0)), Math.max(1, h));
    }
  }

  function drawAll() {
    title.textContent = model.get("title");
    drawHeat(); drawOverlay(); drawNorm(); drawReadout();
  }

  function onMove(ev) {
    const r = overlay.getBoundingClientRect();
    if (!T || !U || r.width === 0) return;
    const t = Math.min(T - 1, Math.floor((ev.clientX - r.left) / r.width * T));
    const u = Math.min(U - 1, Math.floor((ev.clientY - r.top) / r.height * U));
    const v = values[t * U + u];
    const padded = t >= model.get("length") || t >= model.get("known");
    tooltip.textContent = `t=${t} unit=${u} value=${padded ? "padding" : fmt(v)}`;
  }
  overlay.addEventListener("mousemove", onMove);

  function onPatch() {  // int32 step, then that step's float32 row
    const view = model.get("patch");
    if (!view || view.byteLength < 4) return;
    const t = new DataView(view.buffer, view.byteOffset, 4).getInt32(0, true);
    const row = floats(new DataView(view.buffer, view.byteOffset + 4, view.byteLength - 4));
    if (t >= 0 && t < T && row.length === U) values.set(row, t * U);
    rescale();
    drawAll();
  }

  model.on("change:values", load);
  model.on("change:shape", load);
  model.on("change:diff", load);
  model.on("change:length", drawAll);
  model.on("change:known", drawAll);
  model.on("change:title", () => { title.textContent = model.get("title"); });
  model.on("change:cursor", () => { drawOverlay(); drawNorm(); drawReadout(); });
  model.on("change:patch", onPatch);
  load();
  return () => overlay.removeEventListener("mousemove", onMove);
}

export default { render };

// GAN Paint page. The page owns the stroke list (undo, redo and reset never
// touch the server) and sends all of it with every render; see /openapi.json.
"use strict";

const COLORS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4",
                "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990", "#9a6324"];
const STRIP_SIZE = 8;

const $ = (id) => document.getElementById(id);
const state = {
  info: null, concepts: [], concept: 0, sample: 0, stripStart: 0,
  strokes: [], redo: [], drawing: null,
  rendering: false, stale: false,
};

async function api(path, options) {
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(errorText(data, response.status));
  return data;
}

function errorText(data, status) {
  const detail = data.detail;
  if (Array.isArray(detail)) return detail.map((d) => `${d.loc.join(".")}: ${d.msg}`).join("; ");
  return detail || `HTTP ${status}`;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

// ---- samples -------------------------------------------------------------

async function loadStrip(start) {
  state.stripStart = Math.max(0, start);
  const { samples } = await api(`/api/samples?start=${state.stripStart}&count=${STRIP_SIZE}`);
  const strip = $("strip");
  strip.replaceChildren(...samples.map((sample) => {
    const figure = document.createElement("figure");
    figure.dataset.index = sample.index;
    figure.innerHTML = `<img alt="sample ${sample.index}"><figcaption>#${sample.index}</figcaption>`;
    figure.querySelector("img").src = sample.image;
    figure.addEventListener("click", () => selectSample(sample.index));
    return figure;
  }));
  markSelectedSample();
}

function markSelectedSample() {
  for (const figure of $("strip").children) {
    figure.classList.toggle("selected", Number(figure.dataset.index) === state.sample);
  }
}

function selectSample(index) {
  state.sample = index;
  $("goto").value = index;
  markSelectedSample();
  render();
}

// ---- concepts --------------------------------------------------------------

function buildPalette() {
  $("palette").replaceChildren(...state.concepts.map((concept, i) => {
    const button = document.createElement("button");
    button.className = "concept";
    button.setAttribute("role", "radio");
    button.dataset.name = concept.name;
    button.title = `${concept.n_units} units of ${concept.layer} (${concept.origin})`;
    button.innerHTML = `<span class="swatch"></span><span></span><small></small>`;
    button.querySelector(".swatch").style.background = color(i);
    button.children[1].textContent = concept.name;
    button.querySelector("small").textContent = `${concept.layer} · ${concept.n_units}`;
    button.addEventListener("click", () => selectConcept(i));
    return button;
  }));
  selectConcept(0);
}

function selectConcept(i) {
  state.concept = i;
  [...$("palette").children].forEach((b, j) => b.setAttribute("aria-checked", String(i === j)));
}

function color(i) { return COLORS[i % COLORS.length]; }
function mode() { return document.querySelector('input[name="mode"]:checked').value; }

// ---- brush -----------------------------------------------------------------

function imagePoint(event) {
  const rect = $("stage").getBoundingClientRect();
  const R = state.info.resolution;
  return { x: (event.clientX - rect.left) / rect.width * R, y: (event.clientY - rect.top) / rect.height * R };
}

function brushRadius() { return Number($("brush").value) / 2; }

function startStroke(event) {
  if (event.button !== 0 || !state.info) return;
  if (state.strokes.length >= state.info.max_strokes) {
    setStatus(`At most ${state.info.max_strokes} strokes: undo or reset to paint more.`, true);
    return;
  }
  const R = state.info.resolution;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = R;
  const ctx = canvas.getContext("2d");
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = 2 * brushRadius();
  state.drawing = { canvas, ctx, last: imagePoint(event) };
  $("stage").setPointerCapture(event.pointerId);
  paintTo(state.drawing.last);
}

function paintTo(point) {
  const { ctx, last } = state.drawing;
  ctx.beginPath();
  ctx.moveTo(last.x, last.y);
  ctx.lineTo(point.x, point.y);
  ctx.stroke();
  ctx.beginPath();
  ctx.arc(point.x, point.y, brushRadius(), 0, 2 * Math.PI);
  ctx.fill();
  state.drawing.last = point;
  drawOverlay(state.drawing.canvas);
}

function finishStroke() {
  const drawing = state.drawing;
  state.drawing = null;
  const R = state.info.resolution;
  const alpha = drawing.ctx.getImageData(0, 0, R, R).data;
  const pixels = new Uint8Array(R * R);
  for (let i = 0; i < pixels.length; i++) pixels[i] = alpha[4 * i + 3] >= 128 ? 1 : 0;
  const m = mode();
  state.strokes.push({
    mode: m, concept: m === "erase" ? null : state.concepts[state.concept].name,
    colorIndex: state.concept, strength: m === "erase" ? 1 : Number($("strength").value),
    mask: packMask(pixels), pixels,
  });
  state.redo = [];
  changed();
}

// R x R 0/1 pixels -> base64, 8 pixels a byte, most significant bit first.
function packMask(pixels) {
  const bytes = new Uint8Array(Math.ceil(pixels.length / 8));
  pixels.forEach((p, i) => { if (p) bytes[i >> 3] |= 0x80 >> (i & 7); });
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function moveCursor(event) {
  const rect = $("stage").getBoundingClientRect();
  const diameter = 2 * brushRadius() * rect.width / state.info.resolution;
  Object.assign($("cursor").style, {
    display: "block", width: `${diameter}px`, height: `${diameter}px`,
    left: `${event.clientX - rect.left - diameter / 2}px`, top: `${event.clientY - rect.top - diameter / 2}px`,
  });
}

// ---- overlay: every stroke in order, each concept in its color -------------

function drawOverlay(pending) {
  const R = state.info.resolution;
  const overlay = $("overlay");
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, R, R);
  for (const stroke of state.strokes) {
    ctx.globalCompositeOperation = stroke.mode === "erase" ? "destination-out" : "source-over";
    ctx.drawImage(strokeImage(stroke), 0, 0);
  }
  if (pending) {
    const live = document.createElement("canvas");
    live.width = live.height = R;
    const liveCtx = live.getContext("2d");
    liveCtx.drawImage(pending, 0, 0);
    liveCtx.globalCompositeOperation = "source-in";
    liveCtx.fillStyle = mode() === "erase" ? "#fff" : color(state.concept);
    liveCtx.fillRect(0, 0, R, R);
    ctx.globalCompositeOperation = mode() === "erase" ? "destination-out" : "source-over";
    ctx.drawImage(live, 0, 0);
  }
  ctx.globalCompositeOperation = "source-over";
}

// A stroke's mask in its concept's color; 'remove' strokes are striped.
function strokeImage(stroke) {
  if (stroke.image) return stroke.image;
  const R = state.info.resolution;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = R;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(R, R);
  const rgb = hexToRgb(stroke.mode === "erase" ? "#ffffff" : color(stroke.colorIndex));
  const stripe = Math.max(1, Math.round(R / 32));
  stroke.pixels.forEach((on, i) => {
    if (!on) return;
    const dark = stroke.mode === "remove" && Math.floor(((i % R) + Math.floor(i / R)) / stripe) % 2 === 1;
    image.data.set(dark ? [0, 0, 0, 255] : [...rgb, 255], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
  stroke.image = canvas;
  return canvas;
}

function hexToRgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

// ---- history -----------------------------------------------------------------

function undo() { if (state.strokes.length) { state.redo.push(state.strokes.pop()); changed(); } }
function redo() { if (state.redo.length) { state.strokes.push(state.redo.pop()); changed(); } }
function reset() { state.strokes = []; state.redo = []; changed(); }

function changed() {
  drawOverlay();
  $("undo").disabled = !state.strokes.length;
  $("redo").disabled = !state.redo.length;
  $("reset").disabled = !state.strokes.length;
  render();
}

// ---- rendering: one request at a time; the newest stroke list wins --------------

async function render() {
  if (state.rendering) { state.stale = true; return; }
  state.rendering = true;
  document.body.dataset.busy = "1";
  try {
    do {
      state.stale = false;
      const sample = state.sample;
      const strokes = state.strokes.map(({ mode, concept, strength, mask }) => ({ mode, concept, strength, mask }));
      const started = performance.now();
      try {
        const data = await api("/api/render", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ sample, strokes }),
        });
        if (!state.stale) showImage(data, performance.now() - started);
      } catch (error) {
        if (!state.stale) setStatus(error.message, true);
      }
    } while (state.stale);
  } finally {
    state.rendering = false;
    document.body.dataset.busy = "0";
  }
}

function showImage(data, milliseconds) {
  const output = $("output");
  output.src = data.image;
  output.dataset.sample = data.sample;
  output.dataset.strokes = data.strokes;
  $("download").href = data.image;
  $("download").download = `ganpaint-sample${data.sample}-${data.strokes}strokes.png`;
  setStatus(`Sample #${data.sample}, ${data.strokes} stroke${data.strokes === 1 ? "" : "s"}: ` +
            `rendered in ${Math.round(milliseconds)} ms.`);
}

// ---- wiring ------------------------------------------------------------------

function wire() {
  const stage = $("stage");
  stage.addEventListener("pointerdown", startStroke);
  stage.addEventListener("pointermove", (event) => {
    moveCursor(event);
    if (state.drawing) paintTo(imagePoint(event));
  });
  stage.addEventListener("pointerup", () => { if (state.drawing) finishStroke(); });
  stage.addEventListener("pointercancel", () => { state.drawing = null; drawOverlay(); });
  stage.addEventListener("pointerleave", () => { $("cursor").style.display = "none"; });

  $("strength").addEventListener("input", () => { $("strength-value").value = Number($("strength").value).toFixed(2); });
  $("brush").addEventListener("input", () => { $("brush-value").value = `${$("brush").value} px`; });
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("reset").addEventListener("click", reset);
  $("show-overlay").addEventListener("change", (e) => $("overlay").classList.toggle("hidden", !e.target.checked));
  $("prev").addEventListener("click", () => loadStrip(state.stripStart - STRIP_SIZE).catch(showError));
  $("next").addEventListener("click", () => loadStrip(state.stripStart + STRIP_SIZE).catch(showError));
  $("random").addEventListener("click", () => loadStrip(Math.floor(Math.random() * 1e6)).catch(showError));
  $("go").addEventListener("click", goToSample);
  $("goto").addEventListener("keydown", (e) => { if (e.key === "Enter") goToSample(); });
  document.addEventListener("keydown", (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.target.tagName === "INPUT") return;
    const key = e.key.toLowerCase();
    if (key === "z" && !e.shiftKey) { e.preventDefault(); undo(); }
    if ((key === "z" && e.shiftKey) || key === "y") { e.preventDefault(); redo(); }
  });
}

function goToSample() {
  const index = Number($("goto").value);
  if (!Number.isInteger(index) || index < 0) { setStatus("A sample number is a whole number >= 0.", true); return; }
  loadStrip(index).then(() => selectSample(index)).catch(showError);
}

function showError(error) { setStatus(error.message, true); }

async function start() {
  wire();
  state.info = await api("/api/info");
  state.concepts = await api("/api/concepts");
  const R = state.info.resolution;
  $("overlay").width = $("overlay").height = R;
  $("stage").classList.toggle("pixelated", R < 256);
  $("brush").max = Math.max(2, Math.round(R / 3));
  $("brush").value = Math.max(1, Math.round(R / 10));
  $("brush").dispatchEvent(new Event("input"));
  buildPalette();
  changed();
  await loadStrip(0);
}

start().catch(showError);

// cardcam's page: polls /api/status (4 times a second), reloads the two pictures when a new frame
// was classified, and sends drawings to /api/predict. Plain JavaScript, no libraries, works offline.
"use strict";
const $ = (id) => document.getElementById(id);
const POLL_MS = 250;
let lastFrames = -1, lastSha = null, picturesBusy = false;

function pct(p) { return p == null ? "" : (100 * p).toFixed(1) + "%"; }

function drawBars(el, labels, probs) {
  if (el.dataset.labels !== labels.join("\u0000")) {
    el.dataset.labels = labels.join("\u0000");
    el.replaceChildren();
    for (const label of labels) {
      const name = document.createElement("span"); name.textContent = label;
      const track = document.createElement("div"); track.className = "track";
      const fill = document.createElement("div"); fill.className = "fill"; track.append(fill);
      const value = document.createElement("span"); value.className = "pct";
      el.append(name, track, value);
    }
  }
  const fills = el.querySelectorAll(".fill"), values = el.querySelectorAll(".pct");
  labels.forEach((label, i) => {
    const p = probs ? probs[label] : 0;
    fills[i].style.width = (100 * (p || 0)).toFixed(1) + "%";
    values[i].textContent = probs ? pct(p) : "";
  });
}

function loadPicture(img, url) {
  return new Promise((resolve) => {
    const next = new Image();
    next.onload = () => { img.src = next.src; resolve(); };
    next.onerror = () => resolve();
    next.src = url;
  });
}

async function refreshPictures(frames) {
  if (picturesBusy) return;
  picturesBusy = true;
  try {
    await Promise.all([loadPicture($("frame-img"), "api/image/frame.png?n=" + frames),
                       loadPicture($("input-img"), "api/image/input.png?n=" + frames)]);
  } finally { picturesBusy = false; }
}

function showStatus(s) {
  const state = $("state");
  state.textContent = s.state;
  state.className = "badge " + (s.state === "running" ? "running" : /fault/.test(s.state) ? "fault" : "");
  $("fps").textContent = s.fps == null ? "–" : s.fps.toFixed(1);
  $("frames").textContent = s.frames;
  $("live-label").textContent = s.label == null ? "–" : s.label;
  $("live-detail").textContent = s.label != null ? pct(s.confidence) + " (smoothed)"
    : s.camera_error || s.model_error || (s.reason ? "no card (" + s.reason + ")" : "no card");
  drawBars($("live-bars"), s.labels, s.probabilities);
  const leds = $("leds");
  leds.replaceChildren(...Object.entries(s.leds || {}).map(([label, on]) => {
    const led = document.createElement("span"); led.className = "led" + (on ? " on" : "");
    led.textContent = "LED " + label; return led;
  }));
  $("runtime").textContent = s.runtime || "–";
  if (s.frames !== lastFrames) { lastFrames = s.frames; refreshPictures(s.frames); }
  if (s.model_sha256 !== lastSha) { lastSha = s.model_sha256; loadModel(); }
}

async function loadModel() {
  const r = await fetch("api/model", { cache: "no-store" });
  if (!r.ok) return;
  const m = await r.json(), p = m.provenance || {};
  $("model-name").textContent = m.name;
  $("model-task").textContent = m.task + " (labels " + m.labels.join(", ") + ")";
  $("model-arch").textContent = (m.arch || "?") + ", input " + m.input_shape.join("×");
  $("model-trained").textContent = [p.trainer && p.trainer + " trainer", p.date, p.command].filter(Boolean).join(" · ") || "–";
  $("model-data").textContent = p.data || "–";
  const acc = [p.val_accuracy != null && "validation " + pct(p.val_accuracy),
               p.val_camera_accuracy != null && "camera-simulated " + pct(p.val_camera_accuracy),
               m.tflite && m.tflite.validation && "int8 agreement " + pct(m.tflite.validation.top1_agreement)];
  $("model-accuracy").textContent = acc.filter(Boolean).join(" · ") || "–";
  $("model-sha").textContent = (m.weights_sha256 || "").slice(0, 16);
}

async function poll() {
  try {
    const r = await fetch("api/status", { cache: "no-store" });
    showStatus(await r.json());
    setTimeout(poll, POLL_MS);
  } catch (e) {
    $("state").textContent = "disconnected";
    $("state").className = "badge fault";
    setTimeout(poll, 1000);
  }
}

// --- drawing: dark ink on white paper, like a card, so it goes through the same preprocessing ---
const canvas = $("canvas"), pen = canvas.getContext("2d");
let drawing = false;

function clearCanvas() {
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, canvas.width, canvas.height);
  $("draw-label").textContent = "–";
  $("draw-detail").textContent = "draw with a finger or the mouse";
  $("draw-input").hidden = true;
  drawBars($("draw-bars"), [], null);
}

function at(e) {
  const box = canvas.getBoundingClientRect();
  return [(e.clientX - box.left) * canvas.width / box.width, (e.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (e) => {
  drawing = true;
  canvas.setPointerCapture(e.pointerId);
  pen.lineWidth = canvas.width / 14;
  pen.lineCap = pen.lineJoin = "round";
  pen.strokeStyle = "#111";
  const [x, y] = at(e);
  pen.beginPath(); pen.moveTo(x, y); pen.lineTo(x, y); pen.stroke();
  e.preventDefault();
});
canvas.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  for (const p of (e.getCoalescedEvents ? e.getCoalescedEvents() : [e])) {
    const [x, y] = at(p.clientX === undefined ? e : p);
    pen.lineTo(x, y);
  }
  pen.stroke();
  e.preventDefault();
});
for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { drawing = false; });

async function classify() {
  const button = $("classify");
  button.disabled = true;
  $("draw-detail").textContent = "classifying…";
  try {
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const r = await fetch("api/predict", { method: "POST", headers: { "Content-Type": "image/png" }, body: blob });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || r.statusText);
    $("draw-label").textContent = answer.label == null ? "–" : answer.label;
    $("draw-detail").textContent = answer.label == null ? "nothing to read (" + answer.reason + ")"
      : pct(answer.confidence) + " · " + answer.model + " · " + answer.ms.toFixed(1) + " ms";
    $("draw-input").src = answer.input_png;
    $("draw-input").hidden = false;
    const labels = answer.probabilities ? Object.keys(answer.probabilities) : [];
    drawBars($("draw-bars"), labels, answer.probabilities);
  } catch (e) {
    $("draw-label").textContent = "!";
    $("draw-detail").textContent = String(e.message || e);
  } finally { button.disabled = false; }
}

$("classify").addEventListener("click", classify);
$("clear").addEventListener("click", clearCanvas);

// --- teach panel: only when the appliance's teach mode is on (GET api/teach answers) ---
const TEACH_MS = 2000;
let teachShown = "";

function teachButton(text, kind, label, action) {
  const b = document.createElement("button");
  b.type = "button"; b.className = "secondary " + kind; b.textContent = text; b.dataset.label = label;
  b.addEventListener("click", action);
  return b;
}

function showTeach(t) {
  $("teach").hidden = false;
  const shown = JSON.stringify([t.labels, t.counts, t.thumbnails]);
  if (shown === teachShown) return;
  teachShown = shown;
  $("teach-labels").replaceChildren(...t.labels.map((label) => {
    const row = document.createElement("div"); row.className = "teach-row"; row.dataset.label = label;
    const name = document.createElement("span"); name.className = "label"; name.textContent = label;
    const count = document.createElement("span"); count.className = "count";
    count.textContent = t.counts[label] + (t.counts[label] === 1 ? " example" : " examples");
    const thumbs = document.createElement("span"); thumbs.className = "thumbs";
    for (const url of t.thumbnails[label]) {
      const img = document.createElement("img"); img.className = "pixels"; img.alt = ""; img.src = url;
      thumbs.append(img);
    }
    const url = "api/teach/example?label=" + encodeURIComponent(label);
    row.append(name, count, thumbs,
               teachButton("camera", "camera", label, () => teachPress(url, "")),
               teachButton("drawing", "drawing", label,
                           async () => teachPress(url, await new Promise((r) => canvas.toBlob(r, "image/png")))));
    return row;
  }));
}

async function loadTeach() {
  try {
    const r = await fetch("api/teach", { cache: "no-store" });
    if (r.ok) showTeach(await r.json()); else $("teach").hidden = true;
  } catch (e) { /* the status poll says the appliance is gone */ }
  setTimeout(loadTeach, TEACH_MS);
}

async function teachPress(url, body) {
  const buttons = document.querySelectorAll("#teach button");
  buttons.forEach((b) => { b.disabled = true; });
  const message = $("teach-message");
  message.className = "detail"; message.textContent = "…";
  try {
    const headers = body ? { "Content-Type": "image/png" } : {};
    const r = await fetch(url, { method: "POST", headers, body });
    const answer = await r.json();
    message.textContent = r.ok ? answer.message : answer.error;
    message.className = "detail" + (r.ok ? "" : " refused");
    if (r.ok) showTeach(answer);
  } catch (e) {
    message.textContent = String(e.message || e); message.className = "detail refused";
  } finally { buttons.forEach((b) => { b.disabled = false; }); }
}

$("learn").addEventListener("click", () => teachPress("api/teach/learn", ""));
$("undo").addEventListener("click", () => teachPress("api/teach/undo", ""));
clearCanvas();
poll();
loadTeach();

"use strict";
// The imgcls page: upload an image, or draw a digit (1-channel models), and show the top classes from POST /predict;
// a multi-label model's answer also names its label set (every label over its threshold), whose bars are marked; an
// abstaining model's its answer or "unknown"; with "why?" ticked, the heatmap of where the model looked.

const $ = (id) => document.getElementById(id);
const DIGIT_BOX = 20; // MNIST digits fit a 20x20 box centred by mass in 28x28; drawings are made to look the same
let inputSize = [1, 28, 28];

async function loadModel() {
  try {
    const response = await fetch("/model");
    const model = await response.json();
    inputSize = model.input_size;
    const [c, h, w] = inputSize;
    $("model-info").textContent =
      `${model.name} · ${model.classes.length} ${model.multi_label ? "labels (multi-label)" : "classes"} · ` +
      `${c === 1 ? "greyscale" : "colour"} ${w}×${h} input`;
    $("draw").hidden = !model.drawing;
  } catch (e) {
    $("model-info").textContent = `cannot reach the model: ${e}`;
  }
}

async function predict(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  $("error").hidden = true;
  try {
    const why = $("why").checked;
    const response = await fetch(why ? "/predict?explain=true" : "/predict", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || response.statusText);
    showResults(body.predictions, body.labels, body.label);
    $("why-overlay").hidden = !body.explanation;
    if (body.explanation) $("why-overlay").src = body.explanation.overlay;
  } catch (e) {
    $("results").replaceChildren();
    $("label-set").hidden = true;
    $("why-overlay").hidden = true;
    $("error").textContent = String(e.message || e);
    $("error").hidden = false;
  }
}

function showResults(predictions, chosen, answer) {
  const multi = Array.isArray(chosen);
  $("label-set").hidden = !multi && answer === undefined;
  if (multi) $("label-set").textContent = chosen.length ? `labels: ${chosen.join(" + ")}` : "no label over its threshold";
  else if (answer !== undefined) $("label-set").textContent = answer === "unknown" ? "unknown: no class is sure enough" : `answer: ${answer}`;
  $("results").classList.toggle("multi", multi);
  const items = predictions.map(({ label, probability }) => {
    const li = document.createElement("li");
    li.dataset.label = label;
    if (multi && chosen.includes(label)) li.classList.add("chosen");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(probability * 100).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = `${(probability * 100).toFixed(1)}%`;
    li.append(name, bar, value);
    return li;
  });
  $("results").replaceChildren(...items);
}

// --- upload -------------------------------------------------------------------------------------

function upload(file) {
  if (!file) return;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  predict(file, file.name);
}

$("file").addEventListener("change", (e) => upload(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  upload(e.dataTransfer.files[0]);
});

// --- drawing ------------------------------------------------------------------------------------

const canvas = $("canvas");
const pen = canvas.getContext("2d", { willReadFrequently: true });

function clearCanvas() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, canvas.width, canvas.height);
  $("results").replaceChildren();
  $("label-set").hidden = true;
  $("why-overlay").hidden = true;
}

let drawing = false;
function point(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * (canvas.width / r.width), (e.clientY - r.top) * (canvas.height / r.height)];
}
canvas.addEventListener("pointerdown", (e) => {
  drawing = true;
  canvas.setPointerCapture(e.pointerId);
  const [x, y] = point(e);
  pen.beginPath();
  pen.moveTo(x, y);
  pen.lineTo(x, y);
  pen.stroke();
});
canvas.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const [x, y] = point(e);
  pen.lineTo(x, y);
  pen.stroke();
});
for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { drawing = false; });

// The drawing as MNIST made its digits: white on black, the ink's bounding box scaled into a 20x20 box,
// then shifted so its centre of mass is the centre of the image. Returns null for an empty canvas.
function digitImage() {
  const { width, height } = canvas;
  const ink = pen.getImageData(0, 0, width, height).data;
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (ink[(y * width + x) * 4] > 0) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return null;
  const [, h, w] = inputSize;
  const side = Math.min(h, w);
  const box = Math.round(side * DIGIT_BOX / 28);
  const scale = box / Math.max(x1 - x0 + 1, y1 - y0 + 1);
  const dw = (x1 - x0 + 1) * scale, dh = (y1 - y0 + 1) * scale;
  const fitted = blankCanvas(w, h);
  const ctx = fitted.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(canvas, x0, y0, x1 - x0 + 1, y1 - y0 + 1, (w - dw) / 2, (h - dh) / 2, dw, dh);
  const pixels = ctx.getImageData(0, 0, w, h).data;
  let mass = 0, mx = 0, my = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = pixels[(y * w + x) * 4];
      mass += v; mx += v * (x + 0.5); my += v * (y + 0.5);
    }
  }
  const out = blankCanvas(w, h);
  out.getContext("2d").drawImage(fitted, Math.round(w / 2 - mx / mass), Math.round(h / 2 - my / mass));
  return out;
}

function blankCanvas(w, h) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  return c;
}

$("predict-drawing").addEventListener("click", () => {
  const digit = digitImage();
  if (!digit) {
    $("error").textContent = "draw something first";
    $("error").hidden = false;
    return;
  }
  digit.toBlob((blob) => predict(blob, "drawing.png"), "image/png");
});
$("clear").addEventListener("click", clearCanvas);

pen.lineWidth = 20; // about MNIST's stroke once the digit is scaled into its 20 px box
pen.lineCap = "round";
pen.lineJoin = "round";
pen.strokeStyle = "#fff";
clearCanvas();
loadModel();

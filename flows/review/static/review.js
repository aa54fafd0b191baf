// Sam2Rad review station page: worklist, viewer (canvas), corrections. No build step.
"use strict";
const csrf = JSON.parse(document.querySelector('meta[name="review-csrf"]').content);
const $ = (id) => document.getElementById(id);
const S = {run: null, items: [], edit: null, info: null, frame: 1, image: null, mask: null, maskData: null,
           prompts: [], box: null, busy: false};

function say(text, error) { const m = $("message"); m.textContent = text; m.className = error ? "error" : ""; }

async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", body: JSON.stringify(body),
    headers: {"Content-Type": "application/json", "X-Review-CSRF": csrf}};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) { const d = data.detail; throw new Error(typeof d === "string" ? d : JSON.stringify(d)); }
  return data;
}

async function loadRuns() {
  const {runs} = await api("/api/runs");
  $("run").innerHTML = runs.map((r) => `<option>${r}</option>`).join("");
  S.run = runs[0] || null;
  if (!S.run) say("no nightly runs found under --runs", true);
  await loadWorklist();
}

async function loadWorklist() {
  if (!S.run) return;
  const w = await api(`/api/runs/${encodeURIComponent(S.run)}/worklist?status=${$("filter").value}`);
  S.items = w.items;
  $("progress").textContent = `reviewed ${w.progress.reviewed} / to do ${w.progress.to_do}` +
    ` (needs review: ${w.progress.needs_review})`;
  $("worklist").innerHTML = w.items.map((i) => `<tr class="item" data-sop="${i.sop_uid}">
    <td title="${i.sop_uid}">…${i.sop_uid.slice(-12)}</td><td title="${i.confidence_floor == null ? "" : "low under " + i.confidence_floor.toFixed(2)}">${i.confidence == null ? "" : i.confidence.toFixed(2)}</td>
    <td class="flag">${i.reasons.join(", ")}</td><td class="${i.status}">${i.status}</td></tr>`).join("");
  for (const tr of document.querySelectorAll("tr.item")) tr.onclick = () => openInstance(tr.dataset.sop);
}

async function openInstance(sop) {
  say("opening…");
  const info = await api(`/api/runs/${encodeURIComponent(S.run)}/instances/${encodeURIComponent(sop)}/open`, {});
  S.edit = info.edit_id; S.info = info; S.frame = 1;
  for (const tr of document.querySelectorAll("tr.item")) tr.classList.toggle("current", tr.dataset.sop === sop);
  $("viewer").hidden = false;
  $("title").textContent = `instance …${sop.slice(-16)} (${info.n_frames} frame${info.n_frames > 1 ? "s" : ""})`;
  $("spacing").textContent = info.spacing_mm ? `pixel spacing ${info.spacing_mm[0].toFixed(3)} × ${info.spacing_mm[1].toFixed(3)} mm`
                                             : "uncalibrated (pixels)";
  $("frame").max = info.n_frames; $("frame").value = 1;
  const scale = Math.max(1, Math.min(3, Math.floor(720 / info.cols)));
  const view = $("view"); view.width = info.cols; view.height = info.rows;
  view.style.width = `${info.cols * scale}px`; view.style.height = `${info.rows * scale}px`;
  await showFrame(1);
  say(`opened; ${info.item.reasons.length ? "needs review: " + info.item.reasons.join(", ") : "no flags"}`);
}

function loadImage(src) {
  return new Promise((ok, fail) => { const im = new Image(); im.onload = () => ok(im); im.onerror = fail; im.src = src; });
}

async function showFrame(n) {
  S.frame = n; $("frame").value = n; $("frame-label").textContent = `${n} / ${S.info.n_frames}`;
  const [image, mask] = await Promise.all([
    loadImage(`/api/edits/${S.edit}/frames/${n}/image`), api(`/api/edits/${S.edit}/frames/${n}/mask`)]);
  S.image = image;
  await setMask(mask);
  api(`/api/edits/${S.edit}/warm`, {frame: n}).catch(() => {});  // encode now: clicks then decode only
}

async function setMask(m) {
  const im = await loadImage("data:image/png;base64," + m.mask_png);
  const c = document.createElement("canvas"); c.width = im.width; c.height = im.height;
  const g = c.getContext("2d"); g.drawImage(im, 0, 0);
  S.maskData = g.getImageData(0, 0, c.width, c.height);
  S.prompts = m.prompts; S.box = m.box;
  const el = $("mask-pixels"); el.textContent = m.pixels; el.dataset.pixels = m.pixels;
  el.dataset.corrections = m.corrections; el.dataset.frame = m.frame;
  $("mode").textContent = m.mode === "manual" ? "manual (from scratch)" : "semi-automatic";
  $("undo").disabled = !m.can_undo; $("redo").disabled = !m.can_redo;
  draw();
}

window.reviewMaskAt = (x, y) => !!S.maskData && S.maskData.data[4 * (Math.round(y) * S.maskData.width + Math.round(x))] > 127;

function draw() {
  const view = $("view"), g = view.getContext("2d");
  if (!S.image) return;
  g.drawImage(S.image, 0, 0);
  const d = S.maskData, w = d.width, h = d.height, over = g.getImageData(0, 0, w, h);
  const alpha = $("opacity").value / 100, outline = $("outline").checked;
  const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && d.data[4 * (y * w + x)] > 127;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    if (!on(x, y)) continue;
    if (outline && on(x - 1, y) && on(x + 1, y) && on(x, y - 1) && on(x, y + 1)) continue;
    const k = 4 * (y * w + x), a = outline ? 1 : alpha;
    over.data[k] = over.data[k] * (1 - a) + 241 * a; over.data[k + 1] = over.data[k + 1] * (1 - a) + 214 * a;
    over.data[k + 2] = over.data[k + 2] * (1 - a) + 145 * a * 0.3;
  }
  g.putImageData(over, 0, 0);
  const pb = S.info.box;
  if ($("show-box").checked && pb && S.frame === 1) {
    g.setLineDash([4, 3]); g.strokeStyle = "#0cf"; g.strokeRect(pb[0], pb[1], pb[2] - pb[0], pb[3] - pb[1]); g.setLineDash([]);
  }
  if (S.box) { g.strokeStyle = "#ff0"; g.strokeRect(S.box[0], S.box[1], S.box[2] - S.box[0], S.box[3] - S.box[1]); }
  for (const p of S.prompts) {
    g.fillStyle = p.foreground ? "#0f0" : "#f33";
    if (p.end) { g.fillStyle = "#fa0"; g.fillRect(p.x - 1, p.y - 7, 3, 15); }  // an end click: a bar across the surface's end
    else if (p.edge) g.fillRect(p.x - 6, p.y - 1, 13, 3);  // an edge click: a bar along the edge it moved
    else if (p.shift) { g.fillRect(p.x - 6, p.y - 4, 13, 2); g.fillRect(p.x - 6, p.y + 2, 13, 2); }  // a shift: both edges
    else { g.beginPath(); g.arc(p.x, p.y, 3, 0, 7); g.fill(); }
  }
}

function imagePoint(ev) {
  const r = $("view").getBoundingClientRect();
  return [(ev.clientX - r.left) * S.info.cols / r.width, (ev.clientY - r.top) * S.info.rows / r.height];
}

async function correct(path, body) {
  if (S.busy) return;
  S.busy = true;
  try { await setMask(await api(`/api/edits/${S.edit}/${path}`, body)); say(""); }
  catch (e) { say(e.message, true); } finally { S.busy = false; }
}

let down = null;
$("view").addEventListener("contextmenu", (ev) => ev.preventDefault());
$("view").addEventListener("mousedown", (ev) => { down = {p: imagePoint(ev), button: ev.button, shift: ev.shiftKey}; });
$("view").addEventListener("mouseup", (ev) => {
  if (!down) return;
  const [x0, y0] = down.p, [x1, y1] = imagePoint(ev), bg = down.button === 2 || down.shift;
  down = null;
  if (Math.abs(x1 - x0) > 4 && Math.abs(y1 - y0) > 4) correct("box", {frame: S.frame, x0, y0, x1, y1});
  else correct("click", {frame: S.frame, x: Math.round(x0), y: Math.round(y0), foreground: !bg, edge: $("edge-tool").checked,
                                end: $("end-tool").checked, shift: $("shift-tool").checked});
});

const reader = () => { const r = $("reader").value.trim(); localStorage.setItem("sam2rad-reader", r); return r; };
async function decide(kind) {
  if (!S.edit) return;
  if (!reader()) { say("enter your name as reader first", true); $("reader").focus(); return; }
  try {
    const body = kind === "reject" ? {reader: reader(), reason: $("reason").value} : {reader: reader()};
    const r = await api(`/api/edits/${S.edit}/${kind}`, body);
    say(`${r.outcome}: ${r.message}${r.seg_sop_uid ? " (SEG " + r.seg_sop_uid + ")" : ""}`);
    S.edit = null; await loadWorklist();
  } catch (e) { say(e.message, true); }
}

function next() {
  const todo = S.items.filter((i) => i.status === "to-do");
  const current = S.info ? S.info.item.sop_uid : null;
  const after = todo.find((i) => i.sop_uid !== current);
  if (after) openInstance(after.sop_uid); else say("nothing left to do in this list");
}

$("undo").onclick = () => correct("undo", {frame: S.frame});
$("redo").onclick = () => correct("redo", {frame: S.frame});
$("scratch").onclick = () => correct("scratch", {frame: S.frame});
$("accept").onclick = () => decide("accept");
$("reject").onclick = () => decide("reject");
$("next").onclick = next;
$("frame").oninput = () => showFrame(Number($("frame").value));
$("opacity").oninput = draw; $("outline").onchange = draw; $("show-box").onchange = draw;
$("run").onchange = () => { S.run = $("run").value; loadWorklist(); };
$("filter").onchange = loadWorklist;
$("reader").value = localStorage.getItem("sam2rad-reader") || "";
document.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT" && ev.target.type === "text" || ev.target.tagName === "SELECT") return;
  const k = ev.key.toLowerCase();
  if ((ev.ctrlKey && k === "z") || k === "u") correct("undo", {frame: S.frame});
  else if ((ev.ctrlKey && k === "y")) correct("redo", {frame: S.frame});
  else if (k === "a") decide("accept");
  else if (k === "r") decide("reject");
  else if (k === "n") next();
  else if (k === "o") { $("outline").checked = !$("outline").checked; draw(); }
  else if (k === "e" || k === "x" || k === "w") pickTool({e: "edge-tool", x: "end-tool", w: "shift-tool"}[k], true);
  else if (S.info && ev.key === "ArrowRight" && S.frame < S.info.n_frames) showFrame(S.frame + 1);
  else if (S.info && ev.key === "ArrowLeft" && S.frame > 1) showFrame(S.frame - 1);
  else return;
  ev.preventDefault();
});
loadRuns().catch((e) => say(e.message, true));
// One tool at a time: edge, end and whole-surface clicks mean different things.
const TOOLS = ["edge-tool", "end-tool", "shift-tool"];
function pickTool(id, toggle) {
  const on = toggle ? !$(id).checked : $(id).checked;
  for (const t of TOOLS) $(t).checked = false;
  $(id).checked = on;
}
for (const t of TOOLS) $(t).addEventListener("change", () => pickTool(t, false));

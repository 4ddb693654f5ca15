"use strict";
const view = document.getElementById("view");
const keyInput = document.getElementById("key");
keyInput.value = sessionStorage.getItem("fdaKey") || "";
document.getElementById("save-key").onclick = () => { sessionStorage.setItem("fdaKey", keyInput.value.trim()); route(); };
let timer = null;
let generation = 0;  // bumped by every route(); a page whose data arrives after a newer route() drops it
const stale = (mine) => mine !== generation;

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + (sessionStorage.getItem("fdaKey") || ""), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body.detail || body.title || response.status);
  return body;
}
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
const statusCell = (s) => `<span class="status ${esc(s)}">${esc(s)}</span>`;
function fail(error) { view.innerHTML = `<p class="error" id="error">${esc(error.message)}</p>`; }

async function jobsPage() {
  const filter = new URLSearchParams(location.hash.split("?")[1] || "").get("status") || "";
  const mine = generation;
  const page = await api("/v1/merge-jobs?limit=50" + (filter ? "&status=" + encodeURIComponent(filter) : ""));
  if (stale(mine)) return;
  const options = ["", "queued", "running", "succeeded", "failed", "cancelled"]
    .map((s) => `<option ${s === filter ? "selected" : ""}>${s}</option>`).join("");
  view.innerHTML = `<h2>Jobs</h2><label>Status <select id="filter">${options}</select></label>
    <table id="jobs"><tr><th>Job</th><th>Method</th><th>Status</th><th>Stage</th><th>Progress</th><th>Created</th><th>Metadata</th></tr>
    ${page.data.map((j) => `<tr><td><a href="#/jobs/${j.id}">${j.id}</a></td><td>${esc(j.config.method)}</td>
      <td>${statusCell(j.status)}</td><td>${esc(j.stage)}</td><td><progress max="1" value="${j.progress}"></progress></td>
      <td>${esc(j.created_at)}</td><td class="muted">${esc(JSON.stringify(j.metadata))}</td></tr>`).join("")}</table>`;
  document.getElementById("filter").onchange = (e) => { location.hash = "#/jobs?status=" + e.target.value; };
  timer = setTimeout(() => route(), 2000);
}

function plot(title, series, yLabel) {
  // series: [{name, points: [[x, y], …]}] → an SVG line chart (no libraries: the page works offline)
  const all = series.flatMap((s) => s.points);
  if (!all.length) return "";
  const W = 520, H = 200, P = 36, xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys, 1e-9)];
  const sx = (x) => P + ((x - x0) / (x1 - x0)) * (W - 2 * P), sy = (y) => H - P - ((y - y0) / (y1 - y0)) * (H - 2 * P);
  const colours = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#9a6700", "#bf3989"];
  const lines = series.map((s, i) => `<polyline class="series" fill="none" stroke="${colours[i % 6]}" stroke-width="2"
      points="${s.points.map((p) => sx(p[0]) + "," + sy(p[1])).join(" ")}"/>
      <text x="${W - P + 4}" y="${14 + 14 * i}" fill="${colours[i % 6]}" font-size="11">${esc(s.name)}</text>`).join("");
  return `<h3>${esc(title)}</h3><svg class="plot" width="${W + 90}" height="${H}" role="img" aria-label="${esc(title)}">
    <line x1="${P}" y1="${H - P}" x2="${W - P}" y2="${H - P}" stroke="#999"/><line x1="${P}" y1="${P}" x2="${P}" y2="${H - P}" stroke="#999"/>
    <text x="${W / 2}" y="${H - 8}" font-size="11">layer</text><text x="4" y="${P - 10}" font-size="11">${esc(yLabel)}</text>
    <text x="4" y="${sy(y1) + 4}" font-size="10">${y1.toPrecision(3)}</text><text x="4" y="${sy(y0)}" font-size="10">${y0.toPrecision(3)}</text>
    ${lines}</svg>`;
}

function fdaPlots(metrics) {
  const layers = metrics.fda?.layers || [];
  if (!layers.length) return "";
  const tasks = layers[0].tasks.length, mean = (o) => { const v = Object.values(o || {}); return v.reduce((a, b) => a + b, 0) / (v.length || 1); };
  const cosines = [...Array(tasks).keys()].map((t) => ({ name: "task " + t, points: layers.map((l) => [l.layer, mean(l.tasks[t].cosines)]) }));
  const losses = [
    { name: "first epoch", points: layers.map((l) => [l.layer, l.adaptation.first_loss]) },
    { name: "last epoch", points: layers.map((l) => [l.layer, l.adaptation.last_loss]) },
  ];
  return plot("FDA construction: mean per-tensor cosine(g, τ)", cosines, "cosine") + plot("FDA adaptation loss", losses, "loss");
}

async function download(path, name) {
  // S3: the API answers with a presigned URL to navigate to (the bytes never pass through this page);
  // local storage: the API streams the file, which needs the key, so it is fetched here.
  const auth = { Authorization: "Bearer " + sessionStorage.getItem("fdaKey"), Accept: "application/json, */*" };
  const response = await fetch(path, { headers: auth });
  if (!response.ok) { alert("download failed: " + response.status); return; }
  if (response.headers.get("content-type")?.includes("application/json")) { location.href = (await response.json()).url; return; }
  const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(await response.blob()), download: name });
  link.click();
}

async function allEvents(id) {
  let events = [], after = null;
  for (let page = 0; page < 20; page++) {  // up to 2,000 events
    const batch = await api(`/v1/merge-jobs/${id}/events?limit=100` + (after ? "&after=" + after : ""));
    events = events.concat(batch.data);
    if (!batch.has_more) break;
    after = batch.next_cursor;
  }
  return events;
}

async function jobPage(rawId) {
  const id = encodeURIComponent(rawId);
  const mine = generation;
  const job = await api(`/v1/merge-jobs/${id}`);  // first: what follows is at least as new as its status
  const [events, artifacts, metrics] = await Promise.all([
    allEvents(id).then((data) => ({ data })), api(`/v1/merge-jobs/${id}/artifacts`), api(`/v1/merge-jobs/${id}/metrics`),
  ]);
  if (stale(mine)) return;
  const ended = ["succeeded", "failed", "cancelled"].includes(job.status);
  view.innerHTML = `<h2>${esc(job.id)} ${statusCell(job.status)}</h2>
    <p>Stage <b id="stage">${esc(job.stage)}</b> · attempt ${job.attempt}/${job.max_attempts} · <progress max="1" value="${job.progress}"></progress>
    ${ended ? "" : `<button id="cancel">Cancel</button>`}</p>
    ${job.error ? `<p class="error">${esc(job.error.code)}: ${esc(job.error.message)}</p>` : ""}
    <h3>Events</h3><div id="events">${events.data.map((e) => `<div>${esc(e.at)} ${esc(e.kind)} ${esc(e.message)}</div>`).join("")}</div>
    ${fdaPlots(metrics.metrics)}
    <h3>Metrics</h3><table id="metrics">${Object.entries(metrics.metrics.seconds || {}).map(([k, v]) => `<tr><th>${esc(k)} s</th><td>${v}</td></tr>`).join("")}
      ${(metrics.metrics.fda?.layers || []).map((l) => `<tr><th>${esc(l.block)}</th><td>${l.tasks.map((t, i) => `task ${i}: loss ${t.loss?.toFixed?.(4) ?? "–"}, ${t.steps ?? "–"} steps${t.cached ? " (cached)" : ""}`).join("<br>")}</td></tr>`).join("")}</table>
    <h3>Artifacts</h3><table id="artifacts">${artifacts.data.map((a) => `<tr><td>${esc(a.kind)}</td><td><a href="#" data-path="${esc(a.download)}" data-name="${esc(a.path.split("/").pop())}">${esc(a.path)}</a></td><td>${a.size} B</td><td class="muted">${esc(a.sha256.slice(0, 16))}…</td></tr>`).join("")}</table>`;
  view.querySelectorAll("#artifacts a").forEach((a) => { a.onclick = (e) => { e.preventDefault(); download(a.dataset.path, a.dataset.name); }; });
  const cancel = document.getElementById("cancel");
  if (cancel) cancel.onclick = async () => {
    try { await api(`/v1/merge-jobs/${id}/cancel`, { method: "POST" }); route(); } catch (error) { fail(error); }
  };
  if (!ended) timer = setTimeout(() => route(), 1000);
}

function newIdempotencyKey() {
  // one key per form: a double click or a retried request replays the same job instead of making two
  if (window.crypto?.randomUUID) return "dash-" + crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));  // plain http on another host: no randomUUID
  return "dash-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function submitPage() {
  const mine = generation;
  const example = await api("/v1/tenant/example-job");  // a config that runs on this stack, for this tenant
  if (stale(mine)) return;
  view.innerHTML = `<h2>Submit a merge</h2><p class="muted">The merge config as JSON (method, base_model, models, parameters, …).</p>
    <textarea id="config"></textarea>
    <p><button id="submit">Submit</button> <span id="result"></span></p>`;
  document.getElementById("config").value = JSON.stringify(example, null, 2);
  let idempotencyKey = newIdempotencyKey();
  document.getElementById("config").oninput = () => { idempotencyKey = newIdempotencyKey(); };  // a new body, a new key
  document.getElementById("submit").onclick = async () => {
    try {
      const job = await api("/v1/merge-jobs", {
        method: "POST", headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey },
        body: document.getElementById("config").value,
      });
      location.hash = "#/jobs/" + job.id;
    } catch (error) {
      const result = document.getElementById("result");  // gone if the user has moved on
      if (result) result.innerHTML = `<span class="error" id="error">${esc(error.message)}</span>`;
    }
  };
}

async function schedulesPage() {
  const mine = generation;
  const page = await api("/v1/schedules");
  if (stale(mine)) return;
  view.innerHTML = `<h2>Schedules</h2><table id="schedules"><tr><th>Name</th><th>Cron</th><th>Zone</th><th>Next</th><th>Paused</th><th>Overlap</th></tr>
    ${page.data.map((s) => `<tr><td>${esc(s.name)}</td><td>${esc(s.cron)}</td><td>${esc(s.timezone)}</td><td>${esc(s.next_fire_at)}</td><td>${s.paused}</td><td>${esc(s.overlap)}</td></tr>`).join("")}</table>`;
}

async function route() {
  clearTimeout(timer);
  const mine = ++generation;
  const hash = location.hash || "#/jobs";
  try {
    if (!sessionStorage.getItem("fdaKey")) { view.innerHTML = `<p id="need-key">Enter an API key above (fdamerge keys create, or the one fdamerge up printed).</p>`; return; }
    if (hash.startsWith("#/jobs/")) return await jobPage(hash.slice(7));
    if (hash.startsWith("#/submit")) return await submitPage();
    if (hash.startsWith("#/schedules")) return await schedulesPage();
    return await jobsPage();
  } catch (error) {
    if (stale(mine)) return;
    fail(error);
    if (hash.startsWith("#/jobs/")) timer = setTimeout(() => route(), 2000);  // a blip must not stop the live view
  }
}
window.addEventListener("hashchange", route);
route();

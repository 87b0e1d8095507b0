// The videoq operator console. Signs in by exchanging an API key for a session cookie
// (POST /v1/session), then reads the same routes as any client; the jobs, the figures and the
// charts all follow one stream, WS /v1/events?stats=1, through the browser client videoq.js.
// Every value is written as text (textContent), never as markup.

import { subscribeFeed } from "/static/videoq.js";
import * as charts from "/static/charts.js";
import { $, api, cell, hooks, seconds, show, state, toast, when, zoneLabel } from "/static/common.js";
import { act, closeJob, openJob, redrawJob } from "/static/job.js";

const STATUSES = ["queued", "scheduled", "running", "retrying", "awaiting_budget", "succeeded",
  "failed", "cancelled"];

// Signing in and out.
function signedOut(message) {
  state.session = null;
  state.feed?.close();
  state.jobFeed?.close();
  state.feed = state.jobFeed = null;
  $("who").textContent = "";
  $("sign-out").hidden = true;
  setLive("offline");
  $("signin-error").textContent = message || "";
  show("signin");
}
async function signIn(event) {
  event.preventDefault();
  const input = $("key");
  const key = input.value.trim();
  input.value = "";  // the key is not kept, not even in the form
  $("signin-error").textContent = "";
  try {
    state.session = await api("POST", "/v1/session", { api_key: key });
  } catch (error) {
    $("signin-error").textContent = error.status === 401
      ? `That key was not accepted (${error.message}). Check it, or create one with: videoq keys create --tenant NAME`
      : `Could not sign in: ${error.message}`;
    return;
  }
  start();
}
async function signOut() {
  try { await api("DELETE", "/v1/session"); } catch { /* the session is over either way */ }
  signedOut("Signed out.");
}

function setLive(text) {
  $("live").textContent = text;
  $("live").classList.toggle("live", text === "live");
}

function start() {
  const { tenant, admin } = state.session;
  $("who").textContent = `${tenant} · ${admin ? "admin key" : "tenant key"}`;
  $("sign-out").hidden = false;
  document.body.dataset.scope = admin ? "admin" : "tenant";
  $("workers-panel").hidden = !admin;
  $("clear-stale").hidden = !admin;
  state.feed = subscribeFeed({
    stats: true,
    onEvent: onFeed,
    onState: (s) => setLive(s === "open" ? "live" : s === "closed" ? "offline" : "reconnecting…"),
    onError: (error) => { if (error.code === 4401) signedOut("Your session ended: sign in again."); },
  });
  route();
}

// The board: jobs, figures, charts, workers.
function onFeed(message) {
  if (message.type === "stats") {
    state.stats = message;
    drawFigures();
    return;
  }
  if (!message.job_id) return;  // a user's feed changed: not shown here
  const job = state.jobs.get(message.job_id);
  if (job && message.type !== "snapshot") {
    Object.assign(job, { status: message.status, stage: message.stage, progress: message.progress });
    drawJobs();
  }
  if (!job || message.type === "status") reloadSoon();
}
function reloadSoon() {  // at most one reload a second, however many events arrive
  if (reloadSoon.timer) return;
  reloadSoon.timer = setTimeout(() => { reloadSoon.timer = null; loadJobs(); }, 1000);
}
async function loadJobs() {
  const status = $("filter-status").value;
  const query = new URLSearchParams({ limit: "50" });
  if (status) query.set("status", status);
  try {
    const page = await api("GET", `/v1/jobs?${query}`);
    state.jobs = new Map(page.data.map((job) => [job.id, job]));
    drawJobs();
  } catch (error) {
    if (error.status !== 401) toast(`Jobs: ${error.message}`);
  }
}
function drawJobs() {
  const body = $("jobs");
  body.replaceChildren();
  const filter = $("filter-status").value;
  const rows = [...state.jobs.values()].filter((j) => !filter || j.status === filter);
  for (const job of rows) {
    const row = body.insertRow();
    row.dataset.id = job.id;
    row.dataset.status = job.status;
    const link = document.createElement("a");
    link.href = `#/jobs/${job.id}`;
    link.className = "id";
    link.textContent = job.id;
    row.insertCell().append(link);
    cell(row, job.brief?.product_name);
    cell(row, job.status, `status-${job.status}`);
    cell(row, job.stage);
    cell(row, `${Math.round(job.progress || 0)} %`, "num");
    cell(row, when(job.created_at));
  }
  $("jobs-empty").textContent = rows.length ? "" : "No jobs here yet.";
  $("retry-failed").disabled = ![...state.jobs.values()].some((j) => j.status === "failed")
    && !(state.stats?.counts?.failed > 0);
}
function figure(name, label, value) {
  const box = document.createElement("div");
  box.className = "figure";
  box.dataset.figure = name;
  const number = document.createElement("b");
  number.textContent = String(value);
  const caption = document.createElement("span");
  caption.textContent = label;
  box.append(number, caption);
  return box;
}
function drawFigures() {
  const s = state.stats;
  const boxes = ["queued", "running", "retrying", "scheduled", "succeeded", "failed", "cancelled"]
    .map((status) => figure(status, status, s.counts[status] ?? 0));
  boxes.push(figure("oldest_queued", "oldest queued", seconds(s.oldest_queued_age_s)));
  if (s.queue_length !== undefined) boxes.push(figure("queue_length", "in the queue", s.queue_length));
  if (s.workers) boxes.push(figure("workers", "live workers", s.workers.filter((w) => w.alive).length));
  $("figures").replaceChildren(...boxes);
  $("figures-scope").textContent = `${s.workers ? "Your tenant's jobs, the queue and the workers" : "Your tenant's jobs"}, as of ${when(s.ts)} (${zoneLabel()}); live, every 5 s.`;
  $("figures").dataset.ts = s.ts;
  const minute = (iso) => when(iso, { date: false, seconds: false });
  charts.throughput($("chart-throughput"), s.last_hour, minute);
  charts.waits($("chart-wait"), s.last_hour, minute);
  if (s.workers) drawWorkers(s.workers);
  drawJobs();
}
function drawWorkers(workers) {
  const body = $("workers");
  body.replaceChildren();
  for (const w of workers) {
    const row = body.insertRow();
    row.dataset.worker = w.id;
    cell(row, w.id, "id");
    cell(row, w.alive ? "alive" : "stale", w.alive ? "status-succeeded" : "status-failed");
    cell(row, (w.jobs || []).length, "num");
    cell(row, w.max_jobs, "num");
    cell(row, Object.entries(w.counts || {}).map(([k, v]) => `${k} ${v}`).join(" · "));
    cell(row, when(w.last_heartbeat));
  }
  $("clear-stale").disabled = !workers.some((w) => !w.alive);
}
async function retryFailed() {
  const button = $("retry-failed");
  button.disabled = true;
  let retried = 0, refused = 0, cursor = null;
  try {
    do {
      const query = new URLSearchParams({ status: "failed", limit: "100" });
      if (cursor) query.set("cursor", cursor);
      const page = await api("GET", `/v1/jobs?${query}`);
      for (const job of page.data) {
        try { await api("POST", `/v1/jobs/${job.id}/retry`); retried++; } catch { refused++; }
      }
      cursor = page.next_cursor;
    } while (cursor);
    toast(`Retried ${retried} failed job${retried === 1 ? "" : "s"}${refused ? `, ${refused} refused` : ""}.`);
  } catch (error) {
    toast(`Retry all failed: ${error.message}`);
  }
  loadJobs();
}
async function clearStale() {
  try {
    const { removed } = await api("POST", "/v1/workers/clear-stale");
    toast(`Removed ${removed.length} stale worker${removed.length === 1 ? "" : "s"}.`);
  } catch (error) {
    toast(`Clear stale workers: ${error.message}`);
  }
}

// Routes: #/ (the board) and #/jobs/<id> (a job). No key ever goes in the address.
function route() {
  if (!state.session) return;
  const match = location.hash.match(/^#\/jobs\/([0-9a-fA-F-]{36})$/);
  if (match) {
    openJob(match[1].toLowerCase());
  } else {
    closeJob();
    show("board");
    loadJobs();
  }
}

function setup() {
  const select = $("filter-status");
  for (const status of STATUSES) select.add(new Option(status, status));
  const tz = $("tz");
  tz.value = state.tz;
  tz.options[0].textContent = `local (${zoneLabel("local")})`;
  tz.addEventListener("change", () => {
    state.tz = tz.value;
    localStorage.setItem("videoq.tz", state.tz);
    if (state.stats) drawFigures();
    redrawJob();
    drawJobs();
  });
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  select.addEventListener("change", loadJobs);
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("search").value.trim().toLowerCase();
    if (/^[0-9a-f-]{36}$/.test(id)) location.hash = `#/jobs/${id}`;
    else toast("Give the job's full id (36 characters, as the CLI and API print it).");
  });
  $("retry-failed").addEventListener("click", retryFailed);
  $("clear-stale").addEventListener("click", clearStale);
  $("job-cancel").addEventListener("click", () => act("cancel"));
  $("job-retry").addEventListener("click", () => act("retry"));
  window.addEventListener("hashchange", route);
}

hooks.signedOut = signedOut;
setup();
fetch("/v1/session", { credentials: "same-origin" })
  .then(async (response) => {
    if (!response.ok) { signedOut(""); return; }
    state.session = await response.json();
    start();
  })
  .catch(() => signedOut("The API cannot be reached."));

// The videoq operator console. Signs in by exchanging an API key for a session cookie
// (POST /v1/session), then reads the same routes as any client; the jobs, the figures and the
// charts all follow one stream, WS /v1/events?stats=1, through the browser client videoq.js.
// Every value is written as text (textContent), never as markup.

import { subscribe, subscribeFeed } from "/static/videoq.js";
import * as charts from "/static/charts.js";

const $ = (id) => document.getElementById(id);
const STATUSES = ["queued", "scheduled", "running", "retrying", "awaiting_budget", "succeeded",
  "failed", "cancelled"];
const CANCELLABLE = ["queued", "scheduled", "running", "retrying", "awaiting_budget"];
const RETRYABLE = ["failed", "cancelled"];

const state = {
  session: null, feed: null, jobFeed: null, jobs: new Map(), stats: null, openJob: null,
  timeline: [], tz: localStorage.getItem("videoq.tz") === "utc" ? "utc" : "local",
};

// Times: one format everywhere, in the zone the header's selector names.
const pad = (n) => String(n).padStart(2, "0");
function zoneLabel(tz = state.tz) {
  if (tz === "utc") return "UTC";
  const minutes = -new Date().getTimezoneOffset();
  const sign = minutes < 0 ? "−" : "+";
  return `UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
}
function when(value, { date = true, seconds = true } = {}) {
  if (value === null || value === undefined) return "–";
  const d = new Date(typeof value === "number" ? value * 1000 : value);
  if (Number.isNaN(d.getTime())) return "–";
  const utc = state.tz === "utc";
  const [y, mo, da, h, mi, s] = utc
    ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
  const time = `${pad(h)}:${pad(mi)}${seconds ? ":" + pad(s) : ""}`;
  return date ? `${y}-${pad(mo)}-${pad(da)} ${time}` : time;
}
const seconds = (s) => (s === null || s === undefined ? "–" : s < 90 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`);
const usd = (v) => (v === null || v === undefined ? "–" : `$${Number(v).toFixed(4)}`);

function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (cls) td.className = cls;
  return td;
}
function toast(message) {
  $("toast").textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { $("toast").textContent = ""; }, 5000);
}

// The API: the session cookie authenticates; every state-changing call carries the CSRF token.
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf_token;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(data?.error?.message || `${response.status} ${response.statusText}`);
    error.status = response.status;
    if (response.status === 401 && state.session) signedOut("Your session ended: sign in again.");
    throw error;
  }
  return data;
}

// Signing in and out.
function show(view) {
  for (const id of ["signin", "board", "job"]) $(id).hidden = id !== view;
}
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
  $("figures-scope").textContent = `${s.workers ? "Every tenant's jobs, the queue and the workers" : "Your tenant's jobs"}, as of ${when(s.ts)} (${zoneLabel()}); live, every 5 s.`;
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

// One job's page: facts, stages, attempts, video, previews, and its whole event timeline.
async function openJob(id) {
  show("job");
  state.jobFeed?.close();
  state.openJob = null;
  state.timeline = [];
  for (const part of ["job-facts", "job-stages", "job-attempts", "job-timeline", "job-previews", "job-error"]) {
    $(part).replaceChildren();
  }
  $("job-id").textContent = id;
  $("job-title").textContent = "Loading…";
  $("job-video").hidden = true;
  $("job-video").removeAttribute("src");
  try {
    state.openJob = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  } catch (error) {
    $("job-title").textContent = error.status === 404 ? "No such job for this key" : `Could not load the job: ${error.message}`;
    $("job-cancel").disabled = $("job-retry").disabled = true;
    return;
  }
  drawJob();
  let replayedUpTo = 0;  // events up to the snapshot's seq are history: the timeline only
  state.jobFeed = subscribe(id, {
    after: 0,
    onEvent: (event) => {
      if (event.job_id !== state.openJob?.id) return;
      if (event.type === "snapshot") {  // the job as the socket opened: newer than as loaded
        replayedUpTo = Math.max(replayedUpTo, event.seq);
        const changed = event.status !== state.openJob.status;
        Object.assign(state.openJob, { status: event.status, stage: event.stage, progress: event.progress });
        drawFacts();
        if (changed) refreshJobSoon();
        return;
      }
      state.timeline.push(event);
      addToTimeline(event);
      drawStages();
      if (event.seq <= replayedUpTo) return;  // the job as loaded is newer than this
      Object.assign(state.openJob, { status: event.status, stage: event.stage, progress: event.progress });
      drawFacts();
      if (event.type === "status" || event.type === "stage") refreshJobSoon();
    },
  });
}
function refreshJobSoon() {
  if (refreshJobSoon.timer) return;
  refreshJobSoon.timer = setTimeout(async () => {
    refreshJobSoon.timer = null;
    if (!state.openJob) return;
    try {
      state.openJob = await api("GET", `/v1/jobs/${state.openJob.id}`);
      drawJob();
    } catch { /* shown at the next event */ }
  }, 300);
}
function drawJob() {
  const job = state.openJob;
  $("job-title").textContent = job.brief?.product_name || "Job";
  drawFacts();
  drawStages();
  drawAttempts();
  const error = job.error;
  $("job-error").textContent = error ? `${error.code}: ${error.message}${error.retryable ? " (retryable)" : ""}` : "";
  const video = $("job-video");
  if (job.result?.video_url) {
    const src = `/v1/jobs/${job.id}/video`;
    if (video.getAttribute("src") !== src) video.src = src;
    video.hidden = false;
    $("job-novideo").textContent = "";
  } else {
    video.hidden = true;
    $("job-novideo").textContent = job.status === "succeeded" ? "The video has expired." : "No video yet.";
  }
}
function drawFacts() {
  const job = state.openJob;
  const cost = job.cost || {};
  const facts = [
    ["status", job.status], ["stage", job.stage || "–"], ["progress", `${Math.round(job.progress || 0)} %`],
    ["priority", job.priority], ["attempts", `${job.attempts} (max retries ${job.max_retries})`],
    ["created", when(job.created_at)], ["started", when(job.started_at)],
    ["finished", when(job.finished_at)], ["worker", job.worker_id || "–"],
    ["cost", `${usd(cost.actual_usd)} paid · ${usd(cost.estimated_usd)} estimated`],
  ];
  if (job.eta_s !== null && job.eta_s !== undefined) facts.push(["ETA", seconds(job.eta_s)]);
  if (job.queue_position !== null && job.queue_position !== undefined) facts.push(["queue position", job.queue_position]);
  const list = $("job-facts");
  list.replaceChildren();
  for (const [name, value] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    dd.dataset.fact = name;
    if (name === "status") dd.className = `status-${value}`;
    list.append(dt, dd);
  }
  $("job-cancel").disabled = !CANCELLABLE.includes(job.status);
  $("job-retry").disabled = !RETRYABLE.includes(job.status);
}
function drawStages() {
  const job = state.openJob;
  const spent = {};
  for (const call of job.cost?.calls || []) {
    spent[call.stage] = (spent[call.stage] || 0) + (call.actual_usd ?? call.reserved_usd ?? 0);
  }
  const times = {};
  for (const event of state.timeline) {
    if (!event.stage) continue;
    const t = times[event.stage] || (times[event.stage] = {});
    if (event.type === "stage") { t.start = event.ts; t.end = null; t.done = false; }
    if (t.start && !t.done) t.end = event.ts;
    if (event.message === "completed") t.done = true;
  }
  const body = $("job-stages");
  body.replaceChildren();
  for (const stage of ["script_gen", "voice_gen", "video_gen", "compositing"]) {
    const t = times[stage] || {};
    const row = body.insertRow();
    row.dataset.stage = stage;
    cell(row, stage);
    cell(row, when(t.start));
    cell(row, t.start && t.end ? seconds((new Date(t.end) - new Date(t.start)) / 1000) : "–", "num");
    cell(row, spent[stage] !== undefined ? usd(spent[stage]) : "–", "num");
  }
}
function drawAttempts() {
  const body = $("job-attempts");
  body.replaceChildren();
  for (const attempt of state.openJob.history || []) {
    const row = body.insertRow();
    cell(row, attempt.attempt, "num");
    cell(row, attempt.worker_id);
    cell(row, when(attempt.started_at));
    cell(row, when(attempt.finished_at));
    cell(row, attempt.outcome, `status-${attempt.outcome}`);
    cell(row, attempt.error ? `${attempt.error.code}: ${attempt.error.message}` : "");
  }
}
function addToTimeline(event) {
  const item = document.createElement("li");
  item.className = `type-${event.type}`;
  item.dataset.seq = String(event.seq);
  const parts = [when(event.ts), `#${event.seq}`, event.type, event.status, event.stage || "",
    `${Math.round(event.progress || 0)} %`, event.message || ""];
  if (event.type === "preview" && event.data) {
    parts.push(`${event.data.kind}${event.data.scene !== undefined ? ` scene ${event.data.scene}` : ""}`);
    addPreview(event.data);
  }
  item.textContent = parts.filter(Boolean).join("  ");
  $("job-timeline").append(item);
}
function addPreview(data) {
  if (typeof data.url !== "string" || !data.url) return;
  let url;
  try { url = new URL(data.url, location.href); } catch { return; }
  if (url.protocol !== "https:" && url.protocol !== "http:") return;
  const box = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = `${data.kind}${data.scene !== undefined ? ` ${data.scene}` : ""}`;
  if (/\.(mp4|webm)(\?|$)/.test(url.pathname)) {
    const link = document.createElement("a");
    link.href = url.href;
    link.textContent = "clip";
    box.append(link, caption);
  } else {
    const image = document.createElement("img");
    image.src = url.href;
    image.alt = caption.textContent;
    image.loading = "lazy";
    box.append(image, caption);
  }
  $("job-previews").append(box);
}
async function act(verb) {
  const job = state.openJob;
  if (!job) return;
  try {
    await api("POST", `/v1/jobs/${job.id}/${verb}`);
    toast(verb === "cancel" ? "Cancelling the job…" : "The job was queued again.");
  } catch (error) {
    toast(`${verb}: ${error.message}`);
  }
  if (verb === "retry") openJob(job.id);  // a new attempt: follow it from the start
  else refreshJobSoon();
}

// Routes: #/ (the board) and #/jobs/<id> (a job). No key ever goes in the address.
function route() {
  if (!state.session) return;
  const match = location.hash.match(/^#\/jobs\/([0-9a-fA-F-]{36})$/);
  if (match) {
    openJob(match[1].toLowerCase());
  } else {
    state.jobFeed?.close();
    state.jobFeed = null;
    state.openJob = null;
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
    if (state.openJob) {
      drawJob();
      $("job-timeline").replaceChildren();
      $("job-previews").replaceChildren();
      for (const event of state.timeline) addToTimeline(event);
    }
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

setup();
fetch("/v1/session", { credentials: "same-origin" })
  .then(async (response) => {
    if (!response.ok) { signedOut(""); return; }
    state.session = await response.json();
    start();
  })
  .catch(() => signedOut("The API cannot be reached."));

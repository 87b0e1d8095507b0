// One job's page of the console: facts, stages with durations, attempts and errors, cost, the
// video, previews, and its whole event timeline (replayed from the start, then live); cancel
// and retry.

import { subscribe } from "/static/videoq.js";
import { $, api, cell, seconds, show, state, toast, usd, when } from "/static/common.js";

const CANCELLABLE = ["queued", "scheduled", "running", "retrying", "awaiting_budget"];
const RETRYABLE = ["failed", "cancelled"];

export async function openJob(id) {
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
export async function act(verb) {
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

/** Leave the job's page: stop following it. */
export function closeJob() {
  state.jobFeed?.close();
  state.jobFeed = null;
  state.openJob = null;
}

/** Draw the page again (the time zone changed). */
export function redrawJob() {
  if (!state.openJob) return;
  drawJob();
  $("job-timeline").replaceChildren();
  $("job-previews").replaceChildren();
  for (const event of state.timeline) addToTimeline(event);
}

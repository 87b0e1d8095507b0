"""``GET /dashboard?token=<api key>``: a live page of the caller's jobs, and for admin keys the
queue and the workers too.

The page is one HTML document with its script and style inline, allowed by the request's CSP
nonce (:mod:`videoq.security`). It holds no data itself: its script reads the same routes any
client does (``GET /v1/jobs``, ``/v1/queue/stats``, ``/v1/workers``) with the key from its own
address, and follows ``WS /v1/events`` for live updates. Every value is written as text, never
as markup. The key stays in the page's address (so a reload works): like a WebSocket's
``?token=``, it can reach browser history and a proxy's access log, so a dashboard is best given
a key of its own, revoked when no longer needed.
"""

from __future__ import annotations

from html import escape

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>videoq dashboard</title>
<style nonce="{nonce}">
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }}
h1 {{ font-size: 1.3rem; }} h2 {{ font-size: 1.05rem; margin-top: 1.5rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #ddd; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.status-succeeded {{ color: #1a7f37; }} .status-failed {{ color: #cf222e; }}
.status-running {{ color: #0969da; }} .status-cancelled {{ color: #6e7781; }}
#live {{ font-family: ui-monospace, monospace; font-size: 12px; max-height: 16rem;
         overflow-y: auto; background: #f6f8fa; padding: .5rem; }}
.hidden {{ display: none; }}
</style>
</head>
<body>
<h1>videoq · {tenant}</h1>
<p id="state">connecting…</p>
<section id="ops" class="hidden">
<h2>Queue</h2><table><tbody id="queue"></tbody></table>
<h2>Workers</h2>
<table><thead><tr><th>worker</th><th>running</th><th>max</th><th>outcomes</th>
<th>last heartbeat</th></tr></thead><tbody id="workers"></tbody></table>
</section>
<h2>Jobs</h2>
<table><thead><tr><th>job</th><th>product</th><th>status</th><th>stage</th>
<th>progress</th><th>created</th></tr></thead><tbody id="jobs"></tbody></table>
<h2>Live events</h2><div id="live"></div>
<script nonce="{nonce}">
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const headers = {{ Authorization: "Bearer " + token }};
const jobs = new Map();

function cell(row, text, cls) {{
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}}
async function get(path) {{
  const response = await fetch(path, {{ headers }});
  if (response.status === 403) return null;
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}}
function drawJobs() {{
  const body = document.getElementById("jobs");
  body.replaceChildren();
  const newest = (a, b) => (b.created_at || "").localeCompare(a.created_at || "");
  const rows = [...jobs.values()].sort(newest);
  for (const job of rows.slice(0, 50)) {{
    const row = body.insertRow();
    cell(row, job.id.slice(0, 8));
    cell(row, job.product_name);
    cell(row, job.status, "status-" + job.status);
    cell(row, job.stage);
    cell(row, Math.round(job.progress || 0) + " %", "num");
    cell(row, (job.created_at || "").replace("T", " ").slice(0, 19));
  }}
}}
async function refresh() {{
  const list = await get("/v1/jobs?limit=50");
  for (const job of list.data) {{
    jobs.set(job.id, {{ ...job, product_name: (job.brief || {{}}).product_name }});
  }}
  drawJobs();
  const stats = await get("/v1/queue/stats");
  const workers = await get("/v1/workers");
  if (stats === null || workers === null) return;
  document.getElementById("ops").classList.remove("hidden");
  const queue = document.getElementById("queue");
  queue.replaceChildren();
  const counts = Object.entries(stats.counts).map(([s, n]) => s + " " + n).join(" · ");
  const oldest = stats.oldest_queued_age_s;
  for (const [name, value] of [["jobs", counts], ["queue length", stats.queue_length],
      ["oldest queued (s)", oldest === null ? "–" : Math.round(oldest)],
      ["live workers", stats.workers]]) {{
    const row = queue.insertRow(); cell(row, name); cell(row, value);
  }}
  const body = document.getElementById("workers");
  body.replaceChildren();
  for (const w of workers.data) {{
    const row = body.insertRow();
    cell(row, w.id + (w.alive ? "" : " (stale)"));
    cell(row, (w.jobs || []).length, "num");
    cell(row, w.max_jobs, "num");
    cell(row, Object.entries(w.counts || {{}}).map(([k, v]) => k + " " + v).join(" · "));
    cell(row, new Date(w.last_heartbeat * 1000).toLocaleTimeString());
  }}
}}
let pending = null;
function later() {{  // at most one refresh a second, however many unknown jobs send events
  if (pending === null) pending = setTimeout(() => {{ pending = null; refresh(); }}, 1000);
}}
function follow() {{
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const url = scheme + location.host + "/v1/events?token=" + encodeURIComponent(token);
  const socket = new WebSocket(url);
  socket.onopen = () => {{ document.getElementById("state").textContent = "live"; }};
  socket.onmessage = (message) => {{
    const event = JSON.parse(message.data);
    const job = jobs.get(event.job_id);
    if (job) {{
      Object.assign(job, {{ status: event.status, stage: event.stage, progress: event.progress }});
      drawJobs();
    }} else {{
      later();
    }}
    const live = document.getElementById("live");
    const line = document.createElement("div");
    line.textContent = [event.ts, event.job_id.slice(0, 8), event.type, event.status,
                        event.stage || "", event.message || ""].join("  ");
    live.prepend(line);
    while (live.childElementCount > 100) live.lastChild.remove();
  }};
  socket.onclose = () => {{
    document.getElementById("state").textContent = "reconnecting…";
    setTimeout(follow, 2000);
  }};
}}
refresh().then(follow).catch((error) => {{
  document.getElementById("state").textContent = String(error);
}});
setInterval(() => refresh().catch(() => {{}}), 5000);
</script>
</body>
</html>
"""


def render(nonce: str, tenant: str) -> str:
    """The page, its script and style allowed by ``nonce``; ``tenant`` is shown in its title."""
    return PAGE.format(nonce=escape(nonce), tenant=escape(tenant))

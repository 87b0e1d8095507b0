// What the console's modules share: its state, one time format, text-only cells, and the API
// (the session cookie authenticates; every state-changing call carries the CSRF token).

export const $ = (id) => document.getElementById(id);

export const state = {
  session: null, feed: null, jobFeed: null, jobs: new Map(), stats: null, openJob: null,
  timeline: [], tz: localStorage.getItem("videoq.tz") === "utc" ? "utc" : "local",
};
/** Show one of the page's views: "signin", "board" or "job". */
export function show(view) {
  for (const id of ["signin", "board", "job"]) $(id).hidden = id !== view;
}

/** Set by the console: what a 401 from the API does (back to the sign-in form). */
export const hooks = { signedOut: () => {} };

// Times: one format everywhere, in the zone the header's selector names.
const pad = (n) => String(n).padStart(2, "0");
export function zoneLabel(tz = state.tz) {
  if (tz === "utc") return "UTC";
  const minutes = -new Date().getTimezoneOffset();
  const sign = minutes < 0 ? "−" : "+";
  return `UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
}
export function when(value, { date = true, seconds = true } = {}) {
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
export const seconds = (s) => (s === null || s === undefined ? "–" : s < 90 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`);
export const usd = (v) => (v === null || v === undefined ? "–" : `$${Number(v).toFixed(4)}`);

export function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (cls) td.className = cls;
  return td;
}
export function toast(message) {
  $("toast").textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { $("toast").textContent = ""; }, 5000);
}


export async function api(method, path, body) {
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
    if (response.status === 401 && state.session) hooks.signedOut("Your session ended: sign in again.");
    throw error;
  }
  return data;
}

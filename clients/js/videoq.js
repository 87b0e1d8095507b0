// videoq browser client: a dependency-free ES module (types in videoq.d.ts, the event schema in
// events.schema.json). It follows a job's events (`subscribe`) or a tenant's (`subscribeFeed`)
// over WebSocket, reconnects with backoff, and resumes with `?after=` so that every event
// arrives exactly once, in order, across reconnects.

/** The statuses a job ends in: its stream closes after one of them. */
export const TERMINAL = Object.freeze(["succeeded", "failed", "cancelled"]);

/** Close codes after which reconnecting cannot help (bad `after`, bad key, unknown job). */
export const FATAL_CLOSE_CODES = Object.freeze([4400, 4401, 4403, 4404]);

/** Whether `event` ends its job's stream. */
export function isTerminal(event) {
  return event.type === "status" && TERMINAL.includes(event.status);
}

/** The WebSocket URL of `path` on `baseUrl` (http→ws, https→wss), with `query`. */
export function socketUrl(baseUrl, path, query = {}) {
  const base = baseUrl ?? globalThis.location?.origin;
  if (!base) throw new TypeError("videoq: baseUrl is required outside a browser page");
  const url = new URL(path, base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  return url.toString();
}

/** The delay before reconnect attempt `attempt` (from 0): exponential, capped, full jitter. */
export function backoffDelay(attempt, { initialMs = 500, maxMs = 10000, random = Math.random } = {}) {
  const ceiling = Math.min(maxMs, initialMs * 2 ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * One resumable WebSocket: `number(event)` is the event's place in the stream (seq or
 * tenant_seq); events at or below the last one delivered are dropped, so a replay after a
 * reconnect adds nothing twice.
 */
function follow(path, options, number, { endsOnClose, startAt = () => undefined, behind = () => false }) {
  const {
    baseUrl, token, onEvent = () => {}, onState = () => {}, onError = () => {},
    backoff = {}, WebSocket: Socket = globalThis.WebSocket, query = {},
  } = options;
  let last = options.after ?? null;
  let socket = null;
  let attempt = 0;
  let timer = null;
  let stopped = false;
  let resolveDone;
  const done = new Promise((resolve) => { resolveDone = resolve; });

  function finish(reason) {
    if (stopped) return;
    stopped = true;
    clearTimeout(timer);
    onState("closed", reason);
    resolveDone(reason);
  }

  function open() {
    const url = socketUrl(baseUrl, path, { ...query, after: last ?? undefined, token });
    onState(attempt === 0 ? "connecting" : "reconnecting");
    socket = new Socket(url);
    socket.onopen = () => onState("open");
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        onError(error);
        return;
      }
      attempt = 0;  // the connection works: the next break starts from the shortest delay
      const at = number(event);
      if (at === undefined) {  // no place in the stream (a snapshot, a feed change): as is
        if (last === null) last = startAt(event) ?? null;
        onEvent(event);
        return;
      }
      if (last !== null && at <= last) return;  // already delivered before a reconnect
      last = at;
      onEvent(event);
    };
    socket.onclose = (close) => {
      socket = null;
      if (stopped) return;
      if (FATAL_CLOSE_CODES.includes(close.code)) {
        const error = new Error(`videoq: ${close.reason || "connection refused"} (${close.code})`);
        error.code = close.code;
        onError(error);
        finish("refused");
      } else if (endsOnClose && close.code === 1000 && !behind(last)) {
        finish("ended");
      } else if (endsOnClose && close.code === 1000) {
        open();  // a replay ends at an earlier attempt's end: the rest follows at once
      } else {
        const delay = backoffDelay(attempt++, backoff);
        onState("waiting", delay);
        timer = setTimeout(open, delay);
      }
    };
  }

  open();
  return {
    done,
    /** The last seq (or tenant_seq) delivered: what a later subscription passes as `after`. */
    get last() { return last; },
    /** Drop the connection now, as a network failure would (it reconnects and resumes). */
    reconnect() { socket?.close(4000, "reconnect"); },
    /** Stop for good. */
    close() {
      const open = socket;
      finish("closed");
      open?.close(1000);
    },
  };
}

/**
 * Follow one job's events: a snapshot first (on every connection), then each event once, in
 * `seq` order, until the job's last terminal event; reconnects with backoff and resumes after the
 * last `seq` delivered. `after` replays from there (0: the whole history).
 */
export function subscribe(jobId, options = {}) {
  if (!jobId) throw new TypeError("videoq: subscribe needs a job id");
  let latest = null;  // the seq of the last snapshot: the job's latest event as it opened
  return follow(`/v1/jobs/${encodeURIComponent(jobId)}/events`, options, (event) => {
    if (event.type !== "snapshot") return event.seq;
    latest = event.seq;
    return undefined;
  }, {
    endsOnClose: true,
    // Without `after`, the first snapshot's seq is where "now" begins: a reconnect before
    // any event resumes from there instead of replaying the whole history.
    startAt: (event) => (event.type === "snapshot" ? event.seq : undefined),
    // A job retried after it ended has an earlier terminal event in its history, where a
    // replay stops: while the snapshot said there is more, the stream goes on.
    behind: (last) => latest !== null && last !== null && last < latest,
  });
}

/**
 * Follow every event of the caller's tenant (`WS /v1/events`), each once, in `tenant_seq`
 * order; reconnects forever (until `close()`) and resumes after the last `tenant_seq`
 * delivered. `after` replays from there (0: all that is kept). `stats: true` asks the API for
 * a `stats` message (queue and worker figures) on connect and every few seconds.
 */
export function subscribeFeed(options = {}) {
  const query = options.stats ? { stats: 1 } : {};
  return follow("/v1/events", { ...options, query }, (event) => event.tenant_seq,
    { endsOnClose: false });
}

// Types of the videoq browser client (videoq.js). The events follow events.schema.json.

export type JobStatus =
  | "queued" | "scheduled" | "running" | "retrying" | "awaiting_budget"
  | "succeeded" | "failed" | "cancelled";

export type Stage = "script_gen" | "voice_gen" | "video_gen" | "compositing";

interface EventBase {
  job_id: string;
  /** One higher per event of the job; `after=` resumes a job's stream after it. */
  seq: number;
  /** One higher per event of the tenant (absent on snapshots); `after=` resumes the feed. */
  tenant_seq?: number;
  status: JobStatus;
  stage: Stage | null;
  /** 0–100; never goes backwards within an attempt. */
  progress: number;
  worker_id: string | null;
  /** ISO 8601, UTC. */
  ts: string;
  message: string | null;
}

/** The job's state as a socket opens; its `seq` is the job's latest event number then. */
export interface SnapshotEvent extends EventBase { type: "snapshot" }
export interface StatusEvent extends EventBase { type: "status" }
export interface StageEvent extends EventBase {
  type: "stage";
  /** The job's ETA in seconds as the stage starts, when one could be estimated. */
  eta_s?: number;
}
export interface ProgressEvent extends EventBase { type: "progress" }
export interface LogEvent extends EventBase { type: "log" }

export interface PreviewData {
  kind: "storyboard" | "thumbnail" | "poster" | (string & {});
  scene?: number;
  url?: string;
  [field: string]: unknown;
}
export interface PreviewEvent extends EventBase { type: "preview"; data: PreviewData }

export type JobEvent =
  | SnapshotEvent | StatusEvent | StageEvent | ProgressEvent | LogEvent | PreviewEvent;

/** A change of one end user's feed (tenant feed only; no `tenant_seq`, not replayed). */
export interface FeedEvent {
  type: "feed";
  change: "refilled" | "ready" | "failed" | (string & {});
  user_id: string;
  ts: string;
  [field: string]: unknown;
}

/** Queue and worker figures, sent on the tenant feed when asked (`stats: true`). */
export interface StatsMessage {
  type: "stats";
  ts: string;
  /** The caller's tenant's jobs by status (an admin key's too, as its job list). */
  counts: Partial<Record<JobStatus, number>>;
  oldest_queued_age_s: number | null;
  /** Per minute of the last hour, oldest first (UTC minutes). */
  last_hour: {
    minutes: string[];
    succeeded: number[]; failed: number[]; cancelled: number[];
    /** From when a job could run to its start, of the jobs that started that minute. */
    wait_avg_s: Array<number | null>; wait_max_s: Array<number | null>;
  };
  /** Admin keys only. */
  queue_length?: number;
  workers?: Array<{
    id: string; alive: boolean; jobs: string[]; max_jobs: number;
    counts: Record<string, number>; last_heartbeat: number;
  }>;
}

export type FeedMessage = JobEvent | FeedEvent | StatsMessage;

export type ConnectionState = "connecting" | "open" | "waiting" | "reconnecting" | "closed";

export interface BackoffOptions {
  /** First reconnect delay's ceiling in ms (default 500). */
  initialMs?: number;
  /** The longest delay in ms (default 10000). */
  maxMs?: number;
  random?: () => number;
}

export interface SubscribeOptions<E> {
  /** Resume after this number (0: the whole history); default: from now on. */
  after?: number;
  /** The API's origin; default: the page's. */
  baseUrl?: string;
  /** An API key sent as `?token=`; leave out where a session cookie authenticates. */
  token?: string;
  onEvent?: (event: E) => void;
  onState?: (state: ConnectionState, detail?: unknown) => void;
  onError?: (error: Error & { code?: number }) => void;
  backoff?: BackoffOptions;
  /** A WebSocket class, for runtimes without a global one. */
  WebSocket?: typeof globalThis.WebSocket;
}

export interface Subscription {
  /** Settles when the subscription ends: the job's stream ended, it was refused, or closed. */
  readonly done: Promise<"ended" | "refused" | "closed">;
  /** The last seq (job) or tenant_seq (feed) delivered, or null. */
  readonly last: number | null;
  /** Drop the connection as a network failure would: it reconnects and resumes. */
  reconnect(): void;
  /** Stop for good. */
  close(): void;
}

export const TERMINAL: readonly JobStatus[];
export const FATAL_CLOSE_CODES: readonly number[];
export function isTerminal(event: { type: string; status?: string }): boolean;
export function socketUrl(
  baseUrl: string | undefined, path: string, query?: Record<string, unknown>,
): string;
export function backoffDelay(attempt: number, options?: BackoffOptions): number;

/** Follow one job: each event exactly once, in `seq` order, across reconnects. */
export function subscribe(jobId: string, options?: SubscribeOptions<JobEvent>): Subscription;

/** Follow the tenant: each event exactly once, in `tenant_seq` order, across reconnects. */
export function subscribeFeed(
  options?: SubscribeOptions<FeedMessage> & { stats?: boolean },
): Subscription;

"""Settings: one pydantic-settings object, built once per process at each entry point, passed down.

Precedence, highest first: a job's ``options`` (see :meth:`Settings.for_job`) > command-line flags
(passed as keyword arguments) > environment (``VIDEOQ_*``) > ``videoq.toml`` > defaults.
"""

from __future__ import annotations

import json
import os
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: Job ``options`` may override only these settings; everything else is per process.
JOB_OVERRIDABLE = frozenset(
    {
        "providers", "job_timeout_s", "stage_timeout_s", "max_retries", "anthropic_model",
        "max_cost_per_scene_usd",
    }
)  # fmt: skip
#: The settings a job's ``options`` may lower but never raise.
JOB_LIMITS = ("job_timeout_s", "stage_timeout_s", "max_retries", "max_cost_per_scene_usd")

#: A Replicate model's ``owner/name``, as its URL (``/v1/models/{owner}/{name}``) spells it.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class Price(BaseModel):
    """What one model of a provider charges, in US dollars per unit; a call costs the sum over
    the units it used (docs/providers.md, "Prices")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_token: Decimal = Field(default=Decimal(0), ge=0, le=1)
    output_token: Decimal = Field(default=Decimal(0), ge=0, le=1)
    character: Decimal = Field(default=Decimal(0), ge=0, le=1)
    #: Per second of video asked for (models priced by output length).
    video_second: Decimal = Field(default=Decimal(0), ge=0, le=100)
    #: Per second of prediction time (models priced by the hardware's time).
    predict_second: Decimal = Field(default=Decimal(0), ge=0, le=100)
    #: Per prediction, whatever its length (models priced per video).
    prediction: Decimal = Field(default=Decimal(0), ge=0, le=1000)


#: List prices of the default models, as published on 2026-12-02 (docs/providers.md).
DEFAULT_PRICES: dict[str, Price] = {
    "anthropic:claude-sonnet-5-5": Price(
        input_token=Decimal("0.000003"), output_token=Decimal("0.000015")
    ),
    "elevenlabs:eleven_multilingual_v2": Price(character=Decimal("0.0001")),
    "replicate:minimax/video-01": Price(prediction=Decimal("0.5")),
}


#: What an end user did with a video (``POST /v1/interactions``); each type has its weight in
#: :attr:`Settings.interaction_weights`.
InteractionType = Literal["view", "like", "save", "share", "skip"]


#: How much each interaction pulls a preference towards its video (a skip pushes away).
DEFAULT_WEIGHTS: dict[InteractionType, float] = {
    "view": 1.0, "like": 3.0, "save": 4.0, "share": 5.0, "skip": -3.0
}  # fmt: skip


def _listed(value: Any) -> Any:
    """A list setting as an environment variable writes it: a JSON list (``["a", "b"]``) or
    comma-separated (``a,b``; blank: empty). Anything else is validated as it is."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError("is neither a JSON list nor comma-separated values") from None
    return [part.strip() for part in value.split(",") if part.strip()]


#: A list of strings in a setting: a JSON list or comma-separated (:func:`_listed`).
StrList = Annotated[list[str], NoDecode, BeforeValidator(_listed)]
#: Seconds, as a list: a JSON list or comma-separated.
Seconds = Annotated[tuple[float, ...], NoDecode, BeforeValidator(_listed)]


def price_key(provider: str, model: str) -> str:
    """How :attr:`Settings.prices` names a provider's model."""
    return f"{provider}:{model}"


class Settings(BaseSettings):
    """Every knob of videoq. Environment variables use the ``VIDEOQ_`` prefix."""

    model_config = SettingsConfigDict(
        env_prefix="VIDEOQ_", toml_file="videoq.toml", extra="ignore", populate_by_name=True
    )

    # Stores. Unset URLs mean "use the embedded services under `home`".
    database_url: str | None = Field(default=None, description="PostgreSQL URL (asyncpg).")
    redis_url: str | None = Field(default=None, description="Redis URL, e.g. redis://host:6379/0.")
    home: Path = Field(default=Path(".videoq"), description="Embedded services and artifacts.")
    artifacts_dir: Path | None = Field(
        default=None, description="The file store's directory when storage_url is unset."
    )
    storage_url: str | None = Field(
        default=None,
        description="Artifact store: file:///dir, s3://bucket/prefix (?endpoint_url=&region=, "
        "AWS_* variables) or gs://bucket/prefix. Default: file://<home>/artifacts.",
    )
    scratch_dir: Path | None = Field(
        default=None,
        description="A worker's scratch space (jobs' work directories); it may be lost at any "
        "time. Default: <home>/scratch.",
    )
    scratch_min_free_bytes: int = Field(
        default=1024**3,
        ge=0,
        description="A worker takes no new jobs while its scratch disk has less free space.",
    )
    artifact_ttl_days: float = Field(
        default=30.0, gt=0, description="Finished jobs' artifacts are deleted after this long."
    )
    video_redirect: bool = Field(
        default=False,
        description="GET /v1/jobs/{id}/video answers 307 to a signed URL of an object store "
        "instead of streaming the video through the API.",
    )
    signed_url_ttl_s: float = Field(
        default=300.0, gt=0, description="How long a signed video URL stays valid."
    )

    # Logging.
    log_format: Literal["console", "json"] = Field(
        default="console", description="`json` (one object a line) in production."
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")

    # Tracing (docs/tracing.md).
    otlp_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry collector (OTLP/HTTP) to export spans to, e.g. "
        "http://localhost:4318; unset: no tracing. Needs the `tracing` extra.",
        validation_alias=AliasChoices("VIDEOQ_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    )

    # API.
    host: str = Field(default="127.0.0.1", description="Where `videoq api` listens.")
    port: int = Field(default=8000, description="The port `videoq api` listens on.")
    max_body_bytes: int = Field(default=64 * 1024, description="Largest request body (413).")
    ws_idle_check_s: float = Field(
        default=15.0,
        description="A job WebSocket with no event for this long re-reads the job, and closes "
        "if it ended (its terminal event may have been lost).",
    )
    ws_buffer_events: int = Field(
        default=1000,
        description="Events buffered per WebSocket; a client further behind is disconnected.",
    )

    # Command line (the SDK's client, as `videoq submit`, `status`, ... use it).
    api_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long the CLI waits for each API request, and keeps retrying while the "
        "API answers 503 (its database unavailable) before it gives up.",
    )

    # Worker.
    queue_name: str = Field(
        default="videoq:queue", description="The arq queue (Redis key) the API and workers share."
    )
    max_jobs: int = Field(
        default=200,
        ge=1,
        description="Jobs one worker process holds at once. A job spends nearly all its life "
        "waiting on providers, which costs a coroutine; the CPU-bound part (FFmpeg) has its own "
        "limit, `ffmpeg_slots`. Bounded by memory (docs/benchmarks.md, Waiting), not by cores.",
    )
    ffmpeg_slots: int | None = Field(
        default=None,
        ge=1,
        description="FFmpeg runs one worker process allows at once, granted fairly between "
        "tenants. Default: the cores this process may use.",
    )
    poll_delay_s: float = Field(
        default=0.5,
        description="Idle poll interval. `videoq worker` is woken at once by new jobs and polls "
        "only as a safety net; the plain `arq` CLI polls at this rate.",
    )
    job_timeout_s: float = Field(default=1800.0, description="A job's attempt fails after this.")
    stage_timeout_s: float = Field(default=900.0, description="One stage fails after this.")
    max_retries: int = Field(default=3, description="Retries after the first attempt.")
    heartbeat_s: float = Field(default=2.0, description="How often workers heartbeat their jobs.")
    worker_stale_s: float = Field(
        default=10.0,
        description="A running job whose heartbeat is older belongs to a dead worker: how a "
        "lost machine (or a worker whose death PostgreSQL did not see) is noticed.",
    )
    death_watch_s: float = Field(
        default=0.5,
        ge=0,
        description="How often one worker looks for workers whose PostgreSQL session lock was "
        "let go (their process died) and hands their running jobs to others at once; 0: off, "
        "dead workers are noticed by `worker_stale_s` only.",
    )
    reconcile_s: float = Field(
        default=5.0, description="How often workers re-enqueue jobs Redis lost or a worker left."
    )
    shutdown_grace_s: int = Field(
        default=10, description="On SIGTERM, how long running jobs may finish before requeueing."
    )
    pipeline: str = Field(
        default="videoq.pipeline:run_pipeline",
        description="`module:function` the worker runs for each job (same signature).",
    )
    retry_delays_s: Seconds = Field(
        default=(2.0, 4.0, 8.0), description="Waits before each retry of a job (jittered ±20 %)."
    )

    # Pipeline.
    providers: Literal["auto", "offline"] = Field(
        default="auto", description="`offline` forces the offline providers for every stage."
    )
    ffmpeg_path: str | None = Field(default=None, description="Default: PATH, then imageio-ffmpeg.")
    ffmpeg_preset: str = Field(default="veryfast", description="x264 preset of the MP4.")
    ffmpeg_crf: int = Field(default=23, description="x264 quality (lower: better, larger).")
    ffmpeg_stop_grace_s: float = Field(
        default=0.2,
        description="When a job is stopped, how long FFmpeg gets after 'q', then after SIGTERM, "
        "before SIGKILL: its output is discarded then, a clean trailer is not worth waiting for.",
    )
    fps: int = Field(default=30, description="Frames per second of the video.")
    font_file: Path | None = Field(
        default=None, description="Font of captions and the CTA; default: a system font."
    )

    # Providers (names those ecosystems already use; the VIDEOQ_ forms work too).
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        description="Anthropic key: live scripts; unset: the offline template.",
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "VIDEOQ_ANTHROPIC_API_KEY"),
    )
    elevenlabs_api_key: SecretStr | None = Field(
        default=None,
        description="ElevenLabs key: live voices; unset: offline tones.",
        validation_alias=AliasChoices("ELEVENLABS_API_KEY", "VIDEOQ_ELEVENLABS_API_KEY"),
    )
    replicate_api_token: SecretStr | None = Field(
        default=None,
        description="Replicate token: live clips; unset: offline clips.",
        validation_alias=AliasChoices("REPLICATE_API_TOKEN", "VIDEOQ_REPLICATE_API_TOKEN"),
    )
    anthropic_model: str = Field(default="claude-sonnet-5-5", description="The script model.")

    # Live provider endpoints. Each also honours the variable its own SDK reads.
    anthropic_base_url: str | None = Field(
        default=None,
        description="Anthropic API root; default https://api.anthropic.com.",
        validation_alias=AliasChoices("VIDEOQ_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
    )
    elevenlabs_base_url: str = Field(
        default="https://api.elevenlabs.io",
        description="ElevenLabs API root (paths start with /v1).",
        validation_alias=AliasChoices("VIDEOQ_ELEVENLABS_BASE_URL", "ELEVENLABS_BASE_URL"),
    )
    replicate_base_url: str = Field(
        default="https://api.replicate.com",
        description="Replicate API root (paths start with /v1).",
        validation_alias=AliasChoices("VIDEOQ_REPLICATE_BASE_URL", "REPLICATE_BASE_URL"),
    )

    # Script (Anthropic Messages API).
    anthropic_max_tokens: int = Field(default=2048, description="Output token cap per script.")
    anthropic_timeout_s: float = Field(default=60.0, description="HTTP timeout per request.")

    # Voice (ElevenLabs text-to-speech with timestamps).
    elevenlabs_voice_id: str = Field(
        default="21m00Tcm4TlvDq8ikWAM", description="Voice used when the brief names none."
    )
    elevenlabs_model_id: str = Field(
        default="eleven_multilingual_v2", description="The text-to-speech model."
    )
    elevenlabs_output_format: str = Field(
        default="mp3_44100_128", description="codec_samplerate_bitrate, as ElevenLabs names it."
    )
    elevenlabs_timeout_s: float = Field(default=120.0, description="HTTP timeout per request.")

    # Video (Replicate predictions, one per scene).
    replicate_model: str = Field(
        default="minimax/video-01", description="owner/name of the text-to-video model."
    )
    replicate_version: str | None = Field(
        default=None,
        description="64-hex version id of replicate_model; unset runs the model's latest "
        "(official).",
    )
    replicate_fallback_models: StrList = Field(
        default_factory=list,
        description="owner/name of the models a scene switches to, in order, when the one "
        "before keeps failing to take its prediction (capacity, 5xx, timeouts past "
        "provider_retries); each runs its latest version and needs a price. Scenes already "
        "bought are kept.",
    )
    replicate_input: dict[str, Any] = Field(
        default_factory=dict, description="Extra model inputs sent with every prediction."
    )
    replicate_poll_s: float = Field(default=1.0, description="First poll interval; it grows.")
    replicate_poll_max_s: float = Field(default=10.0, description="Longest poll interval.")
    public_url: str | None = Field(
        default=None,
        description="The API's public base URL, as Replicate reaches it. With "
        "replicate_webhook_secret set, predictions report their end to "
        "<public_url>/v1/webhooks/replicate and the stage waits for that instead of polling.",
    )
    replicate_webhook_poll_s: float = Field(
        default=30.0,
        gt=0,
        description="While predictions' webhooks are awaited, each worker lists the account's "
        "predictions this often (100 a page, back to its oldest wait) and wakes the waits of "
        "those that ended: a lost webhook costs at most this long. A worker waiting on N "
        "predictions reads about N ÷ 100 pages a period (Replicate allows 50 reads a second).",
    )
    replicate_cancel_after: str = Field(
        default="30m", description="`Cancel-After` on create: Replicate stops runaway predictions."
    )
    replicate_timeout_s: float = Field(default=30.0, description="HTTP timeout per request.")
    max_download_bytes: int = Field(
        default=512 * 1024 * 1024, description="Largest generated clip accepted, in bytes."
    )

    # What paid calls cost, and what a tenant may spend.
    prices: dict[str, Price] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="Unit prices in USD by provider:model (input_token, output_token, "
        "character, video_second, predict_second, prediction); every live model needs one.",
    )
    max_cost_per_scene_usd: Decimal | None = Field(
        default=None,
        gt=0,
        description="Video models whose price for a scene is higher are skipped; a scene no "
        "model can film within it fails (`no_provider`). A job's options may lower it.",
    )
    budget_recheck_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How often a job awaiting its tenant's budget looks again (a raised "
        "budget resumes them at once).",
    )

    # Calls to every live provider.
    provider_retries: int = Field(
        default=3, description="Retries of one provider call inside a stage, after the first."
    )
    provider_backoff_s: float = Field(
        default=1.0, description="First retry delay inside a stage; doubles each time, jittered."
    )
    provider_backoff_max_s: float = Field(
        default=30.0,
        description="Longest wait inside a stage; a longer Retry-After hands the job to arq.",
    )

    # Concurrency limits per provider, shared by every worker through Redis leases.
    anthropic_concurrency: int = Field(
        default=8, ge=1, description="Script requests in flight at once, across all workers."
    )
    elevenlabs_concurrency: int = Field(
        default=5, ge=1, description="Your plan's limit (Creator: 5 on multilingual v2)."
    )
    replicate_concurrency: int = Field(
        default=400,
        ge=1,
        description="Predictions in flight at once, across all workers. Replicate limits the "
        "rate of creates (600 a minute), not how many run; this caps what one deployment has "
        "rendering (and paying) at once.",
    )
    limit_lease_s: float = Field(
        default=60.0, description="A held slot expires this long after its last renewal."
    )

    # Security (docs/security.md).
    rate_limit_per_s: float = Field(
        default=10.0, ge=0, description="Jobs a tenant may create per second; 0: no limit."
    )
    rate_limit_burst: int = Field(
        default=100, ge=1, description="Jobs a tenant may create at once (token bucket size)."
    )
    max_queued_jobs: int = Field(
        default=1000,
        ge=0,
        description="Waiting jobs (queued, scheduled, retrying, awaiting_budget) per tenant "
        "before new ones get "
        "429; 0: no cap.",
    )
    webhook_max_body_bytes: int = Field(
        default=1024 * 1024, description="Largest inbound webhook body (GitHub, Replicate)."
    )
    cors_origins: StrList = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser; empty: CORS off.",
    )
    webhook_allowed_networks: StrList = Field(
        default_factory=list,
        description="Networks (CIDR) webhook URLs may point at although they are private, "
        "loopback or link-local; empty: public addresses only.",
    )
    webhook_timeout_s: float = Field(default=10.0, description="HTTP timeout per webhook attempt.")
    webhook_retry_delays_s: Seconds = Field(
        default=(5.0, 30.0, 120.0, 600.0, 1800.0, 7200.0),
        description="Waits between webhook attempts; one attempt more than there are delays.",
    )
    webhook_tolerance_s: float = Field(
        default=300.0, description="Inbound signed webhooks older or newer than this are refused."
    )
    github_webhook_secret: SecretStr | None = Field(
        default=None, description="Secret of the GitHub webhook; unset: the route answers 404."
    )
    github_webhook_tenant: str = Field(
        default="github", description="Tenant owning jobs created from GitHub events."
    )
    replicate_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Replicate's `whsec_…` signing secret; unset: the route answers 404.",
    )

    # Preference-driven generation (docs/feed.md).
    openai_api_key: SecretStr | None = Field(
        default=None,
        description="Key of the OpenAI-compatible embeddings API; unset: the offline embedder.",
        validation_alias=AliasChoices("OPENAI_API_KEY", "VIDEOQ_OPENAI_API_KEY"),
    )
    embeddings_base_url: str = Field(
        default="https://api.openai.com",
        description="Root of the OpenAI-compatible embeddings API (POST <root>/v1/embeddings).",
        validation_alias=AliasChoices("VIDEOQ_EMBEDDINGS_BASE_URL", "OPENAI_BASE_URL"),
    )
    embeddings_model: str = Field(
        default="text-embedding-3-small",
        description="Embedding model; asked for 1536 dimensions, the column's size.",
    )
    embeddings_timeout_s: float = Field(default=30.0, gt=0, description="HTTP timeout.")
    embeddings_batch: int = Field(
        default=64, ge=1, le=2048, description="Finished videos embedded per request."
    )
    interaction_weights: dict[InteractionType, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="How much an interaction of each type pulls a user's preference towards "
        "its video (negative: away from it).",
    )
    short_view_s: float = Field(
        default=3.0,
        ge=0,
        description="A view with `watched_s` under this counts against its video, with "
        "`short_view_weight`.",
    )
    short_view_weight: float = Field(default=-1.0, description="The weight of a short view.")
    preference_half_life_days: float = Field(
        default=14.0, gt=0, description="An interaction counts half as much this much later."
    )
    preference_history: int = Field(
        default=200, ge=1, le=10_000, description="Latest interactions a preference is made of."
    )
    preference_update_threshold: int = Field(
        default=15,
        ge=1,
        description="New interactions of a user after which the preference is recomputed and "
        "the feed refilled (in a worker, never on the request path).",
    )
    similarity_threshold: float = Field(
        default=0.5,
        ge=-1,
        le=1,
        description="Cosine similarity a finished video needs to the preference to be fed.",
    )
    similar_videos_needed: int = Field(
        default=3,
        ge=1,
        description="Similar finished videos that fill a feed; with fewer, new ones are made.",
    )
    feed_size: int = Field(
        default=20, ge=1, le=1000, description="Existing videos queued per refill, at most."
    )
    briefs_per_refill: int = Field(
        default=3, ge=1, le=20, description="New briefs asked for when too few videos match."
    )
    max_generated_per_user_per_day: int = Field(
        default=10,
        ge=0,
        description="Jobs made for one user per UTC day, at most: a burst of interactions "
        "cannot run up a bill. 0: none are made.",
    )
    preference_priority: Literal["high", "normal", "low"] = Field(
        default="low", description="Priority of the jobs made for users' feeds."
    )
    feed_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often each worker embeds finished videos and refills the feeds due.",
    )
    schedule_poll_s: float = Field(
        default=5.0,
        gt=0,
        description="How often each worker fires the recurring jobs (/v1/schedules) that are "
        "due: a tick's job is submitted within this long of its time.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator(
        "anthropic_api_key", "elevenlabs_api_key", "replicate_api_token", "openai_api_key"
    )
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # `ANTHROPIC_API_KEY=` in an env file means "no key": the offline provider, not a live
        # call with an empty key.
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @field_validator("replicate_model", "replicate_fallback_models")
    @classmethod
    def _owner_slash_name(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        # Each name becomes a URL path (and a price key): nothing else may pass for one.
        for name in [value] if isinstance(value, str) else value:
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(
                    f"{info.field_name} has {name!r}, which is not a model's owner/name "
                    "(e.g. minimax/video-01)"
                )
        return value

    @property
    def replicate_models(self) -> list[str]:
        """The Replicate models a scene may be bought from, in the order they are tried."""
        return [self.replicate_model, *self.replicate_fallback_models]

    @property
    def cpu_slots(self) -> int:
        """``ffmpeg_slots``, or the cores this process may use."""
        if self.ffmpeg_slots is not None:
            return self.ffmpeg_slots
        affinity = getattr(os, "sched_getaffinity", None)
        return len(affinity(0)) if affinity is not None else os.cpu_count() or 1

    @model_validator(mode="after")
    def _live_models_are_priced(self) -> Settings:
        # A paid call with no price could not be reserved against a budget, nor estimated.
        if self.providers == "offline":
            return self
        for key in self.priced_models():
            if key not in self.prices:
                raise ValueError(
                    f"prices has no entry for {key!r}: add one (VIDEOQ_PRICES, a JSON object "
                    "of provider:model to unit prices; docs/providers.md)"
                )
        return self

    def priced_models(self) -> list[str]:
        """The :attr:`prices` keys of the live models these settings would call."""
        keys = []
        if self.anthropic_api_key is not None:
            keys.append(price_key("anthropic", self.anthropic_model))
        if self.elevenlabs_api_key is not None:
            keys.append(price_key("elevenlabs", self.elevenlabs_model_id))
        if self.replicate_api_token is not None:
            keys.extend(price_key("replicate", model) for model in self.replicate_models)
        return keys

    @model_validator(mode="after")
    def _heartbeats_outrun_staleness(self) -> Settings:
        # A worker must heartbeat well within the staleness limit, or its live jobs are taken
        # over (and run twice) between two of its heartbeats.
        if self.worker_stale_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"worker_stale_s ({self.worker_stale_s}) must be at least twice heartbeat_s "
                f"({self.heartbeat_s})"
            )
        return self

    @property
    def artifacts(self) -> Path:
        """The file store's directory (one sub-directory per job id) when ``storage_url`` is
        unset."""
        return self.artifacts_dir or self.home / "artifacts"

    @property
    def replicate_webhook_url(self) -> str | None:
        """Where Replicate sends a prediction's completion: set when ``public_url`` and
        ``replicate_webhook_secret`` both are (the route refuses webhooks without the secret)."""
        if self.public_url is None or self.replicate_webhook_secret is None:
            return None
        return f"{self.public_url.rstrip('/')}/v1/webhooks/replicate"

    @property
    def scratch(self) -> Path:
        """A worker's scratch directory: one work directory per job id."""
        return self.scratch_dir or self.home / "scratch"

    def for_job(self, options: dict[str, Any] | None) -> Settings:
        """These settings with a job's ``options`` applied (only :data:`JOB_OVERRIDABLE` keys;
        a limit only lowered, never raised: a job stored before the API checked that, or
        under a higher setting since lowered, gets the operator's value)."""
        if not options:
            return self
        allowed = {k: v for k, v in options.items() if k in JOB_OVERRIDABLE}
        for limit in JOB_LIMITS:
            value, ceiling = allowed.get(limit), getattr(self, limit)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and ceiling is not None:
                allowed[limit] = min(value, ceiling)
        return self.model_validate({**self.model_dump(), **allowed}) if allowed else self


# --- The README's configuration table: `python -m videoq.settings --markdown` ---------------

#: Where the README's table begins and ends (`--write README.md` replaces what lies between).
TABLE_START = "<!-- settings table: python -m videoq.settings --write README.md -->"
TABLE_END = "<!-- end of settings table -->"
#: Defaults too long for a table cell, in words.
_DOC_DEFAULTS = {"prices": "list prices of the default models (docs/providers.md)"}


def _variables(name: str, alias: Any) -> list[str]:
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"VIDEOQ_{name.upper()}"]


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | Decimal):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ", ".join(_shown(v) for v in value) or "empty"
    if isinstance(value, dict):
        return json.dumps(value) if value else "empty"
    return str(value)


def markdown_table() -> str:
    """Every setting: its variables, its default and what it does, as a Markdown table."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        names = ", ".join(f"`{v}`" for v in _variables(name, field.validation_alias))
        default = field.get_default(call_default_factory=True)
        shown = _DOC_DEFAULTS.get(name) or f"`{_shown(default)}`"
        what = field.description or ""
        if NoDecode in field.metadata:
            what += " Comma-separated or a JSON list."
        elif isinstance(default, dict):
            what += " A JSON object."
        # (As HTML entities, `<home>` shows as written, not as an unknown tag.)
        what = what.strip().replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| {names} | {shown} | {what} |")
    return "\n".join(rows) + "\n"


def with_table(readme: str) -> str:
    """``readme`` with its configuration table (between :data:`TABLE_START` and
    :data:`TABLE_END`) made anew."""
    head, start, rest = readme.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not (start and end):
        raise ValueError(f"no {TABLE_START!r} … {TABLE_END!r} block to replace")
    return f"{head}{start}\n{markdown_table()}{end}{tail}"


def _main(argv: list[str]) -> int:
    if argv == ["--markdown"]:
        print(markdown_table(), end="")
        return 0
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(with_table(path.read_text()))
        return 0
    print("usage: python -m videoq.settings --markdown | --write README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

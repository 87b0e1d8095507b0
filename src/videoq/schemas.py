"""The API's request bodies and their validation. Unknown fields are refused, and every error
names its field."""

from __future__ import annotations

import hashlib
import json
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from videoq import cron
from videoq.netguard import parse_networks, refusal
from videoq.settings import InteractionType

if TYPE_CHECKING:
    from videoq.settings import Settings

Style = Literal["minimal", "bold", "cinematic", "playful"]
AspectRatio = Literal["9:16", "16:9", "1:1"]
Priority = Literal["high", "normal", "low"]


def _has_control_chars(value: str) -> bool:
    # Cs: lone surrogates, which JSON can carry but UTF-8 (and so PostgreSQL) cannot store.
    return any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t" for c in value)


#: How far ahead a job may be scheduled, by ``run_at`` or ``delay_s``.
MAX_SCHEDULE_S = 30 * 24 * 3600
#: The largest budget a tenant may be given, in US dollars (a day or a month).
MAX_BUDGET_USD = 10_000_000
#: The largest ``max_cost_per_scene_usd`` a job may ask for, in US dollars.
MAX_SCENE_USD = 10_000


def job_context(settings: Settings) -> dict[str, Any]:
    """The validation context of a :class:`JobCreate` on this server: the networks webhooks
    may reach, and the operator's limits a job's own values may lower but never raise."""
    return {
        "webhook_allowed_networks": settings.webhook_allowed_networks,
        "limits": {
            "job_timeout_s": settings.job_timeout_s,
            "stage_timeout_s": settings.stage_timeout_s,
            "max_retries": settings.max_retries,
            "max_cost_per_scene_usd": None
            if settings.max_cost_per_scene_usd is None
            else float(settings.max_cost_per_scene_usd),
        },
        "priced": {key for key in settings.prices},
        "anthropic_live": settings.providers != "offline"
        and settings.anthropic_api_key is not None,
    }


def _within_limit(value: float | None, info: ValidationInfo) -> float | None:
    """``value``, refused above the operator's setting of the same name (from the context)."""
    context = info.context if isinstance(info.context, dict) else {}
    limit = (context.get("limits") or {}).get(info.field_name)
    if value is not None and limit is not None and value > limit:
        raise ValueError(f"must be at most {limit:g}, this server's {info.field_name}")
    return value


class JobOptions(BaseModel):
    """Per-job overrides of settings (see :data:`videoq.settings.JOB_OVERRIDABLE`): typed as
    strictly as the top-level fields, and the limits may only be lowered."""

    model_config = ConfigDict(extra="forbid")

    providers: Literal["auto", "offline"] | None = None
    job_timeout_s: float | None = Field(default=None, gt=0, le=24 * 3600, strict=True)
    stage_timeout_s: float | None = Field(default=None, gt=0, le=24 * 3600, strict=True)
    anthropic_model: str | None = Field(default=None, min_length=1, max_length=100, strict=True)
    #: US dollars: video models whose price for a scene is higher are skipped.
    max_cost_per_scene_usd: float | None = Field(default=None, gt=0, le=MAX_SCENE_USD, strict=True)

    _limited = field_validator("job_timeout_s", "stage_timeout_s", "max_cost_per_scene_usd")(
        _within_limit
    )

    @field_validator("anthropic_model")
    @classmethod
    def _printable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and _has_control_chars(value):
            raise ValueError("must not contain control characters")
        context = info.context or {}
        priced = context.get("priced")
        unpriced = priced is not None and f"anthropic:{value}" not in priced
        if value is not None and context.get("anthropic_live") and unpriced:
            raise ValueError("this server has no price for that model (settings: prices)")
        return value


class JobCreate(BaseModel):
    """Body of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    product_name: str = Field(min_length=1, max_length=200)
    style: Style = "minimal"
    cta_text: str | None = Field(default=None, max_length=80)
    prompt: str | None = Field(default=None, max_length=2000)
    duration_s: int = Field(default=15, ge=5, le=60, strict=True)
    aspect_ratio: AspectRatio = "9:16"
    voice: str | None = Field(default=None, min_length=1, max_length=100)
    #: Captions burned in from the voice's word timings, and a WebVTT file beside the video.
    captions: bool = Field(default=True, strict=True)
    priority: Priority = "normal"
    run_at: datetime | None = None
    delay_s: float | None = Field(default=None, ge=0, le=MAX_SCHEDULE_S, strict=True)
    max_retries: int | None = Field(default=None, ge=0, le=10, strict=True)
    webhook_url: HttpUrl | None = None
    options: JobOptions = Field(default_factory=JobOptions)

    @field_validator("product_name", "cta_text", "voice", "prompt")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and _has_control_chars(value):
            raise ValueError("must not contain control characters")
        return value

    _limited = field_validator("max_retries")(_within_limit)

    @field_validator("run_at", mode="before")
    @classmethod
    def _iso_8601(cls, value: Any) -> datetime | None:
        """Only an ISO 8601 date-time string (no number of seconds, no other formats), in the
        next :data:`MAX_SCHEDULE_S` (a time past means now); no time zone means UTC."""
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError("must be an ISO 8601 date-time string, e.g. 2030-01-01T09:00:00Z")
        try:
            when = datetime.fromisoformat(value)
            when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        except (ValueError, OverflowError):  # e.g. year 9999 at UTC-12 is past the calendar
            raise ValueError(
                "must be an ISO 8601 date-time string, e.g. 2030-01-01T09:00:00Z"
            ) from None
        if when > datetime.now(UTC) + timedelta(seconds=MAX_SCHEDULE_S):
            raise ValueError(f"must be at most {MAX_SCHEDULE_S // 86400} days ahead")
        return when

    @field_validator("delay_s")
    @classmethod
    def _one_schedule(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("run_at") is not None:
            raise ValueError("give run_at or delay_s, not both")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _reachable(cls, value: HttpUrl | None, info: ValidationInfo) -> HttpUrl | None:
        # Static SSRF checks (scheme, credentials, IP literals, localhost); the host is resolved
        # and checked again at every delivery attempt (videoq.webhooks).
        if value is not None:
            context = info.context if isinstance(info.context, dict) else {}
            allowed = parse_networks(context.get("webhook_allowed_networks", ()))
            why = refusal(str(value), allowed)
            if why:
                raise ValueError(why)
        return value

    def fingerprint(self) -> str:
        """A digest of the request as validated (defaults filled in): what an
        ``Idempotency-Key`` is bound to."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def brief(self) -> dict[str, Any]:
        """The fields the pipeline needs, as stored in the job row."""
        return self.model_dump(
            include={
                "product_name", "style", "cta_text", "prompt", "duration_s", "aspect_ratio",
                "voice", "captions",
            }
        )  # fmt: skip

    def scheduled_for(self, now: datetime) -> datetime | None:
        """When the job may start, if later than now."""
        when = self.run_at or (now + timedelta(seconds=self.delay_s) if self.delay_s else None)
        return when if when is not None and when > now else None


class ScheduleCreate(JobCreate):
    """Body of ``POST /v1/schedules``: the body of a ``POST /v1/jobs``, which each tick
    submits, with the ``cron`` expression (:mod:`videoq.cron`) and the IANA ``timezone`` it
    is read in, and an optional ``name``. A job's own ``run_at`` and ``delay_s`` have no
    place here: a schedule's jobs start at their ticks."""

    cron: str = Field(min_length=1, max_length=200, strict=True)
    timezone: str = Field(default="UTC", min_length=1, max_length=64, strict=True)
    name: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return cron.check(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        cron.zone(value)
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and _has_control_chars(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("run_at", "delay_s", mode="before")
    @classmethod
    def _not_scheduled(cls, value: object) -> object:
        if value is not None:
            raise ValueError("a schedule's jobs start at their ticks: leave this out")
        return value

    def job(self) -> dict[str, Any]:
        """The ``POST /v1/jobs`` body each tick submits, as stored."""
        return self.model_dump(
            mode="json", exclude={"cron", "timezone", "name", "run_at", "delay_s"},
            exclude_none=True,
        )  # fmt: skip


class KeyCreate(BaseModel):
    """Body of ``POST /v1/keys``: the tenant the key acts for, its scope (``admin`` keys may
    also manage keys, tenants and workers), a label, and when it stops working by itself."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    tenant: str = Field(min_length=1, max_length=100, strict=True)
    scope: Literal["tenant", "admin"] = "tenant"
    name: str | None = Field(default=None, min_length=1, max_length=100, strict=True)
    expires_at: datetime | None = None

    @field_validator("tenant", "name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and (_has_control_chars(value) or not value.isprintable()):
            raise ValueError("must be printable characters")
        return value

    @field_validator("expires_at", mode="before")
    @classmethod
    def _future(cls, value: Any) -> datetime | None:
        """An ISO 8601 date-time string in the future (no time zone means UTC)."""
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError("must be an ISO 8601 date-time string, e.g. 2030-01-01T09:00:00Z")
        try:
            when = datetime.fromisoformat(value)
            when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        except (ValueError, OverflowError):
            raise ValueError(
                "must be an ISO 8601 date-time string, e.g. 2030-01-01T09:00:00Z"
            ) from None
        if when <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return when


class TenantUpdate(BaseModel):
    """``PUT /v1/tenants/{tenant}``: the tenant's fair share and spend budgets. A field left
    out keeps its value (weight 1, no limit and no budget for a tenant never configured)."""

    model_config = ConfigDict(extra="forbid")

    weight: float | None = Field(default=None, gt=0, le=1000, strict=True)
    #: None (sent as null) lifts the limit; 0 holds the tenant's jobs until it is raised.
    max_running: int | None = Field(default=None, ge=0, le=100_000, strict=True)
    #: US dollars a UTC day / month; None (null) lifts the budget, 0 stops paid calls.
    daily_budget_usd: Decimal | None = Field(
        default=None, ge=0, le=MAX_BUDGET_USD, max_digits=14, decimal_places=6
    )
    monthly_budget_usd: Decimal | None = Field(
        default=None, ge=0, le=MAX_BUDGET_USD, max_digits=14, decimal_places=6
    )
    #: Creates are answered 402 while a budget is spent (else jobs wait in awaiting_budget).
    reject_when_over_budget: bool | None = Field(default=None, strict=True)

    @field_validator("daily_budget_usd", "monthly_budget_usd", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # JSON numbers only: "12" or true are refused, not read as 12 or 1.
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return value
        raise ValueError("must be a number of US dollars, or null")


class InteractionCreate(BaseModel):
    """Body of ``POST /v1/interactions``: an end user's interaction with a finished video of
    the tenant."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: The tenant's own id for its user (an opaque string to videoq).
    user_id: str = Field(min_length=1, max_length=200, strict=True)
    #: The video: a succeeded job of the tenant.
    video_id: uuid.UUID
    type: InteractionType
    #: Seconds of the video watched (a view shorter than ``short_view_s`` counts against it).
    watched_s: float | None = Field(default=None, ge=0, le=24 * 3600)

    @field_validator("user_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _has_control_chars(value) or not value.strip():
            raise ValueError("must be printable and not blank")
        return value

    @field_validator("watched_s", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # JSON numbers only: "12" or true are refused, not read as 12 or 1.
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return value
        raise ValueError("must be a number of seconds, or null")


class SceneRerender(BaseModel):
    """Body of ``POST /v1/jobs/{id}/scenes/{index}/rerender``: the scene's new visual
    ``prompt`` and/or ``narration`` (at least one), and ``dry_run`` for the cost only."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: str | None = Field(default=None, min_length=1, max_length=2000)
    narration: str | None = Field(default=None, min_length=1, max_length=1000)
    dry_run: bool = Field(default=False, strict=True)

    @field_validator("prompt", "narration")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and _has_control_chars(value):
            raise ValueError("must not contain control characters")
        return value

    def changes(self) -> dict[str, str]:
        """The fields sent: ``prompt``, ``narration`` or both."""
        fields = {"prompt": self.prompt, "narration": self.narration}
        return {name: value for name, value in fields.items() if value is not None}


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{"field": "duration_s", "message": ...}]``."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        out.append({"field": loc, "message": message, "type": err["type"]})
    return out

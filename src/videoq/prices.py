"""What paid calls cost in US dollars, from the price table in the settings (``prices``).

Each live provider records what a call used in its cost record (``provider``, ``model`` and
the units: ``input_tokens``/``output_tokens``, ``characters``, ``video_s``,
``predict_time_s``); :func:`cost_usd` prices one record. Before a call, :func:`reservation`
gives the most it can cost, for a budget to hold, and :func:`estimate` what a whole brief is
expected to cost, stage by stage, before anything is queued. Offline calls cost nothing.

Amounts are :class:`~decimal.Decimal`, rounded to a millionth of a dollar (:data:`MICRO`), as
PostgreSQL stores them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from videoq.prompts import request
from videoq.settings import Price, Settings, price_key
from videoq.types import Brief, Scene, scene_count, scene_durations

#: Amounts are kept to a millionth of a dollar.
MICRO = Decimal("0.000001")
#: Characters of narration per second of video that a script is expected to have (speech at
#: about 150 words a minute), for the estimate made before the script exists.
CHARACTERS_PER_S = 14
#: Output tokens a script is expected to take per scene (narration, prompt and JSON), plus
#: the title's.
TOKENS_PER_SCENE = 60
TITLE_TOKENS = 20
#: Characters per token, for the request's input tokens (Anthropic's rule of thumb).
CHARS_PER_TOKEN = 4


def usd(amount: Decimal) -> Decimal:
    """``amount`` rounded to :data:`MICRO`."""
    return amount.quantize(MICRO, rounding=ROUND_HALF_UP)


def price_of(settings: Settings, provider: str, model: str) -> Price | None:
    """The configured price of ``provider``'s ``model`` (None: unpriced)."""
    return settings.prices.get(price_key(provider, model))


def _units(price: Price, record: dict[str, Any]) -> Decimal:
    def number(name: str) -> Decimal:
        value = record.get(name)
        return Decimal(str(value)) if isinstance(value, int | float) else Decimal(0)

    return (
        number("input_tokens") * price.input_token
        + number("output_tokens") * price.output_token
        + number("characters") * price.character
        + number("video_s") * price.video_second
        + number("predict_time_s") * price.predict_second
        + (price.prediction if record.get("provider") == "replicate" else Decimal(0))
    )


def cost_usd(settings: Settings, record: dict[str, Any]) -> Decimal | None:
    """What one call's cost ``record`` comes to; None when its model has no price (or the
    record names none)."""
    provider, model = record.get("provider"), record.get("model")
    if not isinstance(provider, str) or not isinstance(model, str):
        return None
    price = price_of(settings, provider, model)
    return None if price is None else usd(_units(price, record))


def script_usage(brief: Brief, settings: Settings, *, most: bool) -> dict[str, Any]:
    """The script call's expected usage (``most``: its upper bound, the whole output cap)."""
    count = scene_count(brief.duration_s)
    body = request(brief, count, settings)
    output = settings.anthropic_max_tokens if most else TITLE_TOKENS + TOKENS_PER_SCENE * count
    return {
        "provider": "anthropic",
        "model": settings.anthropic_model,
        "input_tokens": len(json.dumps(body)) // CHARS_PER_TOKEN,
        "output_tokens": output,
    }


def voice_usage(settings: Settings, characters: int) -> dict[str, Any]:
    return {
        "provider": "elevenlabs",
        "model": settings.elevenlabs_model_id,
        "characters": characters,
    }


def scene_usage(settings: Settings, scene: Scene, model: str | None = None) -> dict[str, Any]:
    """A scene's prediction as priced before it runs (its prediction time unknown)."""
    return {
        "provider": "replicate",
        "model": model or settings.replicate_model,
        "video_s": round(scene.duration_s, 3),
    }


def reservation(settings: Settings, usage: dict[str, Any]) -> Decimal:
    """The most a call with ``usage`` may cost (zero for an unpriced one)."""
    return cost_usd(settings, usage) or Decimal(0)


@dataclass
class StageEstimate:
    provider: str
    usd: Decimal = Decimal(0)
    usage: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "usd": float(self.usd), **self.usage}


@dataclass
class Estimate:
    stages: dict[str, StageEstimate]

    @property
    def total(self) -> Decimal:
        return usd(sum((stage.usd for stage in self.stages.values()), Decimal(0)))

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": "USD",
            "total": float(self.total),
            "stages": {name: stage.to_json() for name, stage in self.stages.items()},
        }


def estimate(brief: Brief, settings: Settings) -> Estimate:
    """What ``brief`` is expected to cost with ``settings``' providers and prices."""
    live = settings.providers != "offline"
    stages: dict[str, StageEstimate] = {}
    if live and settings.anthropic_api_key is not None:
        usage = script_usage(brief, settings, most=False)
        stages["script_gen"] = StageEstimate("anthropic", reservation(settings, usage), usage)
    else:
        stages["script_gen"] = StageEstimate("offline")
    if live and settings.elevenlabs_api_key is not None:
        usage = voice_usage(settings, round(CHARACTERS_PER_S * brief.duration_s))
        stages["voice_gen"] = StageEstimate("elevenlabs", reservation(settings, usage), usage)
    else:
        stages["voice_gen"] = StageEstimate("offline")
    if live and settings.replicate_api_token is not None:
        durations = scene_durations(brief.duration_s, scene_count(brief.duration_s))
        scenes = [scene_usage(settings, Scene("", "", d)) for d in durations]
        total = usd(sum((reservation(settings, s) for s in scenes), Decimal(0)))
        usage = {
            "model": settings.replicate_model,
            "scenes": len(scenes),
            "video_s": round(sum(durations), 3),
        }
        stages["video_gen"] = StageEstimate("replicate", total, usage)
    else:
        stages["video_gen"] = StageEstimate("offline")
    stages["compositing"] = StageEstimate("ffmpeg")
    return Estimate(stages)

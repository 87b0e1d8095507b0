"""Stage 1, ``script_gen`` (progress 0–25): the brief becomes a script of timed scenes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from videoq import prices
from videoq.errors import PermanentError
from videoq.pipeline.spending import Spend, paid, paid_call
from videoq.providers import ScriptProvider
from videoq.types import Script

if TYPE_CHECKING:
    from pathlib import Path

    from videoq.settings import Settings
    from videoq.types import Brief

STAGE = "script_gen"


async def run(
    brief: Brief,
    *,
    provider: ScriptProvider,
    settings: Settings | None = None,
    spend: Spend | None = None,
) -> Script:
    """Ask the provider for a script (reserved against the budget at its output cap, when it
    is paid for) and check it covers the brief's duration."""
    if paid(provider) and settings is not None and spend is not None:
        script = await paid_call(
            spend, STAGE, STAGE, prices.script_usage(brief, settings, most=True),
            lambda: provider.write_script(brief), lambda script: script.cost,
        )  # fmt: skip
    else:
        script = await provider.write_script(brief)
    if not script.scenes:
        raise PermanentError("the script has no scenes", code="invalid_script")
    # Compositing cuts each clip to its scene; a script that does not add up would leave the
    # voice and picture out of step.
    if abs(script.duration_s - brief.duration_s) > 0.01:
        raise PermanentError(
            f"scene durations add up to {script.duration_s:.3f} s, not {brief.duration_s} s",
            code="invalid_script",
        )
    return script


def artifacts(output: dict[str, Any]) -> list[Path]:
    """Files a checkpointed output refers to: none, the script is all in the checkpoint."""
    Script.from_dict(output)
    return []

"""Stage 2, ``voice_gen`` (progress 25–50): the script's narration becomes an audio track.

With a :class:`~videoq.providers.ResumableVoiceProvider` (ElevenLabs) the purchase is noted in
the checkpoints under ``voice``, with the fingerprint of its inputs, before it is made: a later
run of the stage whose note matches lets the provider find the track it bought unheard.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from videoq import prices
from videoq.pipeline.spending import Spend, Unmetered, paid, paid_call
from videoq.providers import PaidWork, ResumableVoiceProvider, VoiceProvider
from videoq.types import Script, VoiceTrack

if TYPE_CHECKING:
    from videoq.pipeline import Checkpoints
    from videoq.settings import Settings
    from videoq.types import Brief

STAGE = "voice_gen"
NOTE = "voice"


async def run(
    brief: Brief,
    script: Script,
    *,
    provider: VoiceProvider,
    workdir: Path,
    checkpoints: Checkpoints | None = None,
    settings: Settings | None = None,
    spend: Spend | None = None,
) -> VoiceTrack:
    """Have the provider speak the script into ``workdir`` (reserved against the budget
    first, at the narration's length, when it is paid for)."""
    if paid(provider) and settings is not None:
        characters = len(" ".join(scene.narration for scene in script.scenes))
        return await paid_call(
            spend or Unmetered(), STAGE, STAGE, prices.voice_usage(settings, characters),
            lambda: _speak(brief, script, provider, workdir, checkpoints),
            lambda track: track.cost,
        )  # fmt: skip
    return await _speak(brief, script, provider, workdir, checkpoints)


async def _speak(
    brief: Brief,
    script: Script,
    provider: VoiceProvider,
    workdir: Path,
    checkpoints: Checkpoints | None,
) -> VoiceTrack:
    if not isinstance(provider, ResumableVoiceProvider) or checkpoints is None:
        return await provider.speak(script, brief, workdir)
    fingerprint = provider.work_fingerprint(script, brief)
    previous = (await checkpoints.notes(STAGE)).get(NOTE) or {}
    if previous.get("fingerprint") != fingerprint:
        previous = {}
    current: dict[str, Any] = {**previous, "fingerprint": fingerprint}

    async def note(update: dict[str, Any]) -> None:
        current.update(update)
        await checkpoints.note(STAGE, NOTE, dict(current))

    work = PaidWork(previous, frozenset(), note)
    return await provider.speak_once(script, brief, workdir, work=work)


def artifacts(output: dict[str, Any]) -> list[Path]:
    """Files a checkpointed output refers to: the audio file."""
    return [VoiceTrack.from_dict(output).path]

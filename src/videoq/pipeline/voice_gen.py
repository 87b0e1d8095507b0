"""Stage 2, ``voice_gen`` (progress 25–50): the script's narration becomes an audio track."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from videoq.providers import VoiceProvider
from videoq.types import Script, VoiceTrack

if TYPE_CHECKING:
    from videoq.types import Brief


async def run(
    brief: Brief, script: Script, *, provider: VoiceProvider, workdir: Path
) -> VoiceTrack:
    """Have the provider speak the script into ``workdir``."""
    return await provider.speak(script, brief, workdir)


def artifacts(output: dict[str, Any]) -> list[Path]:
    """Files a checkpointed output refers to: the audio file."""
    return [VoiceTrack.from_dict(output).path]

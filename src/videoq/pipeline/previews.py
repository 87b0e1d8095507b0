"""Previews of a video while it is made (DESIGN.md "Events"): the storyboard as soon as the
script is written, a thumbnail as each scene's clip lands, the finished video's poster.

The images are frames FFmpeg takes from the clip (a thumbnail, fitted into
:func:`thumbnail_size` as compositing fits the clip into the frame) or from the finished video
(the poster, at the video's own size), kept in the artifact store beside the other files of
the job, under the names below: any API process serves them from there.
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from videoq.ffmpeg import grab_frame, probe
from videoq.versions import POSTER, thumbnail_name

if TYPE_CHECKING:
    from videoq.settings import Settings
    from videoq.types import Brief, Scene, Script

#: A thumbnail's longer side, in pixels (its shorter side follows the brief's aspect ratio).
THUMBNAIL_LONG_SIDE = 640
#: The poster is the finished video's frame at this fraction of its length.
POSTER_AT = 0.5


class Previews(Protocol):
    """Receives the previews of a run (the worker's: ``preview`` events)."""

    async def preview(self, kind: str, scene: int | None, data: dict[str, Any]) -> None:
        """``kind`` is ``storyboard``, ``thumbnail`` (of scene ``scene``) or ``poster``;
        ``data`` what the event shows beside its URL."""


def thumbnail_size(brief: Brief) -> tuple[int, int]:
    """A thumbnail's width and height: the video's aspect ratio, the longer side
    :data:`THUMBNAIL_LONG_SIDE` (both even)."""
    width, height = brief.resolution
    scale = THUMBNAIL_LONG_SIDE / max(width, height)
    return round(width * scale / 2) * 2, round(height * scale / 2) * 2


def storyboard(script: Script) -> list[dict[str, Any]]:
    """The script's scenes as a storyboard shows them: ``index``, ``narration``, ``prompt``
    and their timing in the script (``start_s``, ``duration_s``)."""
    starts = [0.0, *accumulate(scene.duration_s for scene in script.scenes)]
    return [
        {
            "index": index,
            "narration": scene.narration,
            "prompt": scene.visual_prompt,
            "start_s": round(starts[index], 3),
            "duration_s": scene.duration_s,
        }
        for index, scene in enumerate(script.scenes)
    ]


async def thumbnail(
    clip: Path, scene: Scene, index: int, brief: Brief, out_dir: Path, settings: Settings
) -> Path:
    """``out_dir/thumbs/scene_NN.jpg``: the clip's frame at the middle of what the scene shows
    of it (a clip shorter than its scene holds its last frame)."""
    length = min(scene.duration_s, (await probe(clip, settings)).duration_s or scene.duration_s)
    path = out_dir / thumbnail_name(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    await grab_frame(clip, path, at_s=length / 2, size=thumbnail_size(brief), settings=settings)
    return path


async def poster(
    video: Path, duration_s: float, brief: Brief, out_dir: Path, settings: Settings
) -> Path:
    """``out_dir/poster.jpg``: the finished video's frame at :data:`POSTER_AT` of its length,
    at its size."""
    path = out_dir / POSTER
    await grab_frame(
        video, path, at_s=duration_s * POSTER_AT, size=brief.resolution, settings=settings
    )
    return path

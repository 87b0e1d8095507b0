"""Offline providers: deterministic and network-free, built on FFmpeg's lavfi sources.

They make ``videoq render --offline``, the demo and the tests work with no API keys: a template
script, a tone for the voice, and one coloured clip per scene with its narration drawn on it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from videoq.captions import spread_words
from videoq.ffmpeg import (
    FONT_CANDIDATES,
    Font,
    atomic_output,
    drawtext,
    find_font,
    run_ffmpeg,
    wrap_text,
)
from videoq.types import Scene, Script, VoiceTrack, Word, scene_count, scene_durations

if TYPE_CHECKING:
    from videoq.settings import Settings
    from videoq.types import Brief

#: Background colour per style; unknown styles get a colour derived from their name.
STYLE_COLOURS: dict[str, str] = {
    "minimal": "0x2b2d42",
    "bold": "0xd62828",
    "playful": "0xf77f00",
    "luxury": "0x1b1b3a",
    "tech": "0x005f73",
    "warm": "0x9c6644",
}
_PALETTE = ("0x3a86ff", "0x8338ec", "0xff006e", "0xfb5607", "0x2a9d8f", "0x264653")

_MIDDLE_LINES = (
    "{name} makes every day a little easier.",
    "Designed with a {style} touch.",
    "Made for people who expect more.",
    "Quality you can see and feel.",
)
_SHOTS = ("hero product shot", "close-up detail", "lifestyle scene", "in use", "end card")


def style_colour(style: str) -> str:
    """The background colour for a style, stable across runs and machines."""
    known = STYLE_COLOURS.get(style.lower())
    return known or _PALETTE[zlib.crc32(style.encode()) % len(_PALETTE)]


class OfflineScriptProvider:
    """A template script: a hook, feature lines, and a closing line with the call to action."""

    async def write_script(self, brief: Brief) -> Script:
        """A script with one scene per ~5 s (at least 2) summing to ``brief.duration_s``."""
        count = scene_count(brief.duration_s)
        name, style = brief.product_name, brief.style
        narrations = [f"Meet {name}."]
        for i in range(count - 2):
            if i == 0 and brief.prompt:
                narrations.append(brief.prompt)
            else:
                narrations.append(
                    _MIDDLE_LINES[i % len(_MIDDLE_LINES)].format(name=name, style=style)
                )
        narrations.append(f"{name}. {brief.cta_text or 'Try it today.'}")
        scenes = []
        for i, (narration, duration) in enumerate(
            zip(narrations, scene_durations(brief.duration_s, count), strict=True)
        ):
            shot = _SHOTS[-1] if i == count - 1 else _SHOTS[i % (len(_SHOTS) - 1)]
            prompt = f"{style} style {shot} of {name}"
            if brief.prompt:
                prompt += f"; {brief.prompt}"
            scenes.append(Scene(narration=narration, visual_prompt=prompt, duration_s=duration))
        return Script(title=name, scenes=scenes)


class OfflineVoiceProvider:
    """Speech-like audio as long as the script, encoded as AAC: a voiced buzz with a gliding
    pitch, pulsed at a syllable rate and sounding only while a word is said. Each scene's
    words are spread over its time (:func:`videoq.captions.spread_words`), and those are the
    timings the track reports, so the captions follow it as they follow a real voice."""

    #: Silence before each scene's first word, and after its last.
    LEAD_IN_S = 0.15
    TAIL_S = 0.35
    #: A brisk voice-over's pace; narration too long for its scene is said faster.
    CHARS_PER_S = 15.0

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def words(self, script: Script) -> list[Word]:
        """When each word of the narration is said: each scene's words within its time, at
        :data:`CHARS_PER_S` when they fit."""
        words: list[Word] = []
        at = 0.0
        for scene in script.scenes:
            start = at + min(self.LEAD_IN_S, scene.duration_s / 4)
            latest = at + scene.duration_s - min(self.TAIL_S, scene.duration_s / 4)
            natural = len(" ".join(scene.narration.split())) / self.CHARS_PER_S
            words += spread_words(scene.narration, start, min(latest, start + natural))
            at += scene.duration_s
        return words

    async def speak(self, script: Script, brief: Brief, out_dir: Path) -> VoiceTrack:
        """``out_dir/voice.m4a``, its pitch chosen by the brief's voice."""
        duration = script.duration_s
        pitch = 120 + 25 * (zlib.crc32((brief.voice or "default").encode()) % 5)
        words = self.words(script)
        # Harmonics of a pitch that glides (phase-modulated), like a voice's intonation.
        buzz = "+".join(
            f"{amp}*sin({k}*2*PI*{pitch}*t+{k * 3}*sin(2*PI*0.6*t))"
            for k, amp in ((1, 0.5), (2, 0.28), (3, 0.14), (4, 0.07))
        )
        # Gated per audio frame (not per sample) to the words: cheap even for a long script.
        spoken = "+".join(f"between(t,{w.start_s:.3f},{w.end_s:.3f})" for w in words) or "0"
        path = out_dir / "voice.m4a"
        with atomic_output(path) as tmp:
            await run_ffmpeg(
                [
                    *("-f", "lavfi", "-i", f"aevalsrc=exprs='{buzz}':s=24000:d={duration:.3f}"),
                    "-af",
                    f"tremolo=f=4.5:d=0.8,volume=0:enable='not({spoken})',lowpass=f=2800",
                    *("-c:a", "aac", "-b:a", "96k", str(tmp)),
                ],
                settings=self._settings,
            )
        return VoiceTrack(path=path, duration_s=duration, words=tuple(words))


class OfflineVideoProvider:
    """A solid-colour clip per scene at the target size and rate, with the narration on it.
    Scenes arrive all at once; their encodes share the process's FFmpeg slots
    (:func:`videoq.ffmpeg.cpu_slots`)."""

    def __init__(self, settings: Settings, *, font_candidates: Sequence[Path] = FONT_CANDIDATES):
        self._settings = settings
        self._font_candidates = font_candidates
        self._font: Font | None = None
        self._font_resolved = False
        self._font_lock = asyncio.Lock()

    async def font(self) -> Font | None:
        """The font used for scene text (resolved once), or None to render without text."""
        async with self._font_lock:
            if not self._font_resolved:
                self._font = await find_font(self._settings, self._font_candidates)
                self._font_resolved = True
        return self._font

    async def render_scene(self, scene: Scene, index: int, brief: Brief, out_dir: Path) -> Path:
        """``out_dir/scene_NN.mp4``: H.264, no audio, ``scene.duration_s`` long."""
        width, height = brief.resolution
        fps = self._settings.fps
        source = (
            f"color=c={style_colour(brief.style)}:s={width}x{height}:r={fps}"
            f":d={scene.duration_s:.3f}"
        )
        filters: list[str] = []
        font = await self.font()
        if font is not None and scene.narration.strip():
            fontsize = min(width, height) // 15
            textfile = out_dir / f"scene_{index:02d}.txt"
            text = wrap_text(scene.narration, width_px=width, fontsize=fontsize)
            textfile.write_text(text, encoding="utf-8")
            filters.append(
                drawtext(
                    textfile,
                    font,
                    fontsize=fontsize,
                    fontcolor="white",
                    line_spacing=fontsize // 3,
                    borderw=max(1, fontsize // 20),
                    bordercolor="black@0.5",
                    x="(w-text_w)/2",
                    y="(h-text_h)/2",
                )
            )
        path = out_dir / f"scene_{index:02d}.mp4"
        vf = ["-vf", ",".join(filters)] if filters else []
        with atomic_output(path) as tmp:
            await run_ffmpeg(
                [
                    *("-f", "lavfi", "-i", source, *vf),
                    *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
                    *("-an", str(tmp)),
                ],
                settings=self._settings,
                duration_s=scene.duration_s,
            )
        return path

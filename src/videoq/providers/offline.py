"""Offline providers: deterministic and network-free, built on FFmpeg's lavfi sources.

They make ``videoq render --offline``, the demo and the tests work with no API keys: a template
script, speech-like audio with word timings for the voice (the captions follow them), and per
scene a clip in the style's colours: a slowly panning gradient, the product's name, and an
accent wipe across each cut.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
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

#: Per style: the gradient's two colours and the accent (bars, wipes); unknown styles get
#: a palette derived from their name.
STYLE_PALETTES: dict[str, tuple[str, str, str]] = {
    "minimal": ("0x2b2d42", "0x8d99ae", "0xef233c"),
    "bold": ("0xd62828", "0xf77f00", "0x111111"),
    "cinematic": ("0x0b132b", "0x3a506b", "0xf4a261"),
    "playful": ("0x8338ec", "0xff006e", "0xffbe0b"),
    "luxury": ("0x1b1b3a", "0x693668", "0xd4af37"),
    "tech": ("0x005f73", "0x0a9396", "0x94d2bd"),
    "warm": ("0x9c6644", "0xddb892", "0x7f5539"),
}
_DERIVED = (
    ("0x3a86ff", "0x8338ec", "0xffbe0b"),
    ("0xff006e", "0xfb5607", "0x1d1d1d"),
    ("0x2a9d8f", "0x264653", "0xe9c46a"),
)
#: The accent's wipe across each cut: it slides in over the end of a scene and out over the
#: start of the next, so each clip holds its half of the transition.
WIPE_S = 0.35
#: The background is this much larger than the frame, and pans across the difference.
PAN = 1.06

_MIDDLE_LINES = (
    "{name} makes every day a little easier, from the very first minute.",
    "Designed with a {style} touch, down to the smallest detail.",
    "Made for people who expect more, and get it every single time.",
    "Quality you can see and feel, built to last for years.",
)
_SHOTS = ("hero product shot", "close-up detail", "lifestyle scene", "in use", "end card")


def style_palette(style: str) -> tuple[str, str, str]:
    """The gradient's colours and the accent for a style, stable across runs and machines."""
    known = STYLE_PALETTES.get(style.lower())
    return known or _DERIVED[zlib.crc32(style.encode()) % len(_DERIVED)]


class OfflineScriptProvider:
    """A template script: a hook, feature lines, and a closing line with the call to action."""

    async def write_script(self, brief: Brief) -> Script:
        """A script with one scene per ~5 s (at least 2) summing to ``brief.duration_s``."""
        count = scene_count(brief.duration_s)
        name, style = brief.product_name, brief.style
        narrations = [f"Meet {name}. The {style} upgrade you have been waiting for."]
        for i in range(count - 2):
            if i == 0 and brief.prompt:
                # A short prompt gets a tagline, so that the voice fills its scene.
                short = len(brief.prompt) < 40
                ended = brief.prompt.rstrip().endswith((".", "!", "?"))
                narrations.append(
                    f"{brief.prompt}{'' if ended else '.'} Made for you." if short else brief.prompt
                )
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
    """Speech-like audio as long as the script, encoded as AAC: a buzz with a gliding pitch,
    pulsed at a syllable rate and sounding only while a word is said. Each scene's
    words are spread over its time (:func:`videoq.captions.spread_words`), and those are the
    timings the track reports, so the captions follow it as they follow a real voice."""

    #: Silence before each scene's first word, and after its last.
    LEAD_IN_S = 0.15
    TAIL_S = 0.35
    #: A brisk voice-over's pace; narration too long for its scene is said faster.
    CHARS_PER_S = 14.0

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
        # A sine whose pitch glides (vibrato: the intonation), clipped softly into a buzz
        # with harmonics: built-in filters, far cheaper than an expression per sample.
        buzz = "vibrato=f=0.6:d=0.08,asoftclip=type=tanh:threshold=0.3"
        # Gated per audio frame (not per sample) to the words: cheap even for a long script.
        spoken = "+".join(f"between(t,{w.start_s:.3f},{w.end_s:.3f})" for w in words) or "0"
        path = out_dir / "voice.m4a"
        with atomic_output(path) as tmp:
            await run_ffmpeg(
                [
                    *("-f", "lavfi", "-i", f"sine=f={pitch}:r=24000:d={duration:.3f}"),
                    "-af",
                    f"{buzz},tremolo=f=4.5:d=0.8,volume=0:enable='not({spoken})',lowpass=f=2800",
                    *("-c:a", "aac", "-b:a", "96k", str(tmp)),
                ],
                settings=self._settings,
            )
        return VoiceTrack(path=path, duration_s=duration, words=tuple(words))


class OfflineVideoProvider:
    """A clip per scene at the target size and rate, in the brief's style's colours.
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
        """``out_dir/scene_NN.mp4``: H.264, no audio, ``scene.duration_s`` long: the style's
        gradient panning slowly, the product's name with a kicker and an accent bar that
        slides in (the last scene, the end card, centres the name for the CTA under it),
        and the accent's wipe across the cuts."""
        width, height = brief.resolution
        fps, length = self._settings.fps, scene.duration_s
        last = index >= scene_count(brief.duration_s) - 1
        c0, c1, accent = style_palette(brief.style)
        if index % 2:
            c0, c1 = c1, c0
        big_w, big_h = _even(width * PAN), _even(height * PAN)
        # One gradient frame, looped, and a window panning across it: the pan costs a crop
        # (no copy), where an animated source would compute every pixel of every frame.
        along = f"t/{length:.3f}" if index % 2 else f"(1-t/{length:.3f})"
        source = (
            f"gradients=s={big_w}x{big_h}:c0={c0}:c1={c1}:n=2:x0=0:y0=0:x1={big_w}:y1={big_h}"
            f":r={fps}:d={1 / fps:.4f},format=yuv420p,loop=loop=-1:size=1,"
            f"trim=duration={length:.3f},crop={width}:{height}:x='(iw-ow)*{along}':y='(ih-oh)/2'"
        )
        title = Title.of(brief, last=last)
        bar_w, bar_h = title.unit // 4, max(2, title.unit // 90)
        # The accent bar under the name slides in from the left.
        graph = [
            f"{source}[bg]",
            f"color=c={accent}:s={bar_w}x{bar_h}:r={fps}:d={length:.3f}[bar]",
            f"[bg][bar]overlay=x='(W-w)/2-W*max(0,1-t/0.6)':y={title.bottom + title.gap}[v0]",
        ]
        current = "v0"
        texts = await self._texts(title, index, last=last, out_dir=out_dir)
        if texts:
            graph.append(f"[{current}]{','.join(texts)}[v1]")
            current = "v1"
        # The accent wipes across the cut: out to the left as the scene starts, in from the
        # right as it ends.
        wipe = min(WIPE_S, length / 4)
        wipes = []
        if index > 0:
            wipes.append((f"-W*min(1,t/{wipe:.3f})", f"lt(t,{wipe:.3f})"))
        if not last:
            start = length - wipe
            wipes.append((f"W*max(0,1-(t-{start:.3f})/{wipe:.3f})", f"gte(t,{start:.3f})"))
        for i, (x, enable) in enumerate(wipes):
            graph.append(f"color=c={accent}:s={width}x{height}:r={fps}:d={length:.3f}[w{i}]")
            graph.append(f"[{current}][w{i}]overlay=x='{x}':y=0:enable='{enable}'[x{i}]")
            current = f"x{i}"
        path = out_dir / f"scene_{index:02d}.mp4"
        with atomic_output(path) as tmp:
            await run_ffmpeg(
                [
                    *("-filter_complex", ";".join(graph), "-map", f"[{current}]"),
                    *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
                    *("-an", str(tmp)),
                ],
                settings=self._settings,
                duration_s=length,
            )
        return path

    async def _texts(self, title: Title, index: int, *, last: bool, out_dir: Path) -> list[str]:
        """The drawtext filters of a scene: the product's name rising into place, a line each
        (centred), and above it a kicker (the shot) except on the end card; none without a
        font."""
        font = await self.font()
        if font is None:
            return []
        filters = []
        rise = f"{title.unit // 25}*max(0,1-t/0.5)"
        for i, line in enumerate(title.lines):
            textfile = out_dir / f"scene_{index:02d}_{i}.txt"
            textfile.write_text(line, encoding="utf-8")
            filters.append(
                drawtext(
                    textfile, font, fontsize=title.fontsize, fontcolor="white",
                    shadowx=3, shadowy=3, shadowcolor="black@0.35", alpha="'min(1,t/0.5)'",
                    x="(w-text_w)/2", y=f"'{title.top + i * title.line_px}+{rise}'",
                )
            )  # fmt: skip
        if not last:
            kicker = out_dir / f"scene_{index:02d}_kicker.txt"
            kicker.write_text("INTRODUCING" if index == 0 else _SHOTS[index % 4].upper())
            filters.append(
                drawtext(
                    kicker, font, fontsize=title.unit // 28, fontcolor="white@0.85",
                    x="(w-text_w)/2", y=f"{title.top - title.gap}-text_h",
                )
            )  # fmt: skip
        return filters


@dataclass(frozen=True)
class Title:
    """Where a scene's title (the product's name) goes: its lines, their size and spacing,
    the block's top and bottom, and the gap to the kicker above and the bar below."""

    lines: list[str]
    unit: int
    fontsize: int
    line_px: int
    top: int
    bottom: int
    gap: int

    @classmethod
    def of(cls, brief: Brief, *, last: bool) -> Title:
        """In the upper part of the frame, clear of the captions; the end card's lower, in
        the middle above the CTA."""
        width, height = brief.resolution
        unit = min(width, height)
        fontsize = unit // 10
        lines = wrap_text(brief.product_name, width_px=width, fontsize=fontsize).split("\n")
        line_px = round(fontsize * 1.25)
        middle = round(height * (0.36 if last else 0.24))
        top = middle - len(lines) * line_px // 2
        return cls(lines, unit, fontsize, line_px, top, top + len(lines) * line_px, fontsize // 3)


def _even(value: float) -> int:
    return int(value) // 2 * 2

"""Stage 4, ``compositing`` (progress 75–100): clips, voice and call to action become one MP4.

One FFmpeg command: each clip is normalised (scaled and padded to the target size, square
pixels, constant rate, yuv420p) and cut or stretched to its scene's length, the clips are
joined with the concat filter (video only: generated clips often have no audio), the voice is
padded or trimmed to the full length, the captions are drawn from the voice's word timings
(one drawtext per line of each cue, enabled for its time only; :mod:`videoq.captions`) and
written beside the video as WebVTT, and the CTA is drawn over the last seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videoq import captions
from videoq.errors import PermanentError
from videoq.ffmpeg import Font, atomic_output, drawtext, probe, run_ffmpeg, wrap_text
from videoq.types import Result

if TYPE_CHECKING:
    from videoq.ffmpeg import ProgressCallback
    from videoq.settings import Settings
    from videoq.types import Brief, Script, VoiceTrack

#: The call to action is shown for the last this many seconds.
CTA_SECONDS = 3.0
#: The call to action's text and button colours, per style.
CTA_LOOK: dict[str, tuple[str, str]] = {
    "minimal": ("white", "0xef233c@0.95"),
    "bold": ("0xffd60a", "black@0.85"),
    "cinematic": ("0x111111", "0xf4a261@0.95"),
    "playful": ("0x1d1d1d", "0xffbe0b@0.95"),
}
#: Shortest scene when cuts follow the narration; shorter ones keep the script's timing.
MIN_SCENE_S = 0.5
OUTPUT_NAME = "video.mp4"
CAPTIONS_NAME = "captions.vtt"


@dataclass(frozen=True)
class Caption:
    """One line of one cue as the graph draws it: its text file, time span and baseline."""

    textfile: Path
    start_s: float
    end_s: float
    baseline_px: int


def follow_narration(script: Script, voice: VoiceTrack, total_s: float) -> Script:
    """The script with each scene cut where its narration starts in the voice track (when the
    voice provider reported it), so picture and voice change together. The first scene starts
    at 0 and the last ends at ``total_s``; unusable timings leave the script as it was."""
    starts = voice.scene_starts_s
    if starts is None or len(starts) != len(script.scenes) or len(starts) < 2:
        return script
    bounds = [0.0, *starts[1:], total_s]
    lengths = [round(b - a, 3) for a, b in pairwise(bounds)]
    if min(lengths) < MIN_SCENE_S:
        return script
    lengths[-1] = round(total_s - sum(lengths[:-1]), 3)
    scenes = [
        replace(scene, duration_s=length)
        for scene, length in zip(script.scenes, lengths, strict=True)
    ]
    return replace(script, scenes=scenes)


def cta_fontsize(brief: Brief) -> int:
    """Font size of the call to action, relative to the frame."""
    return min(brief.resolution) // 14


def cues_for(brief: Brief, script: Script, voice: VoiceTrack) -> list[captions.Cue]:
    """The captions of the video (none when the brief turns them off or the voice provider
    gave no word timings), never crossing a cut of ``script`` (as cut by
    :func:`follow_narration`)."""
    if not brief.captions or not voice.words:
        return []
    bounds, at = [], 0.0
    for scene in script.scenes[:-1]:
        at += scene.duration_s
        bounds.append(at)
    total = float(brief.duration_s)
    return [
        replace(cue, end_s=min(cue.end_s, total))
        for cue in captions.make_cues(voice.words, bounds)
        if cue.start_s < total
    ]


def caption_lines(
    brief: Brief, cues: list[captions.Cue], workdir: Path, *, cta_lines: int
) -> list[Caption]:
    """Write each line of each cue to ``workdir/captions/`` and place it: lines stacked up
    from the style's safe bottom, or above the CTA while it shows."""
    look = captions.layout(brief.style, brief.aspect_ratio, brief.resolution)
    height = brief.resolution[1]
    cta_start = max(0.0, brief.duration_s - CTA_SECONDS)
    fontsize = cta_fontsize(brief)
    cta_top = height - height // 8 - round(cta_lines * fontsize * 1.25) - fontsize // 3
    folder = workdir / "captions"
    if cues:
        folder.mkdir(exist_ok=True)
    drawn = []
    for i, cue in enumerate(cues):
        lines = captions.split_lines(cue.text, look.columns)
        bottom = look.bottom_px
        if cta_lines and cue.end_s > cta_start:
            bottom = min(bottom, cta_top - look.fontsize // 2)
        for j, line in enumerate(lines):
            textfile = folder / f"cue_{i:03d}_{j}.txt"
            textfile.write_text(line, encoding="utf-8")
            # DejaVu's descent is ~0.24 em: the lowest line's descenders and box end at bottom.
            descent = round(look.fontsize * 0.24) + look.box_px
            baseline = bottom - (len(lines) - 1 - j) * look.line_px - descent
            drawn.append(Caption(textfile, cue.start_s, cue.end_s, baseline))
    return drawn


def caption_filters(brief: Brief, lines: list[Caption], font: Font) -> list[str]:
    """One drawtext per caption line, enabled during its cue only (off its cue, FFmpeg passes
    the frame through it untouched)."""
    look = captions.layout(brief.style, brief.aspect_ratio, brief.resolution)
    filters = []
    for line in lines:
        options: dict[str, str | int | float] = {
            "fontsize": look.fontsize,
            "fontcolor": look.fontcolor,
            "x": "(w-text_w)/2",
            "y": f"{line.baseline_px}-ascent",
        }
        if look.border_px:
            options |= {"borderw": look.border_px, "bordercolor": look.bordercolor}
        if look.boxcolor:
            options |= {"box": 1, "boxcolor": look.boxcolor, "boxborderw": look.box_px}
        if look.fade_s:
            options["alpha"] = f"'min(1,(t-{line.start_s:.3f})/{look.fade_s})'"
        options["enable"] = f"'between(t,{line.start_s:.3f},{line.end_s:.3f})'"
        filters.append(drawtext(line.textfile, font, **options))
    return filters


def build_filtergraph(
    brief: Brief,
    script: Script,
    clip_count: int,
    *,
    fps: int,
    cta: tuple[Path, Font] | None,
    captions_drawn: Sequence[str] = (),
) -> str:
    """The ``-filter_complex`` graph; inputs are the clips, then the voice. Outputs [v], [a].
    ``captions_drawn`` are the captions' filters (:func:`caption_filters`), drawn under the
    CTA."""
    width, height = brief.resolution
    total = float(brief.duration_s)
    chains = []
    for i, scene in enumerate(script.scenes[:clip_count]):
        length = f"{scene.duration_s:.3f}"
        chains.append(
            f"[{i}:v]scale={width}:{height}:force_original_aspect_ratio=decrease"
            ":force_divisible_by=2,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,fps={fps},"
            # A clip shorter than its scene holds its last frame; a longer one is cut.
            f"format=yuv420p,tpad=stop_mode=clone:stop_duration={length},"
            f"trim=duration={length},setpts=PTS-STARTPTS[v{i}]"
        )
    joined = "".join(f"[v{i}]" for i in range(clip_count))
    video = f"{joined}concat=n={clip_count}:v=1:a=0"
    video += "".join("," + f for f in captions_drawn)
    if cta is not None:
        textfile, font = cta
        fontsize = cta_fontsize(brief)
        start = max(0.0, total - CTA_SECONDS)
        video += "," + drawtext(
            textfile,
            font,
            fontsize=fontsize,
            fontcolor=CTA_LOOK.get(brief.style, CTA_LOOK["minimal"])[0],
            box=1,
            boxcolor=CTA_LOOK.get(brief.style, CTA_LOOK["minimal"])[1],
            boxborderw=fontsize // 3,
            x="(w-text_w)/2",
            y=f"h-text_h-{height // 8}",
            enable=f"'gte(t,{start:.3f})'",
        )
    chains.append(f"{video}[v]")
    chains.append(
        f"[{clip_count}:a]aformat=sample_rates=48000:channel_layouts=stereo,"
        f"apad=whole_dur={total:.3f},atrim=duration={total:.3f}[a]"
    )
    return ";".join(chains)


def encoder_args(settings: Settings) -> list[str]:
    """Output options: H.264 (libx264, ``settings.ffmpeg_preset``, CRF ``settings.ffmpeg_crf``,
    yuv420p) and AAC at 128 kb/s in an MP4 with its index first (faststart): a file every
    browser and phone plays, encoded for speed at good quality (docs/decisions.md, Media)."""
    return [
        *("-c:v", "libx264", "-preset", settings.ffmpeg_preset),
        *("-crf", str(settings.ffmpeg_crf), "-pix_fmt", "yuv420p"),
        *("-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"),
    ]


def command(
    brief: Brief,
    script: Script,
    voice: VoiceTrack,
    clips: list[Path],
    *,
    settings: Settings,
    workdir: Path,
    font: Font | None,
    output: Path,
) -> list[str]:
    """FFmpeg's arguments (after the global options :func:`ffmpeg_command` adds) that
    composite ``clips`` and ``voice`` into ``output``.

    Writes ``workdir/cta.txt`` and ``workdir/captions/``, the text the graph draws, when there
    is a CTA or there are captions, and a font.
    """
    if len(clips) != len(script.scenes):
        raise PermanentError(f"{len(clips)} clips for {len(script.scenes)} scenes")
    script = follow_narration(script, voice, float(brief.duration_s))
    cta: tuple[Path, Font] | None = None
    cta_lines = 0
    if brief.cta_text and brief.cta_text.strip() and font is not None:
        # The text goes through a file so that nothing the customer wrote is ever parsed as
        # part of the filtergraph.
        textfile = workdir / "cta.txt"
        text = wrap_text(brief.cta_text, width_px=brief.resolution[0], fontsize=cta_fontsize(brief))
        textfile.write_text(text, encoding="utf-8")
        cta, cta_lines = (textfile, font), text.count("\n") + 1
    drawn: list[str] = []
    if font is not None:
        cues = cues_for(brief, script, voice)
        lines = caption_lines(brief, cues, workdir, cta_lines=cta_lines)
        drawn = caption_filters(brief, lines, font)
    graph = build_filtergraph(
        brief, script, len(clips), fps=settings.fps, cta=cta, captions_drawn=drawn
    )
    return [
        *(arg for clip in clips for arg in ("-i", str(clip))),
        *("-i", str(voice.path)),
        *("-filter_complex", graph, "-map", "[v]", "-map", "[a]"),
        *("-t", f"{brief.duration_s:.3f}", "-r", str(settings.fps)),
        *encoder_args(settings),
        str(output),
    ]


async def run(
    brief: Brief,
    script: Script,
    voice: VoiceTrack,
    clips: list[Path],
    *,
    settings: Settings,
    workdir: Path,
    font: Font | None,
    on_progress: ProgressCallback,
) -> Result:
    """Write ``workdir/video.mp4`` (:func:`command`) and, when it has captions,
    ``workdir/captions.vtt``; describe them.

    ``font`` draws the CTA and the captions; with None (no usable font on this machine) they
    are left out of the picture rather than failing the job (the WebVTT file is still
    written).
    """
    path = workdir / OUTPUT_NAME
    with atomic_output(path) as tmp:
        args = command(
            brief, script, voice, clips, settings=settings, workdir=workdir, font=font, output=tmp
        )
        await run_ffmpeg(
            args, settings=settings, duration_s=float(brief.duration_s), on_progress=on_progress
        )
    info = await probe(path, settings)
    cues = cues_for(brief, follow_narration(script, voice, float(brief.duration_s)), voice)
    vtt: Path | None = None
    if cues:
        vtt = workdir / CAPTIONS_NAME
        with atomic_output(vtt) as tmp:
            tmp.write_text(captions.to_vtt(cues), encoding="utf-8")
    return Result(
        video_path=path,
        duration_s=info.duration_s,
        size_bytes=path.stat().st_size,
        captions_path=vtt,
    )


def to_output(result: Result) -> dict[str, Any]:
    """The checkpoint for the finished video (and its captions' file)."""
    output: dict[str, Any] = {
        "video_path": str(result.video_path),
        "duration_s": result.duration_s,
        "size_bytes": result.size_bytes,
    }
    if result.captions_path is not None:
        output["captions_path"] = str(result.captions_path)
    return output


def from_output(output: dict[str, Any]) -> Result:
    """The finished video recorded in a checkpoint."""
    vtt = output.get("captions_path")
    return Result(
        video_path=Path(output["video_path"]),
        duration_s=float(output["duration_s"]),
        size_bytes=int(output["size_bytes"]),
        captions_path=Path(vtt) if vtt else None,
    )


def artifacts(output: dict[str, Any]) -> list[Path]:
    """Files a checkpointed output refers to: the video, and its captions when it has any."""
    result = from_output(output)
    return [result.video_path, *([result.captions_path] if result.captions_path else [])]

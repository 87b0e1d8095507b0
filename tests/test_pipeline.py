"""The offline pipeline end to end: real MP4s checked with PyAV, checkpoints, progress, errors."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg
import pytest

from videoq.errors import FFmpegError, RetryableError
from videoq.pipeline import STAGES, MemoryCheckpoints, compositing, run_pipeline
from videoq.providers import Providers, offline_providers
from videoq.providers.offline import OfflineScriptProvider, OfflineVideoProvider
from videoq.settings import Settings
from videoq.types import RESOLUTIONS, Brief, Result, Scene, Script, VoiceTrack

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture
def settings() -> Settings:
    return Settings(ffmpeg_path=FFMPEG)


@dataclass
class Recorder:
    """A Reporter that keeps every call."""

    events: list[tuple[str, float, str | None]] = field(default_factory=list)

    async def __call__(self, stage: str, progress: float, message: str | None = None) -> None:
        self.events.append((stage, progress, message))

    def values(self) -> list[float]:
        return [progress for _, progress, _ in self.events]

    def stages(self, message: str) -> list[str]:
        return [stage for stage, _, msg in self.events if msg == message]


class CountingProviders:
    """Wraps providers and counts the calls each kind receives."""

    def __init__(self, inner: Providers) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def write_script(self, brief: Brief) -> Script:
        self.calls["script"] += 1
        return await self.inner.script.write_script(brief)

    async def speak(self, script: Script, brief: Brief, out_dir: Path) -> VoiceTrack:
        self.calls["voice"] += 1
        return await self.inner.voice.speak(script, brief, out_dir)

    async def render_scene(self, scene: Scene, index: int, brief: Brief, out_dir: Path) -> Path:
        self.calls["video"] += 1
        return await self.inner.video.render_scene(scene, index, brief, out_dir)

    def providers(self) -> Providers:
        return Providers(script=self, voice=self, video=self)


def inspect(path: Path) -> tuple[str, str, int, int, float]:
    """Video codec, audio codec, width, height, duration: read by PyAV, not by our probe."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert container.duration is not None
        duration = container.duration / av.time_base
        return (
            video.codec_context.name,
            audio.codec_context.name,
            video.codec_context.width,
            video.codec_context.height,
            duration,
        )


def bright_pixels(path: Path, at_s: float, rows: tuple[float, float]) -> int:
    """Count near-white luma samples in a horizontal band (fractions of the height) at ``at_s``."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= at_s:
                plane = frame.planes[0]
                data = bytes(plane)
                top, bottom = int(frame.height * rows[0]), int(frame.height * rows[1])
                return sum(
                    1
                    for y in range(top, bottom, 4)
                    for x in range(0, frame.width, 4)
                    if data[y * plane.line_size + x] > 200
                )
    raise AssertionError(f"no frame at {at_s} s")


def temporary_files(workdir: Path) -> list[str]:
    """Leftovers of atomic_output (there should be none)."""
    return [p.name for p in workdir.iterdir() if ".tmp" in p.name]


def assert_progress_sane(recorder: Recorder) -> None:
    values = recorder.values()
    assert values == sorted(values), values
    assert all(0.0 <= v <= 100.0 for v in values)


@pytest.mark.parametrize("aspect_ratio", sorted(RESOLUTIONS))
async def test_renders_h264_aac_at_the_right_size_and_length(
    settings: Settings, tmp_path: Path, aspect_ratio: str
) -> None:
    brief = Brief("Acme Shoes", cta_text="Shop now", duration_s=5, aspect_ratio=aspect_ratio)
    recorder = Recorder()
    result = await run_pipeline(
        brief,
        settings=settings,
        workdir=tmp_path,
        checkpoints=MemoryCheckpoints(),
        report=recorder,
        providers=offline_providers(settings),
    )
    assert result.video_path == tmp_path / "video.mp4"
    assert result.size_bytes == result.video_path.stat().st_size > 0
    assert result.duration_s == pytest.approx(5, abs=0.5)
    vcodec, acodec, width, height, duration = inspect(result.video_path)
    assert (vcodec, acodec) == ("h264", "aac")
    assert (width, height) == RESOLUTIONS[aspect_ratio]
    assert duration == pytest.approx(5, abs=0.5)
    assert not temporary_files(tmp_path)

    assert_progress_sane(recorder)
    assert recorder.stages("started") == list(STAGES)
    assert recorder.stages("completed") == list(STAGES)
    assert recorder.values()[-1] == 100.0
    # Clips report as they finish (two scenes: half way through video_gen), and FFmpeg's
    # progress during compositing lands in 75–100.
    assert ("video_gen", 62.5, None) in recorder.events
    compositing_ticks = [p for s, p, m in recorder.events if s == "compositing" and m is None]
    assert compositing_ticks and all(75.0 <= p <= 100.0 for p in compositing_ticks)


async def test_fifteen_seconds_has_three_scenes_and_the_right_length(
    settings: Settings, tmp_path: Path
) -> None:
    checkpoints = MemoryCheckpoints()
    brief = Brief("Acme", duration_s=15, aspect_ratio="1:1", prompt="Lighter than air")
    result = await run_pipeline(
        brief,
        settings=settings,
        workdir=tmp_path,
        checkpoints=checkpoints,
        report=Recorder(),
        providers=offline_providers(settings),
    )
    script = Script.from_dict(checkpoints.outputs["script_gen"])
    assert [s.duration_s for s in script.scenes] == [5.0, 5.0, 5.0]
    assert inspect(result.video_path)[4] == pytest.approx(15, abs=0.5)


async def test_second_run_skips_completed_stages(settings: Settings, tmp_path: Path) -> None:
    counting = CountingProviders(offline_providers(settings))
    checkpoints = MemoryCheckpoints()
    brief = Brief("Acme", duration_s=5, aspect_ratio="1:1")

    async def run(recorder: Recorder) -> Result:
        return await run_pipeline(
            brief,
            settings=settings,
            workdir=tmp_path,
            checkpoints=checkpoints,
            report=recorder,
            providers=counting.providers(),
        )

    first = await run(Recorder())
    assert counting.calls == {"script": 1, "voice": 1, "video": 2}
    # Checkpoints must survive a trip through JSON (they are stored in PostgreSQL).
    assert json.loads(json.dumps(checkpoints.outputs)) == checkpoints.outputs

    recorder = Recorder()
    second = await run(recorder)
    assert counting.calls == {"script": 1, "voice": 1, "video": 2}
    assert recorder.stages("skipped") == list(STAGES)
    assert recorder.stages("started") == []
    assert second == first
    assert_progress_sane(recorder)

    # A lost voice file is made again, and so is the video that used it; the clips are not.
    os.unlink(checkpoints.outputs["voice_gen"]["path"])
    recorder = Recorder()
    third = await run(recorder)
    assert counting.calls == {"script": 1, "voice": 2, "video": 2}
    assert recorder.stages("skipped") == ["script_gen", "video_gen"]
    assert recorder.stages("started") == ["voice_gen", "compositing"]
    assert_progress_sane(recorder)
    assert inspect(third.video_path)[4] == pytest.approx(5, abs=0.5)


async def test_scenes_render_concurrently(settings: Settings, tmp_path: Path) -> None:
    inner = offline_providers(settings)
    barrier = asyncio.Barrier(2)  # the 5 s brief has two scenes

    class WaitForAll:
        async def render_scene(self, scene: Scene, index: int, brief: Brief, out: Path) -> Path:
            # Rendered one after another, the first scene would wait here forever.
            await barrier.wait()
            return await inner.video.render_scene(scene, index, brief, out)

    providers = Providers(script=inner.script, voice=inner.voice, video=WaitForAll())
    result = await run_pipeline(
        Brief("Acme", duration_s=5, aspect_ratio="1:1"),
        settings=Settings(ffmpeg_path=FFMPEG, stage_timeout_s=30),
        workdir=tmp_path,
        checkpoints=MemoryCheckpoints(),
        report=Recorder(),
        providers=providers,
    )
    assert result.video_path.exists()


async def test_voice_and_video_run_at_once_with_progress_that_never_goes_back(
    settings: Settings, tmp_path: Path
) -> None:
    inner = offline_providers(settings)
    barrier = asyncio.Barrier(3)  # the voice and both scenes of a 5 s brief

    class Voice:
        async def speak(self, script: Script, brief: Brief, out_dir: Path) -> VoiceTrack:
            # Run one stage after the other, the voice would wait here forever.
            await barrier.wait()
            return await inner.voice.speak(script, brief, out_dir)

    class Video:
        async def render_scene(self, scene: Scene, index: int, brief: Brief, out: Path) -> Path:
            await barrier.wait()
            return await inner.video.render_scene(scene, index, brief, out)

    recorder = Recorder()
    result = await run_pipeline(
        Brief("Acme", duration_s=5, aspect_ratio="1:1"),
        settings=Settings(ffmpeg_path=FFMPEG, stage_timeout_s=30),
        workdir=tmp_path,
        checkpoints=MemoryCheckpoints(),
        report=recorder,
        providers=Providers(script=inner.script, voice=Voice(), video=Video()),
    )
    assert result.video_path.exists()
    assert recorder.stages("started") == ["script_gen", "voice_gen", "video_gen", "compositing"]
    assert sorted(recorder.stages("completed")) == sorted(STAGES)
    assert_progress_sane(recorder)
    # Both started at 25; together they reach 75 before compositing starts.
    starts = {stage: p for stage, p, msg in recorder.events if msg == "started"}
    assert starts == {"script_gen": 0.0, "voice_gen": 25.0, "video_gen": 25.0, "compositing": 75.0}


async def test_ffmpeg_failure_surfaces_with_returncode(tmp_path: Path) -> None:
    broken = tmp_path / "bin" / "ffmpeg"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'synthetic ffmpeg failure' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    checkpoints = MemoryCheckpoints()
    recorder = Recorder()
    with pytest.raises(FFmpegError) as caught:
        await run_pipeline(
            Brief("Acme", duration_s=5),
            settings=Settings(ffmpeg_path=str(broken)),
            workdir=tmp_path / "work",
            checkpoints=checkpoints,
            report=recorder,
            providers=offline_providers(Settings(ffmpeg_path=str(broken))),
        )
    assert caught.value.returncode == 1
    assert "synthetic ffmpeg failure" in caught.value.stderr_tail
    assert list(checkpoints.outputs) == ["script_gen"]  # nothing recorded for the failed stage
    assert recorder.stages("completed") == ["script_gen"]


async def test_stage_timeout_is_retryable(settings: Settings, tmp_path: Path) -> None:
    class Stuck:
        async def write_script(self, brief: Brief) -> Script:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    inner = offline_providers(settings)
    with pytest.raises(RetryableError):
        await run_pipeline(
            Brief("Acme", duration_s=5),
            settings=Settings(ffmpeg_path=FFMPEG, stage_timeout_s=0.2),
            workdir=tmp_path,
            checkpoints=MemoryCheckpoints(),
            report=Recorder(),
            providers=Providers(script=Stuck(), voice=inner.voice, video=inner.video),
        )


async def test_hostile_cta_is_drawn_as_text(settings: Settings, tmp_path: Path) -> None:
    workdir = tmp_path / "job: it's [1], a; test"
    cta = "';[0:v]drawtext=text=x %{pts} \\ : ,"
    result = await run_pipeline(
        Brief("Acme", cta_text=cta, duration_s=5, aspect_ratio="9:16"),
        settings=settings,
        workdir=workdir,
        checkpoints=MemoryCheckpoints(),
        report=Recorder(),
        providers=offline_providers(settings),
    )
    vcodec, acodec, width, height, duration = inspect(result.video_path)
    assert (vcodec, acodec, width, height) == ("h264", "aac", 1080, 1920)
    assert duration == pytest.approx(5, abs=0.5)
    # The CTA sits in the lower part of the frame during the last 3 seconds only.
    band = (0.70, 0.90)
    assert bright_pixels(result.video_path, 1.0, band) == 0
    assert bright_pixels(result.video_path, 4.5, band) > 50


async def test_missing_fonts_never_break_rendering(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A configured font file that does not exist: fall back to another font.
    result = await run_pipeline(
        Brief("Acme", cta_text="Buy", duration_s=5, aspect_ratio="1:1"),
        settings=Settings(ffmpeg_path=FFMPEG, font_file=tmp_path / "missing.ttf"),
        workdir=tmp_path / "a",
        checkpoints=MemoryCheckpoints(),
        report=Recorder(),
        providers=offline_providers(
            Settings(ffmpeg_path=FFMPEG, font_file=tmp_path / "missing.ttf")
        ),
    )
    assert inspect(result.video_path)[:2] == ("h264", "aac")

    # No font at all (no files, fontconfig empty): scenes and video render without text.
    empty = tmp_path / "fonts.conf"
    empty.write_text('<?xml version="1.0"?><fontconfig></fontconfig>')
    monkeypatch.setenv("FONTCONFIG_FILE", str(empty))
    fontless = Providers(
        script=OfflineScriptProvider(),
        voice=offline_providers(settings).voice,
        video=OfflineVideoProvider(settings, font_candidates=()),
    )
    checkpoints = MemoryCheckpoints()
    brief = Brief("Acme", cta_text="Buy", duration_s=5, aspect_ratio="16:9")
    workdir = tmp_path / "b"
    await run_pipeline(
        brief,
        settings=settings,
        workdir=workdir,
        checkpoints=checkpoints,
        report=Recorder(),
        providers=fontless,
    )
    assert not list(workdir.glob("scene_*.txt"))  # no text was drawn on the scenes
    final = await compositing.run(
        brief,
        Script.from_dict(checkpoints.outputs["script_gen"]),
        VoiceTrack.from_dict(checkpoints.outputs["voice_gen"]),
        [Path(p) for p in checkpoints.outputs["video_gen"]["clips"]],
        settings=settings,
        workdir=workdir,
        font=None,
        on_progress=_ignore,
    )
    assert inspect(final.video_path)[2:4] == (1920, 1080)


async def _ignore(fraction: float) -> None:
    return None


async def test_offline_script_is_deterministic_and_adds_up() -> None:
    provider = OfflineScriptProvider()
    for duration in (1, 5, 7, 10, 15, 31, 60):
        brief = Brief("Acme", duration_s=duration, prompt="fast", cta_text="Go")
        script = await provider.write_script(brief)
        assert script == await provider.write_script(brief)
        assert len(script.scenes) == max(2, round(duration / 5))
        assert sum(s.duration_s for s in script.scenes) == pytest.approx(duration, abs=1e-9)
        assert Script.from_dict(json.loads(json.dumps(script.to_dict()))) == script


def test_value_types_round_trip() -> None:
    voice = VoiceTrack(path=Path("/tmp/voice.m4a"), duration_s=5.0)
    assert VoiceTrack.from_dict(json.loads(json.dumps(voice.to_dict()))) == voice
    data: dict[str, Any] = {"title": "t", "scenes": [{"narration": "n", "visual_prompt": "v"}]}
    data["scenes"][0]["duration_s"] = 2
    assert Script.from_dict(data).scenes[0].duration_s == 2.0

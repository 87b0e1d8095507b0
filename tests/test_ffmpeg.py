"""videoq.ffmpeg: running FFmpeg as a child that reports progress, fails loudly and never leaks."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import av
import imageio_ffmpeg
import pytest

from videoq.errors import FFmpegError, RetryableError
from videoq.ffmpeg import (
    Font,
    atomic_output,
    drawtext,
    escape_value,
    find_font,
    parse_ffmpeg_info,
    probe,
    run_ffmpeg,
)
from videoq.settings import Settings

# imageio-ffmpeg ships no ffprobe, so pinning its binary exercises the stderr-parsing probe.
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
ENCODE = ("-c:v", "libx264", "-preset", "ultrafast")
HAS_FONTCONFIG = Path("/etc/fonts/fonts.conf").exists()


@pytest.fixture
def settings() -> Settings:
    return Settings(ffmpeg_path=FFMPEG)


def fake_ffmpeg(tmp_path: Path, body: str, *, name: str = "ffmpeg") -> str:
    """An executable standing in for FFmpeg: a Python script with ``body``."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_run_ffmpeg_writes_output_and_reports_progress(
    settings: Settings, tmp_path: Path
) -> None:
    fractions: list[float] = []

    async def on_progress(fraction: float) -> None:
        fractions.append(fraction)

    out = tmp_path / "clip.mp4"
    with atomic_output(out) as tmp:
        assert tmp.parent == out.parent and tmp.suffix == ".mp4"
        # -re paces the input in real time, so -progress (every 0.5 s) reports partway.
        await run_ffmpeg(
            [*("-re", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=1.5"), *ENCODE, str(tmp)],
            settings=settings,
            duration_s=1.5,
            on_progress=on_progress,
        )
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    assert fractions[-1] == 1.0
    assert any(0.0 < f < 1.0 for f in fractions), fractions


async def test_failure_raises_ffmpeg_error_with_returncode_and_stderr(tmp_path: Path) -> None:
    script = fake_ffmpeg(
        tmp_path, "import sys\nsys.stderr.write('synthetic failure: no encoder\\n')\nsys.exit(3)\n"
    )
    out = tmp_path / "out.mp4"
    with pytest.raises(FFmpegError) as caught, atomic_output(out) as tmp:
        tmp.write_bytes(b"partial")
        await run_ffmpeg(["-i", "x", str(tmp)], settings=Settings(ffmpeg_path=script))
    assert caught.value.returncode == 3
    assert "synthetic failure: no encoder" in caught.value.stderr_tail
    assert os.listdir(tmp_path) == ["ffmpeg"]  # the partial output was removed


async def test_real_ffmpeg_error_carries_returncode(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(FFmpegError) as caught:
        await run_ffmpeg(
            ["-i", str(tmp_path / "missing.mp4"), "-f", "null", "-"], settings=settings
        )
    assert caught.value.returncode not in (0, None)
    assert "missing.mp4" in caught.value.stderr_tail


async def test_missing_binary_is_an_ffmpeg_error(tmp_path: Path) -> None:
    with pytest.raises(FFmpegError):
        await run_ffmpeg(["-version"], settings=Settings(ffmpeg_path=str(tmp_path / "nope")))


async def test_cancellation_stops_real_ffmpeg_and_removes_output(
    settings: Settings, tmp_path: Path
) -> None:
    pids: list[int] = []
    running = asyncio.Event()

    async def on_progress(fraction: float) -> None:
        running.set()

    async def render() -> None:
        with atomic_output(tmp_path / "long.mp4") as tmp:
            await run_ffmpeg(
                [*("-re", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=600"), *ENCODE, str(tmp)],
                settings=settings,
                duration_s=600,
                on_progress=on_progress,
                on_start=pids.append,
            )

    task = asyncio.create_task(render())
    await running.wait()
    os.kill(pids[0], 0)  # still running
    task.cancel()
    # The timeout only turns a hang (a child that never dies) into a failure.
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(20):
            await task
    assert_gone(pids[0])
    assert os.listdir(tmp_path) == []


STUBBORN = """
import signal, sys, time
log = open({log!r}, "a")
def note(event):
    log.write(event + " ")
    log.flush()
def on_term(signum, frame):
    note("TERM")
    if not {ignore_term}:
        sys.exit(255)
signal.signal(signal.SIGTERM, on_term)
print("out_time_us=1000000", flush=True)
print("progress=continue", flush=True)
if sys.stdin.read(1) == "q":
    note("q")
    if not {ignore_q}:
        sys.exit(0)
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize(
    ("ignore_q", "ignore_term", "expected_log"),
    [(False, False, "q "), (True, False, "q TERM "), (True, True, "q TERM ")],
    ids=["q", "terminate", "kill"],
)
async def test_kill_sequence_escalates(
    tmp_path: Path, ignore_q: bool, ignore_term: bool, expected_log: str
) -> None:
    log = tmp_path / "signals.log"
    log.touch()
    body = STUBBORN.format(log=str(log), ignore_q=ignore_q, ignore_term=ignore_term)
    settings = Settings(ffmpeg_path=fake_ffmpeg(tmp_path, body))
    pids: list[int] = []
    running = asyncio.Event()

    async def on_progress(fraction: float) -> None:
        running.set()

    task = asyncio.create_task(
        run_ffmpeg(
            [],
            settings=settings,
            duration_s=10,
            on_progress=on_progress,
            on_start=pids.append,
            grace_s=0.3,
        )
    )
    await running.wait()
    task.cancel()
    # The timeout only turns a hang (a child that never dies) into a failure.
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(20):
            await task
    assert_gone(pids[0])
    assert log.read_text() == expected_log


async def test_timeout_stops_child_and_is_retryable(settings: Settings) -> None:
    pids: list[int] = []
    with pytest.raises(RetryableError):
        await run_ffmpeg(
            ["-re", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=600", "-f", "null", "-"],
            settings=settings,
            timeout_s=0.5,
            on_start=pids.append,
        )
    assert_gone(pids[0])


async def test_failing_progress_callback_stops_child(settings: Settings) -> None:
    pids: list[int] = []

    async def on_progress(fraction: float) -> None:
        raise RuntimeError("reporter is down")

    with pytest.raises(RuntimeError, match="reporter is down"):
        await run_ffmpeg(
            ["-re", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=600", "-f", "null", "-"],
            settings=settings,
            duration_s=600,
            on_progress=on_progress,
            on_start=pids.append,
        )
    assert_gone(pids[0])


async def test_probe_without_ffprobe_matches_pyav(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "av.mp4"
    await run_ffmpeg(
        [
            *("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=2"),
            *("-f", "lavfi", "-i", "sine=d=2"),
            *ENCODE,
            *("-c:a", "aac", str(out)),
        ],
        settings=settings,
    )
    info = await probe(out, settings)
    with av.open(str(out)) as container:
        assert container.duration is not None
        assert info.duration_s == pytest.approx(container.duration / av.time_base, abs=0.02)
    assert (info.width, info.height) == (320, 240)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")


async def test_probe_of_garbage_is_an_ffmpeg_error(settings: Settings, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(FFmpegError):
        await probe(junk, settings)


def test_parse_ffmpeg_info() -> None:
    stderr = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'a.mp4':
  Duration: 00:01:05.52, start: 0.000000, bitrate: 147 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), \
1080x1920 [SAR 1:1 DAR 9:16], 144 kb/s, 30 fps, 30 tbr, 15360 tbn (default)
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp
At least one output file must be specified
"""
    info = parse_ffmpeg_info(stderr)
    assert info is not None
    assert info.duration_s == pytest.approx(65.52)
    assert (info.width, info.height, info.video_codec, info.audio_codec) == (
        1080,
        1920,
        "h264",
        "aac",
    )
    assert parse_ffmpeg_info("Invalid data found when processing input") is None


def test_escape_value_follows_both_filtergraph_levels() -> None:
    # The example from FFmpeg's "Notes on filtergraph escaping".
    assert escape_value("this is a 'string': may contain one, or more, special characters") == (
        r"this is a \\\'string\\\'\\: may contain one\, or more\, special characters"
    )


async def test_drawtext_reads_hostile_text_from_a_file_in_a_hostile_dir(
    settings: Settings, tmp_path: Path
) -> None:
    font = await find_font(settings)
    assert font is not None
    odd = tmp_path / "it's: [odd], dir; \\ yes"
    odd.mkdir()
    textfile = odd / "t.txt"
    textfile.write_text("';[0:v]drawtext=text=x %{pts} \\ : , [a]", encoding="utf-8")
    filter_ = drawtext(textfile, font, fontsize=20, fontcolor="white")
    await run_ffmpeg(
        ["-f", "lavfi", "-i", "color=s=320x240:d=0.2", "-vf", filter_, "-f", "null", "-"],
        settings=settings,
    )


async def test_find_font_prefers_existing_settings_font(tmp_path: Path) -> None:
    real = await find_font(Settings(ffmpeg_path=FFMPEG))
    if real is None or real.file is None:
        pytest.skip("no font file on this machine")
    assert await find_font(Settings(ffmpeg_path=FFMPEG, font_file=real.file), ()) == real
    # A configured font that does not exist falls back instead of breaking drawtext.
    fallback = await find_font(Settings(ffmpeg_path=FFMPEG, font_file=tmp_path / "gone.ttf"))
    assert fallback is not None and fallback.file != tmp_path / "gone.ttf"


async def test_find_font_uses_fontconfig_then_gives_up(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if HAS_FONTCONFIG:
        assert await find_font(settings, candidates=()) == Font()
    empty = tmp_path / "fonts.conf"
    empty.write_text('<?xml version="1.0"?><fontconfig></fontconfig>')
    monkeypatch.setenv("FONTCONFIG_FILE", str(empty))  # a machine with no fonts at all
    assert await find_font(settings, candidates=()) is None

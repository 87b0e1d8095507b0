"""Real media files for mock providers (made once per process with FFmpeg's lavfi sources),
so that what the mocks return can go through compositing like the real thing."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg

from videoq.children import preexec


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec(),
    )


@functools.cache
def _dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="videoq-mock-media-"))


@functools.cache
def clip_mp4() -> bytes:
    """A 1 s 192×192 H.264 clip with no audio (text-to-video outputs often have none); small,
    so that benchmarks measure scheduling rather than loopback copying."""
    path = _dir() / "clip.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=s=192x192:r=12:d=1",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path),
    )  # fmt: skip
    return path.read_bytes()


@functools.cache
def speech_mp3() -> bytes:
    """A 4 s beeping tone as MP3 (mp3_44100_128), standing in for speech."""
    path = _dir() / "voice.mp3"
    _ffmpeg(
        "-f", "lavfi", "-i", "sine=f=220:b=4:r=44100:d=4",
        "-c:a", "libmp3lame", "-b:a", "128k", str(path),
    )  # fmt: skip
    return path.read_bytes()


SPEECH_SECONDS = 4.0

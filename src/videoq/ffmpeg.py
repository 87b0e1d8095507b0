"""FFmpeg: locating the binary, probing files, and running it as a well-behaved child process.

Every invocation is an argument list (never a shell). :func:`run_ffmpeg` reads ``-progress``
blocks from stdout while draining stderr, and on cancellation or timeout stops the child with
'q' on stdin, then SIGTERM, then SIGKILL, so no FFmpeg outlives the coroutine that started it;
and every child is tied to its process (:mod:`videoq.children`), so none outlives a worker that
is killed.
Outputs are written under a temporary name and renamed on success (:func:`atomic_output`).
FFmpeg is the worker's CPU-bound work: at most ``ffmpeg_slots`` runs at once per process
(:func:`cpu_slots`), granted fairly between tenants (:mod:`videoq.fair`), however many jobs
the worker holds while they wait on providers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import textwrap
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videoq import tracing
from videoq.children import preexec
from videoq.errors import FFmpegError, PermanentError, RetryableError
from videoq.fair import FairSlots, spent
from videoq.settings import Settings

ProgressCallback = Callable[[float], Awaitable[None]]

#: The font shipped with videoq (DejaVu Sans Bold, its licence beside it): the last candidate,
#: so that text is drawn on a machine with no fonts at all.
BUNDLED_FONT = Path(__file__).parent / "fonts" / "DejaVuSans-Bold.ttf"
#: Fonts tried, in order, when ``settings.font_file`` is unset or missing.
FONT_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf"),
    Path("/usr/share/fonts/liberation-sans/LiberationSans-Bold.ttf"),
    Path("/usr/share/fonts/noto/NotoSans-Bold.ttf"),
    Path("/System/Library/Fonts/Supplemental/Arial Bold.ttf"),
    Path("/Library/Fonts/Arial.ttf"),
    Path("C:/Windows/Fonts/arialbd.ttf"),
    BUNDLED_FONT,
)

_STDERR_TAIL_BYTES = 2048
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, FairSlots]] = (
    weakref.WeakKeyDictionary()
)
_PROBE_TIMEOUT_S = 30.0


def ffmpeg_exe(settings: Settings) -> str:
    """The FFmpeg binary: ``settings.ffmpeg_path``, else ``ffmpeg`` on PATH, else imageio-ffmpeg."""
    if settings.ffmpeg_path:
        return settings.ffmpeg_path
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise PermanentError("no ffmpeg on PATH and imageio-ffmpeg is not installed") from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffprobe_exe(settings: Settings) -> str | None:
    """ffprobe next to the configured FFmpeg, else on PATH, else None (imageio-ffmpeg has none)."""
    if settings.ffmpeg_path:
        sibling = Path(settings.ffmpeg_path).with_name("ffprobe")
        return str(sibling) if sibling.is_file() else None
    return shutil.which("ffprobe")


@dataclass(frozen=True)
class Probe:
    """What :func:`probe` learnt about a media file."""

    duration_s: float
    width: int | None
    height: int | None
    video_codec: str | None
    audio_codec: str | None


async def probe(path: Path, settings: Settings) -> Probe:
    """Duration, size and codecs of ``path``: ffprobe when available, else ``ffmpeg -i`` stderr."""
    ffprobe = ffprobe_exe(settings)
    if ffprobe is not None:
        argv = [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams"]
        returncode, out, err = await _capture([*argv, str(path)])
        if returncode != 0:
            raise FFmpegError(
                f"ffprobe failed on {path.name}", returncode=returncode, stderr_tail=err
            )
        return _parse_ffprobe_json(out)
    # Without an output file `ffmpeg -i` exits 1 after printing the input's description.
    returncode, _, err = await _capture([ffmpeg_exe(settings), "-hide_banner", "-i", str(path)])
    parsed = parse_ffmpeg_info(err)
    if parsed is None:
        tail = err[-_STDERR_TAIL_BYTES:]
        raise FFmpegError(f"cannot probe {path.name}", returncode=returncode, stderr_tail=tail)
    return parsed


def _parse_ffprobe_json(text: str) -> Probe:
    import json

    data: dict[str, Any] = json.loads(text)
    streams: list[dict[str, Any]] = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return Probe(
        duration_s=float(data.get("format", {}).get("duration", 0.0)),
        width=int(video["width"]) if video else None,
        height=int(video["height"]) if video else None,
        video_codec=str(video["codec_name"]) if video else None,
        audio_codec=str(audio["codec_name"]) if audio else None,
    )


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: (Video|Audio): ([A-Za-z0-9_]+)(.*)")
_SIZE_RE = re.compile(r"[ ,](\d{2,5})x(\d{2,5})(?=[ ,\[]|$)")


def parse_ffmpeg_info(stderr: str) -> Probe | None:
    """Parse the input description ``ffmpeg -i`` prints; None if it has no duration."""
    match = _DURATION_RE.search(stderr)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    width = height = None
    video_codec = audio_codec = None
    for kind, codec, rest in _STREAM_RE.findall(stderr):
        if kind == "Video" and video_codec is None:
            video_codec = codec
            size = _SIZE_RE.search(rest)
            if size:
                width, height = int(size.group(1)), int(size.group(2))
        elif kind == "Audio" and audio_codec is None:
            audio_codec = codec
    return Probe(
        duration_s=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        width=width,
        height=height,
        video_codec=video_codec,
        audio_codec=audio_codec,
    )


async def _capture(argv: Sequence[str]) -> tuple[int, str, str]:
    """Run a short command to completion; kill it if we are cancelled or it hangs."""
    attributes = {"videoq.ffmpeg.program": Path(argv[0]).name,
                  "videoq.ffmpeg.output": Path(argv[-1]).name}  # fmt: skip
    with tracing.span("ffmpeg probe", attributes):
        proc = await _spawn(argv, stdin=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                out, err = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        tracing.annotate({"process.exit.code": proc.returncode})
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _spawn(argv: Sequence[str], *, stdin: int) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=preexec(),  # dies with the worker, even SIGKILLed (videoq.children)
        )  # fmt: skip
    except OSError as exc:
        raise FFmpegError(f"cannot start {argv[0]}", returncode=None, stderr_tail=str(exc)) from exc


def ffmpeg_command(args: Sequence[str], settings: Settings) -> list[str]:
    """The whole command :func:`run_ffmpeg` runs for ``args``: the binary, the global options
    (quiet, overwrite, ``-progress`` blocks on stdout), then ``args``."""
    return [
        ffmpeg_exe(settings),
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "warning",
        # -y: outputs are fresh temporary names; without it an existing file would make
        # FFmpeg ask on stdin, which is a pipe here, and hang.
        "-y",
        "-progress",
        "pipe:1",
        *args,
    ]


def cpu_slots(settings: Settings) -> FairSlots:
    """This process's FFmpeg slots (``settings.cpu_slots``), shared by every job it runs."""
    limit = settings.cpu_slots
    by_limit = _slots.setdefault(asyncio.get_running_loop(), {})
    if limit not in by_limit:
        by_limit[limit] = FairSlots(limit)
    return by_limit[limit]


async def run_ffmpeg(
    args: Sequence[str],
    *,
    settings: Settings,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    timeout_s: float | None = None,
    on_start: Callable[[int], None] | None = None,
    grace_s: float | None = None,
) -> None:
    """Run FFmpeg with ``args`` (everything after the global options) and wait for it.

    ``on_progress`` receives the fraction done (0–1, non-decreasing), computed from the
    ``out_time_us`` of each ``-progress`` block against ``duration_s``; ``on_start`` receives
    the child's pid. Raises :class:`FFmpegError` on a non-zero exit and
    :class:`RetryableError` when ``timeout_s`` expires (counted from the start of the child, not
    from the wait for a slot). On cancellation, timeout or any error the child is stopped ('q',
    then terminate, then kill, ``grace_s`` apart) before re-raising.
    """
    slots, started = cpu_slots(settings), time.monotonic()
    async with slots.slot():
        granted, busy = time.monotonic(), slots.busy
        try:
            output = _output_name(args)
            attributes = {"videoq.ffmpeg.output": output, "videoq.ffmpeg.media_s": duration_s,
                          "videoq.ffmpeg.slot_wait_s": granted - started}  # fmt: skip
            with tracing.span(f"ffmpeg {_operation(output)}", attributes):
                await _run(args, settings, duration_s, on_progress, timeout_s, on_start, grace_s)
        finally:
            if (account := spent.get()) is not None:
                ran = time.monotonic() - granted
                account.waited_s += granted - started
                account.ran_s += ran
                account.alone_s += ran / busy


#: A temporary output name (:func:`atomic_output`): ``.<stem>.<8 hex>.tmp<suffix>``.
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.[0-9a-f]{8}\.tmp(?P<suffix>\.\w+)?$")


def _output_name(args: Sequence[str]) -> str:
    """The name of the file a run writes (its last argument), as it is once renamed."""
    name = Path(args[-1]).name if args else ""
    found = _TEMPORARY.match(name)
    return found["stem"] + (found["suffix"] or "") if found else name


def _operation(output: str) -> str:
    """What a run makes, named by its output without index or suffix: ``scene``, ``video``."""
    return re.sub(r"[_-]?\d+$", "", Path(output).stem) or "run"


async def _run(
    args: Sequence[str],
    settings: Settings,
    duration_s: float | None,
    on_progress: ProgressCallback | None,
    timeout_s: float | None,
    on_start: Callable[[int], None] | None,
    grace_s: float | None,
) -> None:
    argv = ffmpeg_command(args, settings)
    # stdin is a pipe (not -nostdin) so that 'q' can ask FFmpeg to finish the file and exit.
    proc = await _spawn(argv, stdin=asyncio.subprocess.PIPE)
    if on_start is not None:
        on_start(proc.pid)
    tail = bytearray()
    assert proc.stdout is not None and proc.stderr is not None
    tasks = [
        asyncio.create_task(proc.wait()),
        asyncio.create_task(_drain_tail(proc.stderr, tail)),
        asyncio.create_task(_read_progress(proc.stdout, duration_s, on_progress)),
    ]
    try:
        try:
            async with asyncio.timeout(timeout_s):
                # asyncio.wait (unlike gather) leaves the readers running when we are
                # cancelled, so the pipes keep draining while the child is being stopped.
                finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in finished:
                    task.result()
        except BaseException:
            await _stop(proc, settings.ffmpeg_stop_grace_s if grace_s is None else grace_s)
            raise
    except TimeoutError as exc:
        raise RetryableError(
            f"ffmpeg timed out after {timeout_s} s", code="ffmpeg_timeout"
        ) from exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proc.stdin is not None:
            proc.stdin.close()
    tracing.annotate({"process.exit.code": proc.returncode})
    if proc.returncode != 0:
        raise FFmpegError(
            "ffmpeg failed", returncode=proc.returncode, stderr_tail=tail.decode(errors="replace")
        )


async def _drain_tail(stderr: asyncio.StreamReader, tail: bytearray) -> None:
    """Read stderr to its end, keeping only its tail: a full pipe would block FFmpeg."""
    while chunk := await stderr.read(4096):
        tail.extend(chunk)
        del tail[:-_STDERR_TAIL_BYTES]


async def _read_progress(
    stdout: asyncio.StreamReader, duration_s: float | None, on_progress: ProgressCallback | None
) -> None:
    """Turn ``-progress pipe:1`` blocks into fractions done (0–1, non-decreasing)."""
    done = 0.0
    out_time_us: int | None = None
    while line := await stdout.readline():
        key, _, value = line.decode(errors="replace").strip().partition("=")
        if key == "out_time_us":
            # Any value may be N/A, and the first blocks can be negative (encoder delay).
            with contextlib.suppress(ValueError):
                out_time_us = int(value)
        elif key == "progress":
            if value == "end":
                fraction = 1.0
            elif duration_s and out_time_us is not None:
                fraction = min(1.0, max(0.0, out_time_us / 1e6 / duration_s))
            else:
                continue
            if fraction > done and on_progress is not None:
                done = fraction
                await on_progress(fraction)


async def _stop(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """Stop the child: 'q' (FFmpeg finishes the file, exits 0), then SIGTERM, then SIGKILL."""
    if proc.returncode is not None:
        return
    try:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write(b"q")
                await proc.stdin.drain()
        for signal_next in (proc.terminate, proc.kill):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace_s)
                return
            with contextlib.suppress(ProcessLookupError):
                signal_next()
        await proc.wait()
    except asyncio.CancelledError:
        # Cancelled again while stopping: no more patience, but never leave the child running.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so FFmpeg picks the same muxer);
    rename it to ``path`` if the block succeeds, delete it otherwise."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_GRAPH_SPECIAL = re.compile(r"([\\'\[\],;])")
_OPTION_SPECIAL = re.compile(r"([\\':])")


def escape_value(value: str) -> str:
    """Escape ``value`` for use as a filter option inside a ``-filter_complex`` graph.

    Two levels, as the FFmpeg filtergraph docs describe: the option value (``\\ ' :``), then
    the graph description (``\\ ' [ ] , ;``). Used for paths; user text never goes into a
    graph at all but into a file read through drawtext's ``textfile=``.
    """
    return _GRAPH_SPECIAL.sub(r"\\\1", _OPTION_SPECIAL.sub(r"\\\1", value))


@dataclass(frozen=True)
class Font:
    """A font for drawtext: a file, or (``file`` None) a fontconfig family name."""

    file: Path | None = None
    family: str = "Sans"

    def option(self) -> str:
        """The drawtext option selecting this font, escaped for a filtergraph."""
        if self.file is not None:
            return f"fontfile={escape_value(str(self.file))}"
        return f"font={escape_value(self.family)}"


async def find_font(
    settings: Settings, candidates: Sequence[Path] = FONT_CANDIDATES
) -> Font | None:
    """A font drawtext can use: ``settings.font_file`` if it exists, else the first existing
    candidate, else fontconfig's ``Sans`` if FFmpeg can load it, else None (draw no text)."""
    for path in (settings.font_file, *candidates):
        if path is not None and path.is_file():
            return Font(file=path)
    # Without any font, drawtext fails the whole command ("Cannot find a valid font"), so
    # check fontconfig once with a one-frame render before relying on it.
    fallback = Font()
    check = f"color=s=32x32:d=0.04,drawtext={fallback.option()}:text=x"
    argv = [ffmpeg_exe(settings), "-hide_banner", "-nostdin", "-loglevel", "error"]
    returncode, _, _ = await _capture([*argv, "-f", "lavfi", "-i", check, "-f", "null", "-"])
    return fallback if returncode == 0 else None


def drawtext(textfile: Path, font: Font, **options: str | int | float) -> str:
    """A drawtext filter that reads its text from ``textfile`` with no %{...} expansion.

    ``options`` are trusted filter options (sizes, colours, expressions) written as given.
    """
    parts = [f"textfile={escape_value(str(textfile))}", font.option(), "expansion=none"]
    parts += [f"{key}={value}" for key, value in options.items()]
    return "drawtext=" + ":".join(parts)


def wrap_text(text: str, *, width_px: int, fontsize: int) -> str:
    """``text`` broken into lines that fit ``width_px`` at ``fontsize`` (drawtext never wraps).

    Assumes about 0.65 em per glyph (bold sans), leaving a margin of ~15% of the width.
    """
    columns = max(8, int(width_px * 0.85 / (fontsize * 0.65)))
    return textwrap.fill(" ".join(text.split()), columns)


async def grab_frame(
    source: Path, output: Path, *, at_s: float, size: tuple[int, int], settings: Settings
) -> None:
    """Write the frame of ``source`` at ``at_s`` seconds to ``output`` (a JPEG), fitted into
    ``size`` and padded with black as compositing frames a clip: a scene's thumbnail, or the
    finished video's poster. Written under a temporary name, then renamed."""
    with atomic_output(output) as tmp:
        await run_ffmpeg(frame_args(source, tmp, at_s=at_s, size=size), settings=settings)


def frame_args(source: Path, output: Path, *, at_s: float, size: tuple[int, int]) -> list[str]:
    """The arguments of :func:`grab_frame`'s FFmpeg run, writing straight to ``output``."""
    width, height = size
    fit = (
        f"scale={width}:{height}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
        f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1"
    )
    return [
        *("-ss", f"{max(0.0, at_s):.3f}", "-i", str(source), "-an", "-vf", fit),
        *("-frames:v", "1", "-q:v", "3", "-update", "1", str(output)),
    ]

"""Compositing: our compositing stage against the same FFmpeg command run by hand.

    python -m bench.compositing [--reps 5] [--quick]

The inputs are made once by the offline providers: a 15 s 1080×1920 brief with a call to
action (three clips and a voice track; ``--quick``: 4 s, two clips). Each repetition then
times both sides, in alternating order:

- **videoq**: the stage as the worker runs it, ``run_pipeline`` with the first three stages
  checkpointed so that only compositing runs: font lookup, the CTA's text file, FFmpeg with
  its ``-progress`` blocks read into the progress callback and stderr drained, the rename of
  the output, the probe of the result.
- **by hand**: the argv that stage runs (``compositing.command`` inside ``ffmpeg_command``,
  the output written to another file), run with ``subprocess.run``.

Goal (issue 7): videoq ≤ 1.05× by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import summary, write_section
from videoq.children import preexec
from videoq.ffmpeg import ffmpeg_command, find_font, frame_args
from videoq.pipeline import MemoryCheckpoints, compositing, run_pipeline, video_gen
from videoq.pipeline.previews import POSTER_AT
from videoq.providers import offline_providers
from videoq.settings import Settings
from videoq.types import Brief, Script, VoiceTrack

SECTION = "Compositing"
#: Why each encoder option is what it is; the values themselves come from the code.
WHY = {
    "-c:v": "H.264 plays in every browser, phone and upload form; x264 is the software encoder "
    "of it that sets the bar for quality per bit at each speed",
    "-preset": "x264's presets trade encoding time against file size at about the same "
    "quality (CRF); veryfast takes about half the CPU of the default medium, for a larger file "
    "that a 15–60 s video can afford",
    "-crf": "constant quality rather than a bitrate: each scene gets the bits it needs, so "
    "flat scenes cost little; 23 is x264's default (lower: better and larger)",
    "-pix_fmt": "4:2:0 chroma: the only H.264 format that hardware decoders and browsers all "
    "play (x264 would keep 4:4:4 input as 4:4:4, High 4:4:4 profile)",
    "-c:a": "FFmpeg's native AAC encoder: MP4's usual audio, nothing to license or install",
    "-b:a": "plenty for a voice-over with music, and a small share of the file",
    "-movflags": "the index (moov) goes first, so players start before the download ends; it "
    "costs one rewrite of the finished file",
}


class Recorder:
    """The run's Reporter: counts the progress reports, as a worker would receive them."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, stage: str, progress: float, message: str | None = None) -> None:
        self.calls += 1


class _InputsReady(Exception):
    """Raised as compositing starts: the first three stages are checkpointed."""


async def make_inputs(brief: Brief, settings: Settings, workdir: Path) -> MemoryCheckpoints:
    """Run the offline pipeline up to compositing; its checkpoints hold clips, voice, script."""

    async def stop_at_compositing(stage: str, progress: float, message: str | None = None) -> None:
        if stage == "compositing" and message == "started":
            raise _InputsReady

    checkpoints = MemoryCheckpoints()
    try:
        await run_pipeline(
            brief, settings=settings, workdir=workdir, checkpoints=checkpoints,
            report=stop_at_compositing, providers=offline_providers(settings),
        )  # fmt: skip
    except _InputsReady:
        return checkpoints
    raise RuntimeError("the pipeline finished without reaching compositing")


class Clock:
    """Wall time and CPU time (this process and the children it waited for) since it started."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


async def ours(
    brief: Brief, settings: Settings, workdir: Path, inputs: MemoryCheckpoints
) -> tuple[float, float, int]:
    """Wall and CPU seconds for the stage as the worker runs it, and its progress reports."""
    checkpoints = copy.deepcopy(inputs)  # without a compositing checkpoint: it must run
    recorder = Recorder()
    clock = Clock()
    await run_pipeline(
        brief,
        settings=settings,
        workdir=workdir,
        checkpoints=checkpoints,
        report=recorder,
        providers=offline_providers(settings),
    )
    return *clock.read(), recorder.calls


async def by_hand_argv(
    brief: Brief, settings: Settings, workdir: Path, inputs: MemoryCheckpoints
) -> list[list[str]]:
    """The commands the stage runs, from the stage's own code: the video, written to
    ``workdir/by-hand.mp4``, then its poster."""
    outputs: dict[str, Any] = inputs.outputs
    args = compositing.command(
        brief,
        Script.from_dict(outputs["script_gen"]),
        VoiceTrack.from_dict(outputs["voice_gen"]),
        video_gen.from_output(outputs["video_gen"]),
        settings=settings,
        workdir=workdir,
        font=await find_font(settings),
        output=workdir / "by-hand.mp4",
    )
    return [ffmpeg_command(args, settings), poster_argv(brief, settings, workdir / "by-hand.mp4")]


def poster_argv(brief: Brief, settings: Settings, video: Path) -> list[str]:
    """The poster's command, as the stage runs it after the video (``previews.poster``)."""
    at_s = brief.duration_s * POSTER_AT
    args = frame_args(video, video.with_suffix(".jpg"), at_s=at_s, size=brief.resolution)
    return ffmpeg_command(args, settings)


def by_hand(argvs: list[list[str]]) -> tuple[float, float]:
    """Wall and CPU seconds for ``argvs`` run to completion one after another; their progress
    blocks go nowhere."""
    clock = Clock()
    for argv in argvs:
        subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            check=True, preexec_fn=preexec(),  # as videoq starts FFmpeg: the spawn costs the same
        )  # fmt: skip
    return clock.read()


def encoder_table(settings: Settings) -> str:
    args = compositing.encoder_args(settings)
    rows = [(f"`{args[i]} {args[i + 1]}`", WHY[args[i]]) for i in range(0, len(args), 2)]
    rows.append(
        ("threads (not set)", "x264 picks its own count from the cores (1.5 × cores, "
         "frame-parallel), so one compositing keeps every core busy")
    )  # fmt: skip
    lines = ["| option | why |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines)


@dataclass
class Figures:
    brief: Brief
    settings: Settings
    ours: list[tuple[float, float]] = field(default_factory=list)
    by_hand: list[tuple[float, float]] = field(default_factory=list)
    reports: list[int] = field(default_factory=list)
    size_bytes: int = 0
    identical: bool = False

    def report(self) -> str:
        brief, reps = self.brief, len(self.ours)
        width, height = brief.resolution
        frames = brief.duration_s * self.settings.fps
        wall = [w for w, _ in self.ours], [w for w, _ in self.by_hand]
        cpu = [c for _, c in self.ours], [c for _, c in self.by_hand]
        per_rep = [a / b for a, b in zip(*wall, strict=True)]
        ratio = statistics.median(wall[0]) / statistics.median(wall[1])
        cpu_ratio = statistics.median(cpu[0]) / statistics.median(cpu[1])
        rate = [frames / statistics.median(w) for w in wall]
        mbps = self.size_bytes * 8 / brief.duration_s / 1e6
        return f"""\
`python -m bench.compositing --reps {reps}`: a {brief.duration_s} s {width}×{height} brief with
a call to action, its clips and voice made once by the offline providers; seconds, median
(min–max) of {reps} repetitions, the two sides taking turns to go first. CPU is user + system
time of the process and the FFmpeg children it waited for.

| | wall s | CPU s | frames/s |
|---|---|---|---|
| videoq compositing stage: `run_pipeline` with only compositing left (FFmpeg with \
`-progress` read into the progress callback, rename, probe) | {summary(wall[0])} | \
{summary(cpu[0])} | {rate[0]:.0f} |
| the same FFmpeg argv by hand, `subprocess.run` (baseline) | {summary(wall[1])} | \
{summary(cpu[1])} | {rate[1]:.0f} |
| **ratio videoq ÷ by hand** (of the medians) | **{ratio:.3f}** | {cpu_ratio:.3f} | |

Goal (issue 7): ≤ 1.05× wall time. Per repetition the ratio was {summary(per_rep)}. The
by-hand argv comes from the stage's own code (`compositing.command` inside
`ffmpeg.ffmpeg_command`), so both sides run one command, and the two outputs are
{"byte-identical" if self.identical else "**not** identical"} ({self.size_bytes / 1e6:.2f} MB,
{mbps:.2f} Mb/s; the offline clips are flat colour with text, so real clips make larger files).
The stage made {statistics.median(self.reports):.0f} progress reports per run.

Encoder settings (`compositing.encoder_args`; preset and CRF are the settings `ffmpeg_preset`
and `ffmpeg_crf`): `{" ".join(compositing.encoder_args(self.settings))}`, giving an H.264
High-profile yuv420p + AAC-LC MP4 with its index first, which plays in every browser and phone.

{encoder_table(self.settings)}
"""


def measure(reps: int, quick: bool) -> Figures:
    settings = Settings(log_level="WARNING")
    brief = Brief(
        "Benchmark", cta_text="Shop now at example.com", duration_s=4 if quick else 15,
        aspect_ratio="9:16",
    )  # fmt: skip
    figures = Figures(brief, settings)
    with tempfile.TemporaryDirectory(prefix="videoq-bench-compositing-") as home:
        workdir = Path(home)
        with asyncio.Runner() as runner:
            inputs = runner.run(make_inputs(brief, settings, workdir))
            argv = runner.run(by_hand_argv(brief, settings, workdir, inputs))
            if not quick:  # the first run of each pays for cold caches; not measured
                by_hand(argv)
                runner.run(ours(brief, settings, workdir, inputs))
            for rep in range(reps):
                # Take turns going first, so neither side always meets a warmer (or busier)
                # machine.
                if rep % 2:
                    figures.by_hand.append(by_hand(argv))
                wall, cpu, reports = runner.run(ours(brief, settings, workdir, inputs))
                figures.ours.append((wall, cpu))
                figures.reports.append(reports)
                if not rep % 2:
                    figures.by_hand.append(by_hand(argv))
        video = (workdir / compositing.OUTPUT_NAME).read_bytes()
        figures.size_bytes = len(video)
        figures.identical = video == (workdir / "by-hand.mp4").read_bytes()
    return figures


def main(reps: int, quick: bool) -> Figures:
    figures = measure(reps, quick)
    body = figures.report()
    print(body)
    if not quick:
        write_section(SECTION, body)
        print("written to docs/benchmarks.md")
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a 4 s brief, one repetition")
    args = parser.parse_args()
    main(1 if args.quick else args.reps, args.quick)

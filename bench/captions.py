"""Captions: what burning them in costs the compositing stage.

    python -m bench.captions [--reps 3] [--quick]

The inputs are made once by the offline providers (a 15 s 1080×1920 brief with a call to action;
``--quick``: 4 s): three clips and a voice track with word timings. Each repetition then times,
in turns:

- **videoq, captions on**: the compositing stage as the worker runs it (``run_pipeline`` with
  the first three stages checkpointed: cues, their text files, FFmpeg with its ``-progress``
  read, the rename, the probe, the WebVTT file);
- **by hand, captions on**: the argvs that stage runs (``compositing.command``, then the
  poster's frame), with ``subprocess.run``: the goal is videoq ≤ 1.05× this;
- **by hand, captions off**: the same brief with ``captions: false``: what the captions' own
  drawtext filters add to FFmpeg's work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import summary, write_section
from bench.compositing import Clock, by_hand, make_inputs, ours, poster_argv
from videoq.ffmpeg import ffmpeg_command, find_font
from videoq.pipeline import MemoryCheckpoints, compositing, video_gen
from videoq.settings import Settings
from videoq.types import Brief, Script, VoiceTrack

SECTION = "Captions"


async def argv_for(
    brief: Brief, settings: Settings, workdir: Path, inputs: MemoryCheckpoints, name: str
) -> tuple[list[list[str]], int]:
    """The stage's command for ``brief`` writing ``workdir/name``, and how many cues it draws."""
    outputs: dict[str, Any] = inputs.outputs
    script = Script.from_dict(outputs["script_gen"])
    voice = VoiceTrack.from_dict(outputs["voice_gen"])
    args = compositing.command(
        brief, script, voice, video_gen.from_output(outputs["video_gen"]),
        settings=settings, workdir=workdir, font=await find_font(settings),
        output=workdir / name,
    )  # fmt: skip
    total = float(brief.duration_s)
    cues = compositing.cues_for(brief, compositing.follow_narration(script, voice, total), voice)
    return [ffmpeg_command(args, settings), poster_argv(brief, settings, workdir / name)], len(cues)


@dataclass
class Figures:
    brief: Brief
    ours: list[tuple[float, float]] = field(default_factory=list)
    on: list[tuple[float, float]] = field(default_factory=list)
    off: list[tuple[float, float]] = field(default_factory=list)
    cues: int = 0
    load: float = 0.0

    def report(self) -> str:
        reps = len(self.ours)
        width, height = self.brief.resolution

        def medians(rows: list[tuple[float, float]]) -> tuple[float, float]:
            return statistics.median(w for w, _ in rows), statistics.median(c for _, c in rows)

        (ow, oc), (nw, nc), (fw, fc) = medians(self.ours), medians(self.on), medians(self.off)
        rows = [
            ("videoq compositing stage, captions on", self.ours),
            ("the same FFmpeg argvs by hand (video, then poster), captions on (baseline)", self.on),
            ("the argvs by hand with `captions: false`", self.off),
        ]
        table = "\n".join(
            f"| {name} | {summary([w for w, _ in r])} | {summary([c for _, c in r])} |"
            for name, r in rows
        )
        return f"""\
`python -m bench.captions --reps {reps}`: a {self.brief.duration_s} s {width}×{height} brief
({self.brief.style}) with a call to action and {self.cues} caption cues, its clips and voice made
once by the offline providers; seconds, median (min–max) of {reps} repetitions in turns. CPU is
user + system time of the process and the FFmpeg children it waited for.

| | wall s | CPU s |
|---|---|---|
{table}
| **ratio videoq ÷ by hand, captions on** | **{ow / nw:.3f}** | {oc / nc:.3f} |
| ratio captions on ÷ off, both by hand | {nw / fw:.3f} | {nc / fc:.3f} |

Goal (issue 19): the stage with captions ≤ 1.05× the same FFmpeg command by hand. The captions
are one drawtext per line of each cue, enabled for its time only (off its cue FFmpeg passes the
frame through the filter untouched), so what they add to FFmpeg's own work is the second ratio.
The machine's load average at the end of the run was {self.load:.1f} on {os.cpu_count()} cores:
above the core count, wall times measure the neighbours as much as FFmpeg, and CPU times are
the figures to read.
"""


def measure(reps: int, quick: bool) -> Figures:
    settings = Settings(log_level="WARNING")
    brief = Brief(
        "Benchmark", style="bold", cta_text="Shop now at example.com",
        duration_s=4 if quick else 15, aspect_ratio="9:16",
    )  # fmt: skip
    figures = Figures(brief)
    with tempfile.TemporaryDirectory(prefix="videoq-bench-captions-") as home:
        workdir = Path(home)
        with asyncio.Runner() as runner:
            inputs = runner.run(make_inputs(brief, settings, workdir))
            on, figures.cues = runner.run(argv_for(brief, settings, workdir, inputs, "on.mp4"))
            plain = replace(brief, captions=False)
            off, _ = runner.run(argv_for(plain, settings, workdir, inputs, "off.mp4"))
            if not quick:  # cold caches: not measured
                by_hand(on)

            def stage() -> None:
                figures.ours.append(runner.run(ours(brief, settings, workdir, inputs))[:2])

            sides: list[Callable[[], None]] = [
                lambda: figures.on.append(by_hand(on)),
                lambda: figures.off.append(by_hand(off)),
                stage,
            ]
            for rep in range(reps):
                for side in sides[rep % 3 :] + sides[: rep % 3]:  # each side goes first in turn
                    side()
    figures.load = os.getloadavg()[0]
    return figures


def main(reps: int, quick: bool) -> Figures:
    clock = Clock()
    figures = measure(reps, quick)
    print(figures.report())
    print(f"(ran {clock.read()[0]:.0f} s)")
    if not quick:
        write_section(SECTION, figures.report())
        print("written to docs/benchmarks.md")
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a 4 s brief, one repetition")
    args = parser.parse_args()
    main(1 if args.quick else args.reps, args.quick)

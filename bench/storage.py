"""Artifact store: videoq's ArtifactStore against obstore's own example code, and the compositing
stage with the store in its path.

    python -m bench.storage [--transfer-reps 9] [--reps 5] [--mb 50] [--quick]

The S3-compatible server is moto's, in this process, on loopback (127.0.0.1 only), with a
bucket made by boto3 and credentials in the usual ``AWS_*`` variables.

- **Transfers**: a 50 MB file (random bytes: as incompressible as a video's, and neither
  obstore nor moto compresses) uploaded and downloaded, each repetition timing both sides in
  alternating order (``--transfer-reps``, default 9: they are cheap, and pairs measured
  side by side are what a shared machine's noise spares):

  - **videoq**: ``ArtifactStore.upload`` / ``ArtifactStore.download`` of the store
    ``open_store(Settings(storage_url="s3://…"))`` returns (multipart parts of 8 MiB, 8 at a
    time; the download streamed to a temporary name, then renamed);
  - **obstore's example** (baseline): an ``S3Store`` on the same endpoint with ``allow_http``
    and obstore's documented defaults otherwise, ``await obstore.put_async(store, key,
    Path(...))`` and ``resp = await obstore.get_async(store, key)`` with ``async for chunk in
    resp.stream(): f.write(chunk)``.

  The same again on a ``file://`` store against ``shutil.copyfile`` to and from the same
  directory: on the work directory's file system, and on another one (``/dev/shm``) where
  there is one.
- **Compositing with the store in the path**: the inputs of ``bench.compositing`` (made once by
  the offline providers) kept in the S3 store; each repetition (``--reps``, default 5) runs the
  stage in an empty scratch directory with the store's ``JobArtifacts``, as a worker that
  resumes the job elsewhere: ``run_pipeline`` fetches the clips and the voice track,
  composites, keeps the video. The fetches and the keep are timed where they happen (around
  ``JobArtifacts.fetch`` and ``JobArtifacts.keep``), beside ``bench.compositing``'s two sides
  (the stage with its inputs in its work directory, and the same FFmpeg argv by hand) in the
  same run.

Goals (issue): transfers within 1.1× of obstore's example; compositing (without the
transfers) still ≤ 1.05× the FFmpeg argv by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import logging
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import obstore
from moto.server import ThreadedMotoServer
from obstore.store import S3Store

from bench.common import summary, write_section
from bench.compositing import Clock, by_hand, by_hand_argv, make_inputs, ours
from videoq.artifacts import PART_BYTES, UPLOAD_CONCURRENCY, ArtifactStore, JobArtifacts, open_store
from videoq.pipeline import MemoryCheckpoints, compositing, run_pipeline, video_gen, voice_gen
from videoq.providers import offline_providers
from videoq.settings import Settings
from videoq.types import Brief

SECTION = "Artifact store"
BUCKET = "videoq-bench"
REGION = "us-east-1"
#: Transfer goal: videoq's time ≤ 1.1 × obstore's example; compositing ≤ 1.05 × by hand.
TRANSFER_GOAL = 1.1
COMPOSITING_GOAL = 1.05


# --- the S3-compatible server ------------------------------------------------------------------


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on loopback with the bench bucket; yields its endpoint URL."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="videoq-bench", AWS_SECRET_ACCESS_KEY="videoq-bench-secret",
        AWS_REGION=REGION,
    )  # fmt: skip
    for name in ("NO_PROXY", "no_proxy"):  # loopback never goes through a proxy
        os.environ[name] = ",".join(filter(None, [os.environ.get(name), "127.0.0.1"]))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def storage_url(endpoint: str) -> str:
    """``VIDEOQ_STORAGE_URL`` of the bench bucket."""
    return f"s3://{BUCKET}/bench?endpoint_url={endpoint}&region={REGION}"


# --- transfers ---------------------------------------------------------------------------------

#: One side of a transfer: (upload s, download s) of ``src`` through a store and back to
#: ``dst``.
Side = Callable[[Path, Path], Awaitable[tuple[float, float]]]


def make_file(path: Path, size: int) -> None:
    """``size`` random bytes at ``path``."""
    with path.open("wb") as out:
        for start in range(0, size, 1 << 20):
            out.write(os.urandom(min(1 << 20, size - start)))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def videoq_side(store: ArtifactStore, key: str) -> Side:
    async def side(src: Path, dst: Path) -> tuple[float, float]:
        start = time.perf_counter()
        await store.upload(src, key)
        middle = time.perf_counter()
        assert await store.download(key, dst)
        return middle - start, time.perf_counter() - middle

    return side


def obstore_example_side(store: S3Store, key: str) -> Side:
    """obstore's README example, with its defaults."""

    async def side(src: Path, dst: Path) -> tuple[float, float]:
        start = time.perf_counter()
        await obstore.put_async(store, key, src)
        middle = time.perf_counter()
        resp = await obstore.get_async(store, key)
        with dst.open("wb") as f:
            async for chunk in resp.stream():
                f.write(chunk)
        return middle - start, time.perf_counter() - middle

    return side


def copyfile_side(stored: Path) -> Side:
    async def side(src: Path, dst: Path) -> tuple[float, float]:
        start = time.perf_counter()
        shutil.copyfile(src, stored)
        middle = time.perf_counter()
        shutil.copyfile(stored, dst)
        return middle - start, time.perf_counter() - middle

    return side


@dataclass
class Transfers:
    """Upload and download seconds per repetition of one side."""

    label: str
    up: list[float] = field(default_factory=list)
    down: list[float] = field(default_factory=list)


async def compare(
    sides: Sequence[tuple[Transfers, Side]], src: Path, scratch: Path, reps: int
) -> None:
    """Run each side once unmeasured (a warm-up that checks its copy), then ``reps`` times,
    taking turns to go first."""
    expected = sha256(src)
    for index, (figures, side) in enumerate(sides):
        dst = scratch / f"down-{index}.bin"
        await side(src, dst)
        assert sha256(dst) == expected, f"{figures.label}: the copy differs"
    for rep in range(reps):
        order = list(enumerate(sides))
        for index, (figures, side) in order if rep % 2 else reversed(order):
            dst = scratch / f"down-{index}.bin"
            dst.unlink(missing_ok=True)
            up, down = await side(src, dst)
            figures.up.append(up)
            figures.down.append(down)


def rates(values: Sequence[float]) -> str:
    """``median (min–max)`` of MB/s figures, to the MB/s."""
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def paired(ours: Sequence[float], base: Sequence[float]) -> str:
    """The ratio ``ours ÷ base`` of each repetition (the two ran one after the other)."""
    return summary([a / b for a, b in zip(ours, base, strict=True)])


def transfer_rows(
    ours: Transfers, base: Transfers, size: int, what: str
) -> tuple[str, float, float]:
    """Table rows for one pair, and the ratios of the medians (upload, download)."""
    mb = size / 1e6

    def cells(t: Transfers) -> str:
        up, down = [mb / s for s in t.up], [mb / s for s in t.down]
        return f"{summary(t.up)} | {rates(up)} | {summary(t.down)} | {rates(down)}"

    up = statistics.median(ours.up) / statistics.median(base.up)
    down = statistics.median(ours.down) / statistics.median(base.down)
    rows = (
        f"| {ours.label} | {cells(ours)} |\n"
        f"| {base.label} (baseline) | {cells(base)} |\n"
        f"| **ratio videoq ÷ {what}** (of the medians) | **{up:.3f}** | | **{down:.3f}** | |\n"
        f"| ratio per repetition | {paired(ours.up, base.up)} | | "
        f"{paired(ours.down, base.down)} | |\n"
    )
    return rows, up, down


def other_file_system(near: Path, size: int) -> Path | None:
    """A directory on another file system than ``near`` with room (tmpfs), where a directory
    store cannot take files as hard links; None when there is none."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if shm.stat().st_dev != near.stat().st_dev and shutil.disk_usage(shm).free > 4 * size:
            return shm
    return None


def how_placed(src: Path, stored: Path, fetched: Path) -> tuple[str, str]:
    """How a directory store took the file in (upload) and handed it back (download)."""

    def how(a: Path, b: Path) -> str:
        return "hard link, no bytes copied" if os.path.samefile(a, b) else "copy"

    return how(src, stored), how(stored, fetched)


async def directory_pair(
    src: Path, size: int, scratch: Path, root: Path, reps: int, where: str
) -> str:
    """Rows for a ``file://`` store under ``root`` against ``shutil.copyfile`` to and from the
    same directory; the label says whether the store copied the file or linked it."""
    key = "transfer/video.mp4"
    store = open_store(Settings(storage_url=(root / "file-store").as_uri()))
    (root / "copies").mkdir()
    ours = Transfers("")
    base = Transfers(f"`shutil.copyfile` to a directory on {where} and back")
    await compare(
        [(ours, videoq_side(store, key)), (base, copyfile_side(root / "copies" / "video.mp4"))],
        src, scratch, reps,
    )  # fmt: skip
    up, down = how_placed(src, root / "file-store" / key, scratch / "down-0.bin")
    ours.label = f"videoq `ArtifactStore` on `file://`, {where} (upload: {up}; download: {down})"
    rows, _, _ = transfer_rows(ours, base, size, "`shutil.copyfile`")
    return rows


# --- compositing with the store in the path ----------------------------------------------------


class TimedArtifacts:
    """A job's :class:`JobArtifacts`, with the span of each ``fetch`` and ``keep`` recorded."""

    def __init__(self, inner: JobArtifacts) -> None:
        self.inner = inner
        self.fetches: list[tuple[float, float]] = []
        self.keeps: list[tuple[float, float]] = []

    async def keep(self, path: Path) -> None:
        start = time.perf_counter()
        await self.inner.keep(path)
        self.keeps.append((start, time.perf_counter()))

    async def fetch(self, path: Path) -> bool:
        start = time.perf_counter()
        found = await self.inner.fetch(path)
        self.fetches.append((start, time.perf_counter()))
        return found


def span(calls: Sequence[tuple[float, float]]) -> float:
    """Wall time from the first call's start to the last one's end (they run concurrently)."""
    return max(end for _, end in calls) - min(start for start, _ in calls) if calls else 0.0


@dataclass
class StoreRun:
    total: float
    cpu: float
    fetch: float
    keep: float

    @property
    def compositing(self) -> float:
        return self.total - self.fetch - self.keep


async def with_store(
    brief: Brief, settings: Settings, store: ArtifactStore, job_id: str, scratch: Path,
    inputs: MemoryCheckpoints,
) -> StoreRun:  # fmt: skip
    """The stage as a worker resuming the job on an empty disk runs it: inputs fetched from the
    store, the video kept in it."""
    artifacts = TimedArtifacts(store.for_job(job_id, scratch))
    clock = Clock()
    await run_pipeline(
        brief, settings=settings, workdir=scratch, checkpoints=copy.deepcopy(inputs),
        report=_ignore, providers=offline_providers(settings), artifacts=artifacts,
    )  # fmt: skip
    total, cpu = clock.read()
    assert len(artifacts.fetches) == len(input_files(inputs)), "the inputs were not fetched"
    assert artifacts.keeps, "the video was not kept"
    return StoreRun(total, cpu, span(artifacts.fetches), span(artifacts.keeps))


async def _ignore(stage: str, progress: float, message: str | None = None) -> None:
    pass


def input_files(inputs: MemoryCheckpoints) -> list[Path]:
    """The files compositing reads: the voice track and the clips."""
    return [*voice_gen.artifacts(inputs.outputs["voice_gen"]), *video_gen.artifacts(
        inputs.outputs["video_gen"]
    )]  # fmt: skip


@dataclass
class Compositing:
    brief: Brief
    #: (wall, CPU) seconds of each repetition.
    no_store: list[tuple[float, float]] = field(default_factory=list)
    store: list[StoreRun] = field(default_factory=list)
    by_hand: list[tuple[float, float]] = field(default_factory=list)
    input_count: int = 0
    input_bytes: int = 0
    video_bytes: int = 0
    identical: bool = False
    warmed: bool = False

    def report(self) -> tuple[str, float]:
        hand, hand_cpu = [w for w, _ in self.by_hand], [c for _, c in self.by_hand]
        in_place, in_place_cpu = [w for w, _ in self.no_store], [c for _, c in self.no_store]
        total, cpu = [r.total for r in self.store], [r.cpu for r in self.store]
        fetch = [r.fetch for r in self.store]
        keep = [r.keep for r in self.store]
        net = [r.compositing for r in self.store]

        def ratio(values: Sequence[float], base: Sequence[float]) -> float:
            return statistics.median(values) / statistics.median(base)

        net_ratio = ratio(net, hand)
        fetch_mbs = self.input_bytes / 1e6 / statistics.median(fetch)
        keep_mbs = self.video_bytes / 1e6 / statistics.median(keep)
        width, height = self.brief.resolution
        rows = f"""\
| | wall s | ÷ by hand | CPU s | ÷ by hand |
|---|---|---|---|---|
| videoq compositing stage, inputs in its work directory (as `bench.compositing`) | \
{summary(in_place)} | {ratio(in_place, hand):.3f} | {summary(in_place_cpu)} | \
{ratio(in_place_cpu, hand_cpu):.3f} |
| videoq stage on an empty scratch directory with the S3 store: all of `run_pipeline` | \
{summary(total)} | {ratio(total, hand):.3f} | {summary(cpu)} | {ratio(cpu, hand_cpu):.3f} |
| — of which the fetch of the inputs ({self.input_count} files, {self.input_bytes / 1e6:.2f} MB, \
`JobArtifacts.fetch`, concurrently; {fetch_mbs:.1f} MB/s) | {summary(fetch)} | | | |
| — of which the keep of the video ({self.video_bytes / 1e6:.2f} MB, `JobArtifacts.keep`; \
{keep_mbs:.1f} MB/s) | {summary(keep)} | | | |
| — **compositing excluding the transfers** | {summary(net)} | **{net_ratio:.3f}** | | |
| the same FFmpeg argv by hand, `subprocess.run` (baseline) | {summary(hand)} | 1 | \
{summary(hand_cpu)} | 1 |
"""
        body = f"""\
A {self.brief.duration_s} s {width}×{height} brief with a call to action (`bench.compositing`'s
inputs, made once by the offline providers and kept once in the S3 store); seconds, median
(min–max) of {len(self.by_hand)} repetitions, the three sides taking turns in order{
            ", after one unmeasured run with the store" if self.warmed else ""
        }. Ratios are of the medians. CPU is user + system time of this
process and the FFmpeg children it waited for; with the store it includes the transfers' (the
client's and moto's, both in this process).

{rows}
Goal: compositing ≤ {COMPOSITING_GOAL}× by hand without the transfers: \
{"met" if net_ratio <= COMPOSITING_GOAL else "**not met**"}; per repetition it was
{paired(net, hand)} (inputs in place: {paired(in_place, hand)}). The video made in the
scratch directory is {"byte-identical to" if self.identical else "**not** identical to"} the
one made with the inputs in place. The transfers are small files on loopback, so their time
is mostly per-request latency (moto answering in Python), not bandwidth.
"""
        return body, net_ratio


async def measure_compositing(
    store: ArtifactStore, home: Path, reps: int, quick: bool
) -> Compositing:
    settings = Settings(log_level="WARNING")
    brief = Brief(
        "Benchmark", cta_text="Shop now at example.com", duration_s=2 if quick else 15,
        aspect_ratio="9:16",
    )  # fmt: skip
    figures = Compositing(brief)
    job_id = uuid.uuid4().hex
    # Work directories are named after the job, as a worker's are: checkpointed paths move
    # into whichever one resumes the job.
    origin = home / "origin" / job_id
    inputs = await make_inputs(brief, settings, origin)
    argv = await by_hand_argv(brief, settings, origin, inputs)
    files = input_files(inputs)
    made = store.for_job(job_id, origin)
    await asyncio.gather(*(made.keep(path) for path in files))
    figures.input_count = len(files)
    figures.input_bytes = sum(path.stat().st_size for path in files)

    async def no_store() -> None:
        wall, cpu, _ = await ours(brief, settings, origin, inputs)
        figures.no_store.append((wall, cpu))

    async def in_store() -> None:
        scratch = home / f"scratch-{len(figures.store)}" / job_id
        figures.store.append(await with_store(brief, settings, store, job_id, scratch, inputs))

    async def hand() -> None:
        figures.by_hand.append(by_hand(argv))  # blocking, as in bench.compositing

    if not quick:  # the first run pays for cold caches (the stage's code, S3); not measured
        await with_store(brief, settings, store, job_id, home / "scratch-warm" / job_id, inputs)
        figures.warmed = True
    sides = [no_store, in_store, hand]
    for rep in range(reps):
        for index in range(len(sides)):
            await sides[(index + rep) % len(sides)]()
    last = home / f"scratch-{len(figures.store) - 1}" / job_id / compositing.OUTPUT_NAME
    video = last.read_bytes()
    figures.video_bytes = len(video)
    figures.identical = video == (origin / compositing.OUTPUT_NAME).read_bytes()
    stat = await store.stat(made.key(origin / compositing.OUTPUT_NAME))
    assert stat is not None and stat.size == len(video), "the video is not in the store"
    return figures


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Report:
    body: str
    #: Where the run's time went (printed, not written).
    phases: str
    goals: dict[str, float]


async def measure(reps: int, transfer_reps: int, size: int, quick: bool) -> Report:
    load, started = os.getloadavg()[0], time.perf_counter()
    with moto_s3() as endpoint, tempfile.TemporaryDirectory(prefix="videoq-bench-storage-") as t:
        home = Path(t)
        src = home / "video.mp4"
        make_file(src, size)
        s3 = open_store(Settings(storage_url=storage_url(endpoint)))
        await s3.check()
        example = S3Store(
            BUCKET, prefix="baseline", endpoint=endpoint, region=REGION,
            client_options={"allow_http": True},
        )  # fmt: skip
        s3_ours = Transfers(
            f"videoq `ArtifactStore` on moto's S3 ({PART_BYTES >> 20} MiB parts, "
            f"{UPLOAD_CONCURRENCY} at a time; download to a temporary name, renamed)"
        )
        s3_base = Transfers(
            "obstore's example on an `S3Store` of the same endpoint: `put_async(store, key, "
            "Path(…))` (5 MiB parts, 12 at a time), `get_async` + `async for chunk in "
            "resp.stream(): f.write(chunk)`"
        )
        await compare(
            [(s3_ours, videoq_side(s3, "transfer/video.mp4")),
             (s3_base, obstore_example_side(example, "transfer/video.mp4"))],
            src, home, transfer_reps,
        )  # fmt: skip
        s3_rows, s3_up, s3_down = transfer_rows(s3_ours, s3_base, size, "obstore's example")
        local_rows = await directory_pair(
            src, size, home, home, transfer_reps, "the work directory's file system"
        )
        other = other_file_system(home, size)
        if other is not None:
            with tempfile.TemporaryDirectory(prefix="videoq-bench-storage-", dir=other) as far:
                local_rows += await directory_pair(
                    src, size, home, Path(far), transfer_reps, f"another file system ({other})"
                )
        transfers_s = time.perf_counter() - started
        comp = await measure_compositing(s3, home, reps, quick)
    compositing_s = time.perf_counter() - started - transfers_s
    comp_body, comp_ratio = comp.report()
    worst = max(s3_up, s3_down)
    body = f"""\
`python -m bench.storage --transfer-reps {transfer_reps} --reps {reps} --mb {size // 10**6}`:
moto's S3 server in the same process on loopback (127.0.0.1), a bucket made by boto3,
credentials in `AWS_*` variables. The machine's 1-minute load average was {load:.1f} at the
start and {os.getloadavg()[0]:.1f} at the end (other work shares its {os.cpu_count()} cores).

### Upload and download of a {size / 1e6:.0f} MB file

Random bytes (as incompressible as a video's; neither side compresses); seconds and MB/s
(10⁶ bytes), median (min–max) of {transfer_reps} repetitions, the two sides of each pair taking
turns to go first, after one unmeasured round that also checks each side's copy (SHA-256).

| | upload s | upload MB/s | download s | download MB/s |
|---|---|---|---|---|
{s3_rows}{local_rows}
Goal: videoq within {TRANSFER_GOAL}× of obstore's example on S3, both ways: \
{"met" if worst <= TRANSFER_GOAL else "**not met**"} (upload {s3_up:.3f}, download
{s3_down:.3f}). The two S3 sides differ in part size and parallelism (videoq: 8 MiB parts,
8 at a time; obstore's defaults: 5 MiB, 12), videoq's connect timeout and retry limits, and
its download's rename; moto answers in Python in this process (sharing the GIL with the
benchmark's event loop), which bounds both sides' rates. On `file://` (no goal) the work
directory is in the system's temporary directory; the store there is on the same file system,
and, where there is one, on another (tmpfs), where nothing can be linked.

### Compositing with the store in the path

`bench.compositing`'s stage again, now also on an empty scratch directory with the S3 store
(inputs fetched by `run_pipeline` as on a worker resuming the job elsewhere, the finished video
kept after), beside the stage with its inputs in place and the same FFmpeg argv by hand.

{comp_body}"""
    return Report(
        body, f"transfers {transfers_s:.0f} s, compositing {compositing_s:.0f} s",
        {"S3 upload ÷ obstore": s3_up, "S3 download ÷ obstore": s3_down,
         "compositing excl. transfers ÷ by hand": comp_ratio},
    )  # fmt: skip


def main(reps: int, transfer_reps: int, size: int, quick: bool) -> Report:
    report = asyncio.run(measure(reps, transfer_reps, size, quick))
    print(report.body)
    if not quick:
        write_section(SECTION, report.body)
        print("written to docs/benchmarks.md")
    print(f"({report.phases})")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="compositing repetitions")
    parser.add_argument("--transfer-reps", type=int, default=9, help="transfer repetitions")
    parser.add_argument("--mb", type=int, default=50, help="size of the transferred file, MB")
    parser.add_argument(
        "--quick", action="store_true", help="a 20 MB file and a 2 s brief, one repetition"
    )
    args = parser.parse_args()
    main(
        1 if args.quick else args.reps, 1 if args.quick else args.transfer_reps,
        (20 if args.quick else args.mb) * 10**6, args.quick,
    )  # fmt: skip

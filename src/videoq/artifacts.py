"""The artifact store: every file a job keeps beyond one stage (voice tracks, clips, the video),
in a local directory, S3 (or an S3-compatible store: MinIO, R2) or Google Cloud Storage, chosen
by ``VIDEOQ_STORAGE_URL``. The only module that talks to it (through obstore).

A job's files are keyed ``<job id>/<path in its work directory>``. A worker's work directory is
scratch: what a stage keeps is uploaded before its checkpoint is recorded, and a job resumed on
a worker with an empty disk fetches it back instead of buying it again.

URLs (DESIGN.md "Processes and stores"):

- ``file:///srv/videoq/artifacts`` (the default is ``<home>/artifacts``);
- ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1``; credentials and
  anything not in the query come from the usual ``AWS_*`` variables;
- ``gs://bucket/prefix``, with ``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import GCSStore, LocalStore, ObjectStore, S3Store

from videoq.errors import RetryableError, StorageMisconfigured
from videoq.settings import Settings
from videoq.types import version_dir

__all__ = [
    "CAPTIONS", "VIDEO", "ArtifactStore", "JobArtifacts", "captions_key", "captions_name",
    "open_store", "video_key", "video_name",
]  # fmt: skip

#: The finished video's name in a job's part of the store (the API serves it from there).
VIDEO = "video.mp4"
#: The finished video's captions (WebVTT), beside it.
CAPTIONS = "captions.vtt"
#: Parts of a multipart upload; files larger than one part are uploaded in parts, concurrently.
PART_BYTES = 8 * 1024 * 1024
UPLOAD_CONCURRENCY = 8
#: What a read of an object that does not exist raises (obstore raises either).
_MISSING = (NotFoundError, FileNotFoundError)
#: The store's own retries of one request: a few, briefly. A job that still fails retries
#: as a whole later (RetryableError), and an unreachable store fails start-up within seconds.
_RETRIES: Any = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
_CLIENT: Any = {"connect_timeout": timedelta(seconds=5)}
#: S3 query options that are not the store's own keys in obstore's configuration.
_S3_ALIASES = {"endpoint_url": "endpoint", "region_name": "region"}


@dataclass(frozen=True)
class Stat:
    """What the store knows of an object."""

    size: int
    etag: str | None


class ArtifactStore:
    """One store, shared by every job of the process. Errors of the store itself (unreachable,
    throttled, refused) are :class:`~videoq.errors.RetryableError`: a job retries later and
    loses nothing."""

    def __init__(self, store: ObjectStore, url: str, local_root: Path | None) -> None:
        self._store = store
        #: The URL, for messages (it never holds credentials: those come from the environment).
        self.url = url
        #: The directory of a ``file://`` store (files are served from it directly).
        self.local_root = local_root

    @property
    def signs_urls(self) -> bool:
        """Whether :meth:`signed_url` can hand out a URL (object stores, not directories)."""
        return self.local_root is None

    async def check(self) -> None:
        """Fail now, naming the setting, if the store cannot be used: a missing bucket, an
        unreachable endpoint, refused credentials. Called at start-up, not at the first job."""
        probe = f".videoq-check/{uuid.uuid4().hex}"
        try:
            await obstore.put_async(self._store, probe, b"ok")
            await obstore.delete_async(self._store, probe)
        except Exception as exc:
            raise StorageMisconfigured(
                f"VIDEOQ_STORAGE_URL={self.url}: the artifact store cannot be written: "
                f"{_first_line(exc)}"
            ) from exc

    async def upload(self, local: Path, key: str) -> None:
        """Store the file at ``local`` under ``key``: atomically, in concurrent parts when it
        is larger than one."""
        if self.local_root is not None:
            with _retryable(f"upload of {key}"):
                await _place_soon(local, self.local_root / key)
            return
        with _retryable(f"upload of {key}"):
            await obstore.put_async(
                self._store, key, local, chunk_size=PART_BYTES, max_concurrency=UPLOAD_CONCURRENCY
            )

    async def download(self, key: str, local: Path) -> bool:
        """Fetch ``key`` into ``local`` (streamed to a temporary name, then renamed); False when
        the store does not have it."""
        if self.local_root is not None:
            source = self.local_root / key
            if not await asyncio.to_thread(source.is_file):
                return False
            with _retryable(f"download of {key}"):
                await _place_soon(source, local)
            return True
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.tmp{uuid.uuid4().hex[:8]}")
        try:
            with _retryable(f"download of {key}"):
                result = await obstore.get_async(self._store, key)
                with partial.open("wb") as out:
                    async for chunk in result.stream(min_chunk_size=PART_BYTES):
                        out.write(chunk)
            os.replace(partial, local)
        except _MISSING:
            return False
        finally:
            partial.unlink(missing_ok=True)
        return True

    async def stat(self, key: str) -> Stat | None:
        """The object's size and etag, or None when it does not exist."""
        try:
            with _retryable(f"look-up of {key}"):
                meta = await obstore.head_async(self._store, key)
        except _MISSING:
            return None
        return Stat(size=int(meta["size"]), etag=meta.get("e_tag"))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The object's bytes ``[start, end)`` (to its end when ``end`` is None), streamed."""
        options: Any = None
        if end is not None:
            options = {"range": (start, end)}
        elif start:
            options = {"range": {"offset": start}}
        with _retryable(f"read of {key}"):
            result = await obstore.get_async(self._store, key, options=options)
        async for chunk in result.stream(min_chunk_size=256 * 1024):
            yield bytes(chunk)

    async def signed_url(self, key: str, expires_s: float) -> str:
        """A URL that reads ``key`` without credentials for ``expires_s``."""
        assert isinstance(self._store, S3Store | GCSStore), "directories sign no URLs"
        with _retryable(f"signing of {key}"):
            return await obstore.sign_async(self._store, "GET", key, timedelta(seconds=expires_s))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (``<job id>/``); returns how many."""
        keys: list[str] = []
        with _retryable(f"listing of {prefix}"):
            async for batch in obstore.list(self._store, prefix=prefix, chunk_size=500):
                keys.extend(meta["path"] for meta in batch)
        for start in range(0, len(keys), 500):
            with _retryable(f"deletion under {prefix}"):
                await obstore.delete_async(self._store, keys[start : start + 500])
        return len(keys)

    def for_job(self, job_id: uuid.UUID | str, workdir: Path) -> JobArtifacts:
        """The :class:`videoq.pipeline.Artifacts` of one job, whose scratch is ``workdir``."""
        return JobArtifacts(self, str(job_id), workdir)


class JobArtifacts:
    """One job's files: kept in the store under ``<job id>/``, fetched back into its scratch
    work directory when they are not there (another worker made them, or the disk was lost)."""

    def __init__(self, store: ArtifactStore, job_id: str, workdir: Path) -> None:
        self.store = store
        self.job_id = job_id
        self.workdir = workdir
        self._kept: set[Path] = set()

    def key(self, path: Path) -> str:
        """The store key of a file of the work directory."""
        return f"{self.job_id}/{path.relative_to(self.workdir).as_posix()}"

    async def keep(self, path: Path, name: str | None = None) -> None:
        """Store a file of the work directory (once per attempt), under its path there or,
        given, under ``name`` (the finished video is always ``<job id>/video.mp4``)."""
        if path in self._kept:
            return
        key = f"{self.job_id}/{name}" if name is not None else self.key(path)
        await self.store.upload(path, key)
        self._kept.add(path)

    async def fetch(self, path: Path) -> bool:
        """Make sure ``path`` is in the work directory: there already, or fetched from the
        store; False when neither has it."""
        if await asyncio.to_thread(path.is_file):
            return True
        found = await self.store.download(self.key(path), path)
        if found:
            self._kept.add(path)  # it is in the store already
        return found


def video_name(version: int = 1) -> str:
    """Where a version of a job's finished video is in its part of the store: version 1 at
    ``video.mp4``, a re-render's at ``v<N>/video.mp4``."""
    return f"{version_dir(version)}{VIDEO}"


def video_key(job_id: uuid.UUID | str, version: int = 1) -> str:
    """The key of a version of a job's finished video: from its id and a version number only,
    never from what a caller sent."""
    return f"{uuid.UUID(str(job_id))}/{video_name(version)}"


def captions_name(version: int = 1) -> str:
    """Where a version's captions are in the job's part of the store, beside its video."""
    return f"{version_dir(version)}{CAPTIONS}"


def captions_key(job_id: uuid.UUID | str, version: int = 1) -> str:
    """The key of a version's captions file: from its id and a version number only, never
    from what a caller sent."""
    return f"{uuid.UUID(str(job_id))}/{captions_name(version)}"


def open_store(settings: Settings) -> ArtifactStore:
    """The store ``settings.storage_url`` names (``file://<home>/artifacts`` when unset).
    :class:`~videoq.errors.StorageMisconfigured`, naming the setting, for a URL it cannot
    use."""
    url = settings.storage_url or settings.artifacts.resolve().as_uri()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query))
    prefix = parts.path.strip("/")
    try:
        if scheme == "file":
            root = Path(parts.path)
            root.mkdir(parents=True, exist_ok=True)
            return ArtifactStore(LocalStore(root), url, root)
        if scheme == "s3":
            # Checked by obstore, which names an unknown option.
            config: Any = {_S3_ALIASES.get(k, k): v for k, v in options.items()}
            plain_http = str(config.get("endpoint", "")).startswith("http:")
            client: Any = {**_CLIENT, "allow_http": True} if plain_http else _CLIENT
            store: ObjectStore = S3Store(
                parts.netloc, prefix=prefix or None, config=config, client_options=client,
                retry_config=_RETRIES,
            )  # fmt: skip
            return ArtifactStore(store, _without_query(url), None)
        if scheme == "gs":
            gcs: Any = options
            store = GCSStore(
                parts.netloc, prefix=prefix or None, config=gcs, client_options=_CLIENT,
                retry_config=_RETRIES,
            )  # fmt: skip
            return ArtifactStore(store, _without_query(url), None)
    except (ValueError, OSError, obstore.exceptions.BaseError) as exc:
        raise StorageMisconfigured(
            f"VIDEOQ_STORAGE_URL={_without_query(url)}: {_first_line(exc)}"
        ) from exc
    raise StorageMisconfigured(
        f"VIDEOQ_STORAGE_URL={_without_query(url)}: unknown scheme {scheme!r}; "
        "use file://, s3:// or gs://"
    )


#: Files up to this size are copied on the event loop: a thread's round trip costs more, and
#: with a hundred jobs in flight the threads' queue holds every job's slot a little longer.
_INLINE_COPY_BYTES = 1024 * 1024


async def _place_soon(local: Path, target: Path) -> None:
    """:func:`_place`, on the event loop when it is cheap (a hard link, or a small copy), else
    in a thread."""
    try:
        _place(local, target, copy_up_to=_INLINE_COPY_BYTES)
    except _TooLargeToCopyInline:
        await asyncio.to_thread(_place, local, target)


class _TooLargeToCopyInline(Exception):
    pass


def _place(local: Path, target: Path, copy_up_to: int | None = None) -> None:
    """Put a file into (or fetch it from) a directory store atomically: a hard link where both
    are on one file system (no bytes copied), else a copy; either under a temporary name, then
    renamed. Safe because nothing rewrites a kept file in place:
    every stage writes its outputs under a temporary name and renames them."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp{uuid.uuid4().hex[:8]}")
    try:
        try:
            os.link(local, partial)
        except OSError:
            if copy_up_to is not None and os.stat(local).st_size > copy_up_to:
                raise _TooLargeToCopyInline from None
            shutil.copyfile(local, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@contextlib.contextmanager
def _retryable(what: str) -> Any:
    """The store's own failures, as a job sees them: retryable, never a lost output."""
    try:
        yield
    except _MISSING:
        raise
    except (obstore.exceptions.BaseError, OSError) as exc:
        raise RetryableError(
            f"artifact store: {what} failed: {_first_line(exc)}", code="storage_unavailable"
        ) from exc

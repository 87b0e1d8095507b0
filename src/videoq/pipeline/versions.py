"""A re-render's view of the worker's checkpoints and spend: every stage's checkpoint, notes
and paid calls under the names of the version it makes (:mod:`videoq.versions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from videoq.versions import checkpoint_name, purchase_name

if TYPE_CHECKING:
    from videoq.pipeline import Checkpoints
    from videoq.pipeline.spending import Spend


class VersionCheckpoints:
    """The :class:`~videoq.pipeline.Checkpoints` of one version: each stage's (and its notes')
    under :func:`checkpoint_name`, so a re-render's outputs and its paid work in progress sit
    beside those of the versions before it, and an attempt after a crash resumes the
    re-render from them."""

    def __init__(self, checkpoints: Checkpoints, version: int) -> None:
        self.inner = checkpoints
        self.version = version

    async def load(self, stage: str) -> dict[str, Any] | None:
        return await self.inner.load(checkpoint_name(stage, self.version))

    async def save(self, stage: str, output: dict[str, Any]) -> None:
        await self.inner.save(checkpoint_name(stage, self.version), output)

    async def note(self, stage: str, key: str, value: dict[str, Any] | None) -> None:
        await self.inner.note(checkpoint_name(stage, self.version), key, value)

    async def notes(self, stage: str) -> dict[str, dict[str, Any]]:
        return await self.inner.notes(checkpoint_name(stage, self.version))


class VersionSpend:
    """The :class:`~videoq.pipeline.spending.Spend` of one version: each paid call reserved
    under :func:`purchase_name`, against the tenant's budget like any other."""

    def __init__(self, spend: Spend, version: int) -> None:
        self.inner = spend
        self.version = version

    async def reserve(self, stage: str, key: str, usage: dict[str, Any]) -> None:
        await self.inner.reserve(stage, purchase_name(key, self.version), usage)

    async def settle(self, key: str, cost: dict[str, Any]) -> None:
        await self.inner.settle(purchase_name(key, self.version), cost)

    async def release(self, key: str) -> None:
        await self.inner.release(purchase_name(key, self.version))

"""Lets `arq workers.WorkerSettings` work from the repository root."""

from videoq.workers import WorkerSettings

__all__ = ["WorkerSettings"]

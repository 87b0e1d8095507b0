"""The layered layout, as a process sees it (docs/architecture.md): each entry point, imported in a
fresh interpreter, loads only its own side of the house. `make lint` checks the import graph
itself (import-linter); these check what actually ends up in ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LOADED = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""

#: Packages only the API process needs.
WEB = ("starlette", "uvicorn", "prometheus_client")
#: Modules only a worker process needs.
WORKER_ONLY = (
    "videoq.workers",
    "videoq.store.grouped",
    "videoq.store.checkpoints",
    "videoq.pipeline",
    "videoq.providers",
)
#: Everything server-side, which the SDK must not load.
SERVER = (
    *WEB,
    *WORKER_ONLY,
    "videoq.api",
    "videoq.store",
    "videoq.broker",
    "videoq.lifecycle",
    "videoq.outbox",
    "sqlalchemy",
    "asyncpg",
    "redis",
    "arq",
    "anthropic",
)


def loaded(module: str) -> list[str]:
    """The modules ``import <module>`` loads in a new interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _LOADED.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    names: list[str] = json.loads(out)
    return names


def under(names: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


def test_the_worker_loads_no_web_framework() -> None:
    assert under(loaded("videoq.workers"), WEB) == []


def test_the_api_loads_no_worker_code() -> None:
    names = loaded("videoq.api")
    assert under(names, WORKER_ONLY) == []
    assert "starlette" in names  # the check itself sees what it should


def test_the_sdk_loads_nothing_server_side() -> None:
    names = loaded("videoq")
    assert under(names, SERVER) == []
    assert "videoq.client" in names


@pytest.mark.parametrize("module", ["videoq.workers", "videoq.api", "videoq.cli", "workers"])
def test_entry_points_import(module: str) -> None:
    """``arq videoq.workers.WorkerSettings``, ``arq workers.WorkerSettings`` (from the repository
    root), uvicorn's factory and the CLI all import on their own."""
    assert module in loaded(module)

"""Smoke runs of the benchmarks (seconds, --quick, nothing written): they keep working. No
timing is asserted here; the figures live in docs/benchmarks.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from videoq.children import preexec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "suite",
    ["pickup", "takeover", "events", "throughput", "memory", "compositing", "captions", "storage",
     "realistic", "fairness", "feed", "tracing", "previews"],
)  # fmt: skip
def test_benchmark_quick_run_reports_its_table(suite: str) -> None:
    before = (ROOT / "docs" / "benchmarks.md").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{suite}", "--quick"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300, preexec_fn=preexec(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "baseline" in proc.stdout or "raw arq" in proc.stdout
    assert (ROOT / "docs" / "benchmarks.md").read_text() == before  # --quick writes nothing


@pytest.mark.timeout(420)
def test_chaos_quick_runs_meet_every_goal() -> None:
    """Two fault scenarios with real processes (bench/chaos.py): Redis SIGKILLed and restarted
    empty, and a provider brownout. Exit 0 means no job lost, nothing bought twice, no replay
    gap, no seq reused and no 500 (the row says which, when not)."""
    before = (ROOT / "docs" / "reliability.md").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "redis-restart", "brownout"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=400, preexec_fn=preexec(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| redis-restart |" in proc.stdout and "| brownout |" in proc.stdout
    assert (ROOT / "docs" / "reliability.md").read_text() == before  # --quick writes nothing

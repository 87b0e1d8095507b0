"""The provider benchmark's quick mode runs end to end (figures are not asserted: timing on a
shared machine is no test)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from videoq.children import preexec

ROOT = Path(__file__).resolve().parents[2]


async def test_quick_benchmark_runs_and_writes_its_section(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    output.write_text("# Benchmarks\n\n## Lifecycle\n\nkept\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.providers", "--quick", "--output", str(output),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        preexec_fn=preexec(),
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert "ratio ideal ÷ measured" in out.decode()
    text = output.read_text()
    assert "## Lifecycle\n\nkept" in text and "## Providers" in text
    assert "| requests off the spec | 0 |" in text
    assert "| calls (script / voice / create / poll) | 8 / 8 / 32 / 32 |" in text

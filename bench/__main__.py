"""`make bench`: every benchmark, one after another, each in a process of its own; each prints
its figures beside a baseline measured in the same run and writes its section of
docs/benchmarks.md. `python -m bench --quick` is a seconds-long smoke run that writes nothing."""

from __future__ import annotations

import subprocess
import sys

from videoq.children import preexec

SUITES = (
    "providers",
    "compositing",
    "captions",
    "pickup",
    "takeover",
    "throughput",
    "events",
    "lifecycle",
    "memory",
    "waiting",
    "storage",
    "realistic",
    "fairness",
    "feed",
    "tracing",
    "previews",
)


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for suite in SUITES:
        print(f"\n=== bench.{suite} ===", flush=True)
        args = [sys.executable, "-m", f"bench.{suite}", *(["--quick"] if quick else [])]
        if subprocess.run(args, preexec_fn=preexec()).returncode != 0:
            failed.append(suite)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`videoq` commands as the command-line tests run them: a real subprocess in an environment of
its own (:func:`isolated`, :func:`videoq`), its error read as the one line it must be
(:func:`one_line`), and a row of a table of refusals (:class:`Case`)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from videoq.children import preexec


def isolated(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any VIDEOQ_ variable (no developer's settings and no
    `videoq dev` session reach the command), with VIDEOQ_HOME ``home`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOQ_")}
    return {**env, "VIDEOQ_HOME": str(home), **extra}


async def videoq(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 120
) -> tuple[int, str, str]:
    """`python -m videoq …` run to its end: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "videoq", *args, env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(stderr: str) -> str:
    """The command's error, asserted to be one line starting ``error: `` and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Case:
    """A command the CLI refuses: its exit ``code`` and the words its one line ``says``. Each
    table adds how its command is set up."""

    name: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]

    def check(self, code: int, line: str) -> None:
        """Assert the command exited with :attr:`code` and its line says each of :attr:`says`."""
        assert code == self.code, line
        for words in self.says:
            assert words in line, line

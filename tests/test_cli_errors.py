"""Every error of the `videoq` command line is one line naming the problem and what to do,
never a traceback, with the documented exit code: a table of cases, each run as a real
subprocess against a real API (or none)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveApi, auth, new_key
from videoq.children import preexec

USAGE, FAILED, UNREACHABLE, INTERRUPTED = 2, 1, 3, 130


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOQ_")}
    return {**env, "VIDEOQ_HOME": str(home), **extra}


async def _run(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "videoq", *args, env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    #: Which key the command is given: "admin", "tenant", "bad" or "none" (no API at all).
    key: str = "tenant"
    #: The API's URL: "live", "dead" (a closed port) or "unset".
    api: str = "live"
    extra_env: tuple[tuple[str, str], ...] = ()


DURATION = "--duration (duration_s): Input should be greater than or equal to 5"
CASES = [
    Case("invalid field", ("submit", "Lamp", "--duration", "3"), USAGE, (DURATION, "422")),
    Case(
        "invalid schedule",
        ("submit", "Lamp", "--run-at", "tomorrow"),
        USAGE,
        ("--run-at (run_at): must be an ISO 8601 date-time",),
    ),
    Case(
        "unknown option key",
        ("submit", "Lamp", "--option", "colour=red"),
        USAGE,
        ("--option (options.colour): unknown field",),
    ),
    Case("option not KEY=VALUE", ("submit", "Lamp", "--option", "x"), USAGE, ("KEY=VALUE",)),
    Case("bad flag value", ("submit", "Lamp", "--priority", "urgent"), USAGE, ("--priority",)),
    Case("unknown flag", ("status", "--nope"), USAGE, ("--nope", "videoq status --help")),
    Case(
        "unknown job",
        ("status", "0" * 8 + "-0000-4000-8000-" + "0" * 12),
        USAGE,
        ("404", "videoq jobs"),
    ),
    Case(
        "unknown job's video",
        ("download", "0" * 8 + "-0000-4000-8000-" + "0" * 12),
        USAGE,
        ("404",),
    ),
    Case("bad key", ("jobs",), USAGE, ("refused the key", "401", "VIDEOQ_API_KEY"), key="bad"),
    Case("tenant key on admin route", ("info",), USAGE, ("403", "admin key")),
    Case(
        "API not running",
        ("jobs",),
        UNREACHABLE,
        (
            "cannot reach the API at http://127.0.0.1:",
            "connection refused",
            "videoq dev",
            "VIDEOQ_API_URL",
        ),
        api="dead",
    ),
    Case(
        "API not running, on submit",
        ("submit", "Lamp", "--watch"),
        UNREACHABLE,
        ("cannot reach the API", "connection refused"),
        api="dead",
    ),
    Case(
        "no API configured",
        ("status", "x"),
        USAGE,
        ("set VIDEOQ_API_URL and VIDEOQ_API_KEY", "videoq dev"),
        key="none",
        api="unset",
    ),
    Case(
        "not a URL",
        ("jobs",),
        USAGE,
        ("not an http:// or https:// URL",),
        api="unset",
        extra_env=(("VIDEOQ_API_URL", "localhost:8000"),),
    ),
    Case(
        "invalid setting",
        ("jobs",),
        USAGE,
        ("invalid settings: VIDEOQ_CORS_ORIGINS",),
        extra_env=(("VIDEOQ_CORS_ORIGINS", "[not json"),),
    ),
    Case(
        "render checks the brief as the API does",
        ("render", "Lamp", "--duration", "3"),
        USAGE,
        (DURATION,),
        key="none",
        api="unset",
    ),
    Case(
        "no database for a server command",
        ("keys", "create", "--tenant", "t"),
        USAGE,
        ("VIDEOQ_DATABASE_URL", "videoq dev"),
        key="none",
        api="unset",
        extra_env=(("VIDEOQ_DATABASE_URL", ""),),
    ),
]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_each_error_is_one_line_with_its_exit_code(
    case: Case, live_api: LiveApi, sessions: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    env = _env(tmp_path / "home", **dict(case.extra_env))
    if case.api == "live":
        env["VIDEOQ_API_URL"] = live_api.url
    elif case.api == "dead":
        env["VIDEOQ_API_URL"] = f"http://127.0.0.1:{_closed_port()}"
    if case.key == "tenant":
        env["VIDEOQ_API_KEY"] = await new_key(sessions)
    elif case.key == "admin":
        env["VIDEOQ_API_KEY"] = await new_key(sessions, admin=True)
    elif case.key == "bad":
        env["VIDEOQ_API_KEY"] = "vq_not_a_key_of_this_service_at_all"
    elif "VIDEOQ_API_URL" in env:
        env["VIDEOQ_API_KEY"] = "vq_whatever"
    if case.args[0] == "keys":  # nothing embedded to fall back on
        env["VIDEOQ_REDIS_URL"] = ""
    code, _, err = await _run(*case.args, env=env, cwd=tmp_path)
    line = _one_line(err)
    assert code == case.code, err
    for words in case.says:
        assert words in line, line


async def test_submit_and_render_refuse_a_brief_in_the_same_words(
    live_api: LiveApi, sessions: Any, tmp_path: Path
) -> None:
    env = _env(tmp_path, VIDEOQ_API_URL=live_api.url, VIDEOQ_API_KEY=await new_key(sessions))
    brief = ("Lamp", "--duration", "61", "--cta", "x" * 81)
    _, _, submitted = await _run("submit", *brief, env=env, cwd=tmp_path)
    _, _, rendered = await _run("render", *brief, env=env, cwd=tmp_path)
    api_words = _one_line(submitted).removesuffix(" (422 validation_error)")
    assert _one_line(rendered) == api_words
    assert "--cta (cta_text)" in api_words and "--duration (duration_s)" in api_words


async def test_dev_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await _run("dev", "--port", str(port), env=_env(tmp_path), cwd=tmp_path)
    line = _one_line(err)
    assert code == USAGE
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port" in line


async def test_watch_prints_the_id_first_and_ctrl_c_leaves_the_job_running(
    live_api: LiveApi, sessions: Any, tmp_path: Path
) -> None:
    """No worker runs: the job stays queued while it is watched; Ctrl-C stops the watching."""
    key = await new_key(sessions)
    env = _env(tmp_path, VIDEOQ_API_URL=live_api.url, VIDEOQ_API_KEY=key)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "videoq", "submit", "Watched Lamp", "--watch", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec(),
    )  # fmt: skip
    assert proc.stderr is not None
    first = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
    assert first.startswith("job ") and "queued" in first and "Ctrl-C" in first
    job_id = first.split()[1]
    proc.send_signal(signal.SIGINT)
    rest = (await asyncio.wait_for(proc.stderr.read(), 60)).decode()
    assert await proc.wait() == INTERRUPTED
    assert "Traceback" not in rest and "Aborted" not in rest
    last = rest.strip().splitlines()[-1]
    assert f"job {job_id} goes on" in last and f"videoq status {job_id}" in last
    async with httpx.AsyncClient(base_url=live_api.url, headers=auth(key)) as http:
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"

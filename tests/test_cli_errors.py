"""Every error of the `videoq` command line is one line naming the problem and what to do,
never a traceback, with the documented exit code: a table of cases, each run as a real
subprocess against a real API (or none)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.commands import Case, closed_port, isolated, one_line, videoq
from tests.conftest import LiveApi, auth, new_key
from videoq.children import preexec

USAGE, FAILED, UNREACHABLE, INTERRUPTED = 2, 1, 3, 130


@dataclass(frozen=True)
class ApiCase(Case):
    #: Which key the command is given: "admin", "tenant", "bad" or "none" (no API at all).
    key: str = "tenant"
    #: The API's URL: "live", "dead" (a closed port) or "unset".
    api: str = "live"
    extra_env: tuple[tuple[str, str], ...] = ()


DURATION = "--duration (duration_s): Input should be greater than or equal to 5"
CASES = [
    ApiCase("invalid field", ("submit", "Lamp", "--duration", "3"), USAGE, (DURATION, "422")),
    ApiCase(
        "invalid schedule",
        ("submit", "Lamp", "--run-at", "tomorrow"),
        USAGE,
        ("--run-at (run_at): must be an ISO 8601 date-time",),
    ),
    ApiCase(
        "unknown option key",
        ("submit", "Lamp", "--option", "colour=red"),
        USAGE,
        ("--option (options.colour): unknown field",),
    ),
    ApiCase("option not KEY=VALUE", ("submit", "Lamp", "--option", "x"), USAGE, ("KEY=VALUE",)),
    ApiCase("bad flag value", ("submit", "Lamp", "--priority", "urgent"), USAGE, ("--priority",)),
    ApiCase("unknown flag", ("status", "--nope"), USAGE, ("--nope", "videoq status --help")),
    ApiCase(
        "unknown job",
        ("status", "0" * 8 + "-0000-4000-8000-" + "0" * 12),
        USAGE,
        ("404", "videoq jobs"),
    ),
    ApiCase(
        "unknown job's video",
        ("download", "0" * 8 + "-0000-4000-8000-" + "0" * 12),
        USAGE,
        ("404",),
    ),
    ApiCase("bad key", ("jobs",), USAGE, ("refused the key", "401", "VIDEOQ_API_KEY"), key="bad"),
    ApiCase("tenant key on admin route", ("info",), USAGE, ("403", "admin key")),
    ApiCase(
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
    ApiCase(
        "API not running, on submit",
        ("submit", "Lamp", "--watch"),
        UNREACHABLE,
        ("cannot reach the API", "connection refused"),
        api="dead",
    ),
    ApiCase(
        "no API configured",
        ("status", "x"),
        USAGE,
        ("set VIDEOQ_API_URL and VIDEOQ_API_KEY", "videoq dev"),
        key="none",
        api="unset",
    ),
    ApiCase(
        "not a URL",
        ("jobs",),
        USAGE,
        ("not an http:// or https:// URL",),
        api="unset",
        extra_env=(("VIDEOQ_API_URL", "localhost:8000"),),
    ),
    ApiCase(
        "invalid setting",
        ("jobs",),
        USAGE,
        ("invalid settings: VIDEOQ_CORS_ORIGINS",),
        extra_env=(("VIDEOQ_CORS_ORIGINS", "[not json"),),
    ),
    ApiCase(
        "render checks the brief as the API does",
        ("render", "Lamp", "--duration", "3"),
        USAGE,
        (DURATION,),
        key="none",
        api="unset",
    ),
    ApiCase(
        "no database for a server command",
        ("keys", "create", "--tenant", "t"),
        USAGE,
        ("VIDEOQ_DATABASE_URL", "videoq dev"),
        key="none",
        api="unset",
        extra_env=(("VIDEOQ_DATABASE_URL", ""),),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_each_error_is_one_line_with_its_exit_code(
    case: ApiCase, live_api: LiveApi, sessions: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    env = isolated(tmp_path / "home", **dict(case.extra_env))
    if case.api == "live":
        env["VIDEOQ_API_URL"] = live_api.url
    elif case.api == "dead":
        env["VIDEOQ_API_URL"] = f"http://127.0.0.1:{closed_port()}"
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
    code, _, err = await videoq(*case.args, env=env, cwd=tmp_path)
    case.check(code, one_line(err))


async def test_submit_and_render_refuse_a_brief_in_the_same_words(
    live_api: LiveApi, sessions: Any, tmp_path: Path
) -> None:
    env = isolated(tmp_path, VIDEOQ_API_URL=live_api.url, VIDEOQ_API_KEY=await new_key(sessions))
    brief = ("Lamp", "--duration", "61", "--cta", "x" * 81)
    _, _, submitted = await videoq("submit", *brief, env=env, cwd=tmp_path)
    _, _, rendered = await videoq("render", *brief, env=env, cwd=tmp_path)
    api_words = one_line(submitted).removesuffix(" (422 validation_error)")
    assert one_line(rendered) == api_words
    assert "--cta (cta_text)" in api_words and "--duration (duration_s)" in api_words


async def test_dev_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await videoq(
            "dev", "--port", str(port), env=isolated(tmp_path), cwd=tmp_path
        )
    line = one_line(err)
    assert code == USAGE
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port" in line


async def test_watch_prints_the_id_first_and_ctrl_c_leaves_the_job_running(
    live_api: LiveApi, sessions: Any, tmp_path: Path
) -> None:
    """No worker runs: the job stays queued while it is watched; Ctrl-C stops the watching."""
    key = await new_key(sessions)
    env = isolated(tmp_path, VIDEOQ_API_URL=live_api.url, VIDEOQ_API_KEY=key)
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

"""Secrets never reach a log line."""

from __future__ import annotations

import io
import json
import logging

import structlog

from videoq.logs import REDACTED, configure_logging
from videoq.settings import Settings


def test_secrets_are_redacted_from_json_logs() -> None:
    captured = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=captured)
    try:
        structlog.get_logger("t").info(
            "provider_called",
            api_key="vq_abcdefghijklmnopqrstuvwxyz",
            headers={"Authorization": "Bearer r8_secretsecretsecret", "accept": "json"},
            url="postgresql://postgres:hunter2@db:5432/videoq",
            note="token r8_abcdefghijklmnop and sk-ant-abcdefghijkl leaked",
        )
    finally:
        configure_logging(Settings())
    line = json.loads(captured.getvalue().strip().splitlines()[-1])
    assert line["api_key"] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED, "accept": "json"}
    assert "hunter2" not in line["url"] and line["url"].startswith("postgresql://")
    assert "r8_abcdefghijklmnop" not in line["note"] and "sk-ant-" not in line["note"]
    assert line["event"] == "provider_called"


def test_library_logs_go_through_the_same_redaction() -> None:
    """arq, uvicorn, httpx and asyncpg log through the standard library: their lines get the
    same format and the same redaction as ours."""
    captured = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=captured)
    try:
        logging.getLogger("httpx").warning(
            "POST https://user:hunter2@example.com with Bearer r8_secretsecretsecret failed"
        )
    finally:
        configure_logging(Settings())
    line = json.loads(captured.getvalue().strip().splitlines()[-1])
    assert line["logger"] == "httpx" and line["level"] == "warning"
    assert "hunter2" not in line["event"] and "r8_secret" not in line["event"]
    assert REDACTED in line["event"]

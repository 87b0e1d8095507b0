"""The README's configuration table is generated from `Settings` and cannot drift from it; list
settings read a JSON list or comma-separated values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from videoq.children import preexec
from videoq.settings import TABLE_END, TABLE_START, Settings, markdown_table, with_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_table_is_the_generated_one() -> None:
    readme = README.read_text()
    assert readme == with_table(readme), (
        "README.md's configuration table differs from Settings: run "
        "`python -m videoq.settings --write README.md`"
    )
    block = readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    assert block.strip() == markdown_table().strip()


def test_every_setting_has_a_row_and_a_description() -> None:
    table = markdown_table()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description for the README"
        assert f"`VIDEOQ_{name.upper()}`" in table
    assert "`VIDEOQ_CORS_ORIGINS`" in table
    assert "`ANTHROPIC_API_KEY`" in table  # the ecosystems' own names are listed too


def test_the_table_comes_from_the_command_line_too() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "videoq.settings", "--markdown"],
        capture_output=True, text=True, check=True, timeout=60, preexec_fn=preexec(),
    )  # fmt: skip
    assert printed.stdout == markdown_table()
    assert "Warning" not in printed.stderr


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n\n{TABLE_START}\n| stale |\n{TABLE_END}\n\nafter\n")
    subprocess.run(
        [sys.executable, "-m", "videoq.settings", "--write", str(readme)],
        check=True, timeout=60, preexec_fn=preexec(),
    )  # fmt: skip
    text = readme.read_text()
    assert text.startswith("# before\n\n") and text.endswith(f"{TABLE_END}\n\nafter\n")
    assert "| stale |" not in text and markdown_table() in text


LISTS = [
    ("VIDEOQ_CORS_ORIGINS", "cors_origins", ["https://a.example", "https://b.example"]),
    ("VIDEOQ_WEBHOOK_ALLOWED_NETWORKS", "webhook_allowed_networks", ["10.0.0.0/8", "::1/128"]),
    ("VIDEOQ_REPLICATE_FALLBACK_MODELS", "replicate_fallback_models", ["a/b", "c/d-1"]),
]


@pytest.mark.parametrize(("variable", "name", "values"), LISTS)
def test_list_settings_read_json_or_commas(
    variable: str, name: str, values: list[str], monkeypatch: Any
) -> None:
    monkeypatch.setenv(variable, ", ".join(values))
    assert getattr(Settings(), name) == values
    monkeypatch.setenv(variable, "[" + ", ".join(f'"{v}"' for v in values) + "]")
    assert getattr(Settings(), name) == values
    monkeypatch.setenv(variable, values[0])
    assert getattr(Settings(), name) == values[:1]
    monkeypatch.setenv(variable, "")
    assert getattr(Settings(), name) == []


def test_delays_read_json_or_commas(monkeypatch: Any) -> None:
    monkeypatch.setenv("VIDEOQ_RETRY_DELAYS_S", "1, 2.5,10")
    monkeypatch.setenv("VIDEOQ_WEBHOOK_RETRY_DELAYS_S", "[5, 60]")
    settings = Settings()
    assert settings.retry_delays_s == (1.0, 2.5, 10.0)
    assert settings.webhook_retry_delays_s == (5.0, 60.0)


def test_a_broken_list_names_its_setting(monkeypatch: Any) -> None:
    monkeypatch.setenv("VIDEOQ_CORS_ORIGINS", '["https://a.example"')
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert raised.value.errors()[0]["loc"] == ("cors_origins",)
    monkeypatch.setenv("VIDEOQ_CORS_ORIGINS", "")
    monkeypatch.setenv("VIDEOQ_REPLICATE_FALLBACK_MODELS", "a/b,not a model")
    with pytest.raises(ValidationError, match="not a model's owner/name"):
        Settings()


def test_lists_from_the_config_file_and_keywords_stay_lists(
    tmp_path: Path, monkeypatch: Any
) -> None:
    (tmp_path / "videoq.toml").write_text('cors_origins = ["https://toml.example"]\n')
    monkeypatch.chdir(tmp_path)
    assert Settings().cors_origins == ["https://toml.example"]
    assert Settings(cors_origins=["https://kw.example"]).cors_origins == ["https://kw.example"]

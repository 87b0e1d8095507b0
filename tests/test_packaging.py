"""What a deployment hits before the first job: an installed wheel carries its migrations, the
database URL takes libpq's options on every path to PostgreSQL, a blank provider key is no key."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from videoq import store
from videoq.settings import Settings
from videoq.store.engine import MIGRATIONS_DIR
from videoq.store.grouped import GroupedWriter

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_every_migration(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("videoq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    inside = MIGRATIONS_DIR.relative_to(ROOT / "src")
    expected = {
        (inside / path.relative_to(MIGRATIONS_DIR)).as_posix()
        for path in MIGRATIONS_DIR.rglob("*")
        if path.is_file() and path.suffix in (".py", ".mako")
    }
    assert any(name.endswith("0001_initial.py") for name in expected)
    assert expected <= names
    # The font text is drawn with on a machine that has none (videoq.ffmpeg.BUNDLED_FONT).
    assert {"videoq/fonts/DejaVuSans-Bold.ttf", "videoq/fonts/LICENSE-DejaVu.txt"} <= names
    # Found beside the package's code, as an installed wheel lays it out.
    assert MIGRATIONS_DIR.parent == Path(store.__file__).resolve().parent


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


async def test_libpq_options_reach_both_paths_to_postgresql(base_settings: Settings) -> None:
    """``sslmode`` (and libpq's other options) in VIDEOQ_DATABASE_URL: SQLAlchemy's own
    asyncpg dialect would pass it to ``asyncpg.connect`` as a keyword and fail."""
    assert base_settings.database_url
    url = with_option(base_settings.database_url, "sslmode=disable")
    engine = store.create_engine(url)
    try:
        await store.ping(engine)
        await store.check_migrated(engine)
    finally:
        await engine.dispose()
    books = GroupedWriter(url, "w-sslmode")
    try:
        pool = await books.pool()
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await books.aclose()


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_provider_key_is_no_key(blank: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ELEVENLABS_API_KEY", "REPLICATE_API_TOKEN"):
        monkeypatch.setenv(name, blank)
    settings = Settings()
    assert settings.anthropic_api_key is None
    assert settings.elevenlabs_api_key is None
    assert settings.replicate_api_token is None

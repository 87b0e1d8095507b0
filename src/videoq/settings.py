"""Settings: one pydantic-settings object, built once per process at each entry point, passed down.

Precedence, highest first: a job's ``options`` (see :meth:`Settings.for_job`) > command-line flags
(passed as keyword arguments) > environment (``VIDEOQ_*``) > ``videoq.toml`` > defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: Job ``options`` may override only these settings; everything else is per process.
JOB_OVERRIDABLE = frozenset(
    {"providers", "job_timeout_s", "stage_timeout_s", "max_retries", "anthropic_model"}
)


class Settings(BaseSettings):
    """Every knob of videoq. Environment variables use the ``VIDEOQ_`` prefix."""

    model_config = SettingsConfigDict(
        env_prefix="VIDEOQ_", toml_file="videoq.toml", extra="ignore", populate_by_name=True
    )

    # Stores. Unset URLs mean "use the embedded services under `home`".
    database_url: str | None = Field(default=None, description="PostgreSQL URL (asyncpg).")
    redis_url: str | None = Field(default=None, description="Redis URL, e.g. redis://host:6379/0.")
    home: Path = Field(default=Path(".videoq"), description="Embedded services and artifacts.")
    artifacts_dir: Path | None = Field(default=None, description="Default: <home>/artifacts.")

    # Logging.
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    # API.
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 64 * 1024

    # Worker.
    queue_name: str = "videoq:queue"
    max_jobs: int = Field(default=4, description="Jobs one worker process runs at once.")
    poll_delay_s: float = 0.05
    job_timeout_s: float = 1800.0
    stage_timeout_s: float = 900.0
    max_retries: int = Field(default=3, description="Retries after the first attempt.")
    retry_delays_s: tuple[float, ...] = (2.0, 4.0, 8.0)

    # Pipeline.
    providers: Literal["auto", "offline"] = Field(
        default="auto", description="`offline` forces the offline providers for every stage."
    )
    ffmpeg_path: str | None = Field(default=None, description="Default: PATH, then imageio-ffmpeg.")
    ffmpeg_preset: str = "veryfast"
    ffmpeg_crf: int = 23
    fps: int = 30
    font_file: Path | None = None

    # Providers (names those ecosystems already use; the VIDEOQ_ forms work too).
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "VIDEOQ_ANTHROPIC_API_KEY")
    )
    elevenlabs_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ELEVENLABS_API_KEY", "VIDEOQ_ELEVENLABS_API_KEY"),
    )
    replicate_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("REPLICATE_API_TOKEN", "VIDEOQ_REPLICATE_API_TOKEN"),
    )
    anthropic_model: str = "claude-sonnet-5-5"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def artifacts(self) -> Path:
        """Directory holding every job's artifacts (one sub-directory per job id)."""
        return self.artifacts_dir or self.home / "artifacts"

    def for_job(self, options: dict[str, Any] | None) -> Settings:
        """These settings with a job's ``options`` applied (only :data:`JOB_OVERRIDABLE` keys)."""
        if not options:
            return self
        allowed = {k: v for k, v in options.items() if k in JOB_OVERRIDABLE}
        return self.model_validate({**self.model_dump(), **allowed}) if allowed else self

"""Settings from STUDIO_* environment variables, validated once with a clear message."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.urls import broker_url, database_url


class SettingsError(ValueError):
    """Raised with one readable line naming the bad variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STUDIO_", extra="ignore")

    data_dir: Path = Field(default=Path("studio-data"), description="artifacts, imported teachers, database")
    # Empty means the embedded default in the data dir; both are validated after data_dir, which they build on.
    database_url: str = Field(default="", validate_default=True, description="SQLAlchemy URL: SQLite or Postgres")
    broker_url: str = Field(default="", validate_default=True, description="Celery broker: Redis or kombu's SQLAlchemy")
    host: str = "127.0.0.1"
    port: int = Field(default=7860, ge=1, le=65535)
    device: str = "cpu"          # "cpu", "cuda" or "cuda:N" for foreground work and workers
    max_samples: int = Field(default=1024, ge=1, le=4096)  # seeds per Compare request (points: one scatter of them)
    # Accounts (app/studio/access.py): "name:password:role,..." and/or a file of such lines; none means --no-auth.
    users: str = ""
    users_file: Path | None = None
    import_roots: str = ""  # ':'-separated folders the Teachers tab may import from; empty: DATA_DIR/import
    # The largest pipeline the studio zips for download (an SD 1.5 student in fp32 is ~4.3 GB); a bigger one is copied
    # from its folder on the server instead.
    max_archive_mb: int = Field(default=8192, ge=1, le=1_000_000)
    # Jobs: a worker renews its lease every lease_s / 3 seconds; a run whose lease lapses is requeued by the reaper.
    lease_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    queue: str = Field(default="studio", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # the Celery queue jobs go to

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str, info: ValidationInfo) -> str:
        if not v and "data_dir" in info.data:
            return f"sqlite:///{info.data['data_dir'] / 'studio.db'}"
        return database_url(v).render_as_string(hide_password=False)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, v: str, info: ValidationInfo) -> str:
        if not v and "data_dir" in info.data:
            return f"sqla+sqlite:///{info.data['data_dir'] / 'broker.db'}"  # needs no server (docs/architecture.md#the-studio)
        return broker_url(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not (v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit())):
            raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")
        return v


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "?"
        message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        raise SettingsError(f"STUDIO_{field.upper()}: {message}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()

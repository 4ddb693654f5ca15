"""Settings from the environment (FDA_*), built once and overridable in tests."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FDA_", extra="ignore")

    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, SeaweedFS); None for AWS")
    s3_region: str | None = Field(None, description="Region for the S3 client; None takes AWS_DEFAULT_REGION")
    cache_dir: Path = Field(Path("~/.cache/fda-merge").expanduser(), description="Downloaded checkpoints")


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""Settings of model-tools (env prefix EDGEFLEET_TOOLS_)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet"


class ToolsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_TOOLS_")

    # Prepared zoo models live here, so tests and benchmarks build each one once per machine.
    cache_dir: Path = Field(default_factory=_default_cache)

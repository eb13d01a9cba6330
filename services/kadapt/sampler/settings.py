"""Sampler settings from the environment (prefix ``KADAPT_SAMPLER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SamplerSettings(BaseSettings):
    """``model_repository``: the bundle repository (``<name>/<version>/manifest.json``);
    ``max_inflight``: plans computing at once (the rest queue until their deadline);
    ``warmup``: run one plan per policy before reporting ready."""

    model_config = SettingsConfigDict(env_prefix="KADAPT_SAMPLER_", extra="ignore")

    model_repository: Path = Path("models")
    max_inflight: int = Field(default=8, ge=1, le=1024)
    warmup: bool = True

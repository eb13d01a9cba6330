"""What the deployment tests share: the services' settings classes and the environment names they read."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from kadapt.gateway.settings import GatewaySettings
from kadapt.recon.settings import ReconSettings
from kadapt.sampler.settings import SamplerSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "sampler": SamplerSettings,
    "recon": ReconSettings,
}
# Read by the images' entrypoint (deploy/docker/entrypoint.sh), not by a settings class.
ENTRYPOINT_ENV = frozenset({"KADAPT_GATEWAY_SAMPLER_TOKEN_FILE"})


def settings_env_names() -> dict[str, str]:
    """``KADAPT_<SERVICE>_<FIELD>`` -> service, for every field of the three settings classes."""
    names: dict[str, str] = {}
    for service, settings in SETTINGS.items():
        prefix = str(settings.model_config.get("env_prefix", ""))
        for field in settings.model_fields:
            names[f"{prefix}{field}".upper()] = service
    return names


def unknown_service_env(names: Iterable[str]) -> list[str]:
    """The ``KADAPT_<SERVICE>_*`` names in ``names`` that no settings class (nor the entrypoint) reads:
    a typo there is silently ignored by pydantic-settings (``extra="ignore"``), so it must fail here."""
    known = settings_env_names()
    prefixes = tuple(f"KADAPT_{service.upper()}_" for service in SETTINGS)
    return sorted(
        name
        for name in names
        if name.startswith(prefixes) and name not in known and name not in ENTRYPOINT_ENV
    )


@pytest.fixture(scope="session")
def env_names() -> dict[str, str]:
    """``KADAPT_<SERVICE>_<FIELD>`` -> service."""
    return settings_env_names()


@pytest.fixture(scope="session")
def unknown_env() -> Callable[[Iterable[str]], list[str]]:
    """:func:`unknown_service_env`, for the tests (conftest modules are not importable by name)."""
    return unknown_service_env

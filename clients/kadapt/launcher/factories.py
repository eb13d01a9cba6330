"""Application factories for uvicorn (``uvicorn --factory kadapt.launcher.factories:gateway``).

Each reads its settings from the environment (``KADAPT_<SERVICE>_*``) and returns the service's app.
"""

from __future__ import annotations

from fastapi import FastAPI


def gateway() -> FastAPI:
    from kadapt.gateway.api.app import create_app
    from kadapt.gateway.settings import GatewaySettings

    return create_app(GatewaySettings())


def sampler() -> FastAPI:
    from kadapt.sampler.api.app import create_app
    from kadapt.sampler.settings import SamplerSettings

    return create_app(SamplerSettings())


def recon() -> FastAPI:
    from kadapt.recon.api.app import create_app
    from kadapt.recon.settings import ReconSettings

    return create_app(ReconSettings())


FACTORIES = {"gateway": gateway, "sampler": sampler, "recon": recon}

"""The sampler's HTTP layer: thin FastAPI routes over :mod:`kadapt.sampler.domain`."""

from kadapt.sampler.api.app import create_app

__all__ = ["create_app"]

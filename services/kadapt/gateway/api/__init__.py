"""The gateway's FastAPI layer: the app factory, thin routes over ``domain``, problem+json, limits."""

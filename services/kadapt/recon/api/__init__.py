"""The recon service's HTTP API (FastAPI): health, readiness, metrics, methods, jobs."""

"""The recon service: workers consuming the recon job queue (classic and, later, learned methods).

``domain/`` holds the framework-free reconstructions, method registry and worker; ``api/`` the FastAPI
app (``create_app(settings)``). See ``docs/recon.md``.
"""

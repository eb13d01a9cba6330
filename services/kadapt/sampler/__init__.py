"""The sampler service: deadline-aware planning of the next phase-encode lines of a scan.

``domain/`` holds the framework-free policies and planner, ``api/`` the FastAPI app
(``create_app(settings)``). See ``docs/sampler.md``.
"""

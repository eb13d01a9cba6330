"""The gateway: the scanner-facing REST API, scan sessions, planning under a deadline, recon jobs.

``domain/`` is framework-free (sessions, ingest, planning, completion, image encoding); ``api/`` is the
FastAPI layer over it (``api.app.create_app``). The gateway never imports torch.
"""

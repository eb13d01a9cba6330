"""Wire types shared by the services and clients (strict pydantic models, no lax coercion).

Naming follows the template habit: ``XCreate`` is what a client sends, ``XPublic`` what it gets back.
"""

from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus
from kadapt.schemas.plans import PlanRequest, PlanResponse
from kadapt.schemas.scans import (
    IngestReport,
    ScanCreate,
    ScanGeometry,
    ScanPolicy,
    ScanPublic,
    ScanState,
)

__all__ = [
    "IngestReport",
    "PlanRequest",
    "PlanResponse",
    "ReconJob",
    "ReconResult",
    "ReconStatus",
    "ScanCreate",
    "ScanGeometry",
    "ScanPolicy",
    "ScanPublic",
    "ScanState",
]

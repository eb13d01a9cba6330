"""Framework-free sampler domain: policies (what to acquire) and the planner (when it is still worth it)."""

from kadapt.sampler.domain.planner import (
    NullObserver,
    Planner,
    PlanObserver,
    PolicyRegistry,
    validate_plan,
    wall_clock_ms,
    warmup_request,
)
from kadapt.sampler.domain.policies import (
    FixedFamilyPolicy,
    FixedMaskBundlePolicy,
    PlannedLines,
    Policy,
    PolicyInfo,
    centre_tiebreak,
    check_deadline,
    complete_plan,
    fixed_lines,
    scan_rng,
    smallest_gap,
)

__all__ = [
    "FixedFamilyPolicy",
    "FixedMaskBundlePolicy",
    "NullObserver",
    "PlanObserver",
    "PlannedLines",
    "Planner",
    "Policy",
    "PolicyInfo",
    "PolicyRegistry",
    "centre_tiebreak",
    "check_deadline",
    "complete_plan",
    "fixed_lines",
    "scan_rng",
    "smallest_gap",
    "validate_plan",
    "wall_clock_ms",
    "warmup_request",
]

"""The gateway's MRD streaming server (python-ismrmrd-server / FIRE / Gadgetron clients); see docs/mrd.md."""

from kadapt.gateway.mrd_server.config import SessionConfig, apply_text_overrides, parse_config
from kadapt.gateway.mrd_server.connection import MrdSession
from kadapt.gateway.mrd_server.feedback import FEEDBACK_NAME, PlanFeedback, pack_plan, unpack_plan
from kadapt.gateway.mrd_server.options import SessionOptions
from kadapt.gateway.mrd_server.server import MrdServer

__all__ = [
    "FEEDBACK_NAME",
    "MrdServer",
    "MrdSession",
    "PlanFeedback",
    "SessionConfig",
    "SessionOptions",
    "apply_text_overrides",
    "pack_plan",
    "parse_config",
    "unpack_plan",
]

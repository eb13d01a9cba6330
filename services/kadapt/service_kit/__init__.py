"""FastAPI glue shared by the services (problem+json error handling, hand-parsed bodies).

Services never import each other; they all import this. The core (``shared/kadapt``) imports no web
framework, so this lives with the services, and it imports no service itself.
"""

from kadapt.service_kit.problems import (
    PROBLEM_MEDIA_TYPE,
    error_response,
    install_problem_handlers,
    json_safe_errors,
    parse_body,
    problem_response,
    validation_error_from,
)

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "error_response",
    "install_problem_handlers",
    "json_safe_errors",
    "parse_body",
    "problem_response",
    "validation_error_from",
]

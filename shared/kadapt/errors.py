"""The one error tree of kadapt.

Every error the core or a service raises on purpose derives from :class:`KadaptError`. Each class
carries a stable ``slug`` (the problem+json ``type`` is ``PROBLEM_BASE + slug``), an HTTP status and a
short title; services map the whole tree to problem+json with one handler, the CLI prints the message.
Domain code never raises ``HTTPException`` and never uses ``assert`` for runtime validation. An error
that needs response headers (``WWW-Authenticate``, ``Retry-After``) returns them from :meth:`headers`.

::

    KadaptError
    ├── InvalidInputError                 400  invalid-input
    │   ├── MrdDecodeError                400  mrd-malformed
    │   │   └── MrdTruncatedError         400  mrd-truncated
    │   ├── GeometryMismatchError         422  geometry-mismatch     (coils / samples vs the session)
    │   ├── NonFiniteDataError            422  non-finite-data       (NaN / Inf samples)
    │   ├── EncodeOutOfRangeError         422  encode-out-of-range   (ky / slice / frame outside limits)
    │   ├── DuplicateLineError            409  duplicate-line
    │   ├── InvalidAccelerationError      422  invalid-acceleration  (impossible R or ACS for the matrix)
    │   ├── InvalidHeaderError            422  invalid-header        (MRD XML header)
    │   ├── BundleKindError               422  bundle-kind-mismatch  (a bundle of the wrong kind)
    │   ├── PayloadTooLargeError          413  payload-too-large
    │   └── UnsupportedMediaTypeError     415  unsupported-media-type (body content type)
    ├── NotFoundError                     404  not-found
    │   ├── UnknownScanError              404  scan-not-found
    │   ├── UnknownPolicyError            404  policy-not-found
    │   ├── UnknownMaskFamilyError        404  mask-family-not-found
    │   ├── UnknownReconMethodError       404  recon-method-not-found
    │   ├── UnknownConfigError            404  config-not-found      (MRD session config not kadapt's)
    │   └── BundleNotFoundError           404  bundle-not-found
    ├── InvalidStateError                 409  invalid-state         (operation not allowed in this state)
    ├── UnauthenticatedError              401  unauthenticated       (no or invalid bearer token)
    ├── ForbiddenError                    403  forbidden             (the token lacks the route's scope)
    ├── RateLimitedError                  429  rate-limited          (the client is over its request rate)
    ├── BundleError                       500  bundle-invalid
    │   └── ChecksumMismatchError         500  checksum-mismatch
    ├── DeadlineExceededError             504  deadline-exceeded
    ├── PlanContractError                 500  plan-contract-violated (a policy's plan broke the contract)
    ├── ServiceUnavailableError           503  service-unavailable
    │   ├── OverloadedError               503  overloaded            (back-pressure: too much work queued)
    │   └── DependencyUnavailableError    503  dependency-unavailable (an external tool, e.g. bart, missing)
    ├── InsufficientStorageError          507  insufficient-storage  (a volume is full: ENOSPC / EDQUOT)
    ├── ExternalToolError                 500  external-tool-failed  (an external tool exited non-zero)
    └── JobFailedError                    500  job-failed
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

PROBLEM_BASE = "https://kadapt.dev/problems/"


class KadaptError(Exception):
    """Base of every deliberate kadapt error. ``detail`` names the bad value."""

    slug: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "kadapt error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """RFC 9457 problem details for this error (JSON-serialisable)."""
        problem: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            problem["instance"] = instance
        problem.update({k: v for k, v in self.extra.items() if k not in problem})
        return problem

    def headers(self) -> dict[str, str]:
        """HTTP response headers this error's answer must carry (none by default)."""
        return {}


class InvalidInputError(KadaptError):
    slug, status, title = "invalid-input", 400, "Invalid input"


class MrdDecodeError(InvalidInputError):
    slug, status, title = "mrd-malformed", 400, "Malformed MRD data"


class MrdTruncatedError(MrdDecodeError):
    slug, status, title = "mrd-truncated", 400, "Truncated MRD message"


class GeometryMismatchError(InvalidInputError):
    slug, status, title = "geometry-mismatch", 422, "Acquisition geometry does not match the scan"


class NonFiniteDataError(InvalidInputError):
    slug, status, title = "non-finite-data", 422, "Data contains NaN or Inf"


class EncodeOutOfRangeError(InvalidInputError):
    slug, status, title = "encode-out-of-range", 422, "Encoding counter outside the header's limits"


class DuplicateLineError(InvalidInputError):
    slug, status, title = "duplicate-line", 409, "Line already acquired"


class InvalidAccelerationError(InvalidInputError):
    slug, status, title = "invalid-acceleration", 422, "Impossible acceleration or ACS for the matrix"


class InvalidHeaderError(InvalidInputError):
    slug, status, title = "invalid-header", 422, "Invalid MRD header"


class BundleKindError(InvalidInputError):
    """A request names a model bundle that exists but is of a kind the use does not take (e.g. an
    ``mnet`` bundle as a scan's fixed-mask fallback); ``detail`` names the bundle and both kinds."""

    slug, status, title = "bundle-kind-mismatch", 422, "Model bundle of the wrong kind"


class PayloadTooLargeError(InvalidInputError):
    slug, status, title = "payload-too-large", 413, "Request body too large"


class UnsupportedMediaTypeError(InvalidInputError):
    slug, status, title = "unsupported-media-type", 415, "Unsupported media type"


class NotFoundError(KadaptError):
    slug, status, title = "not-found", 404, "Not found"


class UnknownScanError(NotFoundError):
    slug, status, title = "scan-not-found", 404, "Unknown scan"


class UnknownPolicyError(NotFoundError):
    slug, status, title = "policy-not-found", 404, "Unknown sampling policy"


class UnknownMaskFamilyError(NotFoundError):
    slug, status, title = "mask-family-not-found", 404, "Unknown mask family"


class UnknownReconMethodError(NotFoundError):
    slug, status, title = "recon-method-not-found", 404, "Unknown reconstruction method"


class UnknownConfigError(NotFoundError):
    slug, status, title = "config-not-found", 404, "Unknown MRD session config"


class BundleNotFoundError(NotFoundError):
    slug, status, title = "bundle-not-found", 404, "Model bundle not found"


class InvalidStateError(KadaptError):
    slug, status, title = "invalid-state", 409, "Operation not allowed in the current state"


class UnauthenticatedError(KadaptError):
    """No bearer token, or one no client holds. ``reason`` (``missing-token``, ``malformed-header``,
    ``invalid-token``) also chooses the RFC 6750 ``WWW-Authenticate`` challenge: a request without any
    credentials gets no ``error`` attribute (section 3.1)."""

    slug, status, title = "unauthenticated", 401, "Authentication required"

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="kadapt"'
        if self.extra.get("reason", "missing-token") != "missing-token":
            challenge += ', error="invalid_token"'
        return {"www-authenticate": challenge}


class ForbiddenError(KadaptError):
    """A valid token without the scope the route needs (``required_scope``)."""

    slug, status, title = "forbidden", 403, "Insufficient scope"

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="kadapt", error="insufficient_scope"'
        required = self.extra.get("required_scope")
        return {"www-authenticate": challenge + (f', scope="{required}"' if required else "")}


class RateLimitedError(KadaptError):
    """The client spent its token bucket; ``retry_after_s`` says when one request is allowed again."""

    slug, status, title = "rate-limited", 429, "Too many requests"

    def headers(self) -> dict[str, str]:
        wait = float(self.extra.get("retry_after_s", 1.0))
        return {"retry-after": str(max(1, math.ceil(wait)))}


class BundleError(KadaptError):
    slug, status, title = "bundle-invalid", 500, "Invalid model bundle"


class ChecksumMismatchError(BundleError):
    slug, status, title = "checksum-mismatch", 500, "Checksum mismatch"


class DeadlineExceededError(KadaptError):
    slug, status, title = "deadline-exceeded", 504, "Deadline exceeded"


class PlanContractError(KadaptError):
    slug, status, title = "plan-contract-violated", 500, "Planned mask violates the plan contract"


class ServiceUnavailableError(KadaptError):
    slug, status, title = "service-unavailable", 503, "Service unavailable"


class OverloadedError(ServiceUnavailableError):
    """Back-pressure: too much work already queued; ``retry_after_s`` (default 1) goes out as Retry-After."""

    slug, status, title = "overloaded", 503, "Too much work queued"

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, math.ceil(float(self.extra.get("retry_after_s", 1.0)))))}


class DependencyUnavailableError(ServiceUnavailableError):
    slug, status, title = "dependency-unavailable", 503, "External dependency unavailable"


class InsufficientStorageError(KadaptError):
    """A write failed because its volume is full (``ENOSPC``) or over quota (``EDQUOT``): nothing was
    half-written and the request can be repeated once space is freed (RFC 4918 status 507)."""

    slug, status, title = "insufficient-storage", 507, "Insufficient storage"


class ExternalToolError(KadaptError):
    slug, status, title = "external-tool-failed", 500, "External tool failed"


class JobFailedError(KadaptError):
    slug, status, title = "job-failed", 500, "Job failed"

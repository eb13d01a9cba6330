"""Per-client token buckets: ``rate_per_s`` requests a second on average, bursts of up to ``burst``.

Each client's bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a request takes one
and is refused with :class:`RateLimitedError` (429, ``Retry-After``) when none is left. The clock is
injectable (``time.monotonic`` by default) so tests step it by hand. One instance serves one event loop
(it takes no lock); its memory is bounded by the number of clients in the tokens file.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kadapt.errors import InvalidInputError, RateLimitedError


class RateLimiter:
    """Token buckets by client id; ``rate_per_s <= 0`` turns limiting off."""

    def __init__(
        self, rate_per_s: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s > 0 and burst < 1:
            raise InvalidInputError(f"rate-limit burst {burst} must be at least 1 request")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, time of the last refill]

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def wait_s(self, client_id: str) -> float:
        """Take one token for ``client_id``: 0.0 when the request may go, else the seconds until it could."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(client_id)
        if bucket is None:
            bucket = self._buckets[client_id] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate_per_s

    def check(self, client_id: str) -> None:
        """Take one token, or raise :class:`RateLimitedError` with ``retry_after_s``."""
        wait = self.wait_s(client_id)
        if wait > 0.0:
            raise RateLimitedError(
                f"client {client_id!r} is over {self.rate_per_s:g} requests/s (burst {self.burst:g})",
                retry_after_s=round(wait, 3),
            )

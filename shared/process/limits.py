"""The fleet's rate limit: token buckets per model in Postgres (`take_provider_capacity` in the
migrations), shared by every invocation and trigger, so concurrent functions together stay under
the account's tokens and requests per minute (`NEXUS_RATE_LIMITS`).

Processing makes a `FleetRateLimiter` current around its provider calls
(`shared.providers.limits.rate_limited`); generation backfills use its `for_backfill` twin,
which leaves a quarter of each bucket to live work. A 429 pauses the bucket for everyone for the
provider's Retry-After and shrinks everyone's share; the shares grow back without 429s. This is
the pacing beside the provider's back-off (`provider_gate`): the bucket keeps requests under the
limit; the back-off stops claiming when the provider still fails after the retries.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import NexusError
from shared.logs import get_logger
from shared.providers.deadlines import MIN_REQUEST_S, time_left_s

__all__ = ["HEADROOM", "MAX_WAIT_S", "FleetRateLimiter"]

MAX_WAIT_S = 5.0  # a backfill asks again at least this often: live work may have come and gone
# The share of the configured limits the fleet aims at: a request paced to the millisecond meets
# the provider's own bucket a few milliseconds off (clocks, networks), and a 429 costs far more.
HEADROOM = 0.95


@dataclasses.dataclass
class FleetRateLimiter:
    """Takes each request's tokens from the fleet's bucket for its model (models without limits
    go out freely). `limits`: (tokens per minute, requests per minute, burst seconds) by model."""

    store: Any
    provider: str
    limits: Mapping[str, tuple[float, float, float]]
    backfill: bool = False
    sleep: Callable[[float], None] = time.sleep

    def for_backfill(self) -> FleetRateLimiter:
        """The same limits for generation backfills: they leave a quarter of each bucket to live work."""
        return dataclasses.replace(self, backfill=True)

    def acquire(self, model: str, tokens: int, requests: int = 1) -> bool:
        configured = self.limits.get(model)
        if configured is None:
            return True
        limit = (configured[0] * HEADROOM, configured[1] * HEADROOM, configured[2])
        side = self.store.side_store()
        while True:
            max_wait_s = time_left_s() - MIN_REQUEST_S
            if max_wait_s < 0:
                return False
            try:
                taken, wait_s = side.take_provider_capacity(
                    self.provider, model, tokens, requests, limit, self.backfill, max_wait_s
                )
            except NexusError as exc:  # the database is the brake; without it, the provider's 429s are
                get_logger().warning("the fleet's rate limit could not be read", extra={"error": str(exc)})
                return True
            if taken:  # our place is reserved: go when it comes
                if wait_s > 0:
                    self.sleep(wait_s)
                return True
            if wait_s > max_wait_s:
                return False
            # a backfill asks again; a little jitter, so waiting workers do not all ask at once
            self.sleep(min(wait_s, MAX_WAIT_S) * random.uniform(1.0, 1.1))  # noqa: S311

    def throttled(self, model: str, retry_after_s: float | None) -> None:
        if model not in self.limits:
            return
        try:
            scale = self.store.side_store().provider_throttled(self.provider, model, retry_after_s)
        except NexusError as exc:
            get_logger().warning("a 429 was not shared with the fleet", extra={"error": str(exc)})
            return
        get_logger().warning(
            "rate limited by the provider: the fleet slows down",
            extra={"provider": self.provider, "model": model, "retry_after_s": retry_after_s, "scale": scale},
        )

"""The rate limit requests go out under: whoever runs provider calls may make a `RateLimiter`
current (`rate_limited`), and every OpenAI request then asks it for its tokens first and tells it
about each 429. Like the call scope (`deadlines`), it is carried into worker threads by
`deadlines.submit`. With none current, requests go out as they come (the provider's 429s and
the retry loop are then the only brake).

The fleet's limiter (`shared.process.limits.FleetRateLimiter`) keeps the buckets in Postgres, so
every invocation shares them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

__all__ = ["RateLimiter", "current_limiter", "rate_limited"]


class RateLimiter(Protocol):
    def acquire(self, model: str, tokens: int, requests: int = 1) -> bool:
        """Wait until `tokens` and `requests` may go to `model`, and take them; False when they
        cannot before the invocation's deadline (nothing taken)."""
        ...

    def throttled(self, model: str, retry_after_s: float | None) -> None:
        """The provider answered 429 for `model` (asking to wait `retry_after_s`, if it did)."""
        ...


_current: ContextVar[RateLimiter | None] = ContextVar("nexus_rate_limiter", default=None)


@contextmanager
def rate_limited(limiter: RateLimiter | None) -> Iterator[None]:
    """Make `limiter` the current one while the block runs (None: no limit)."""
    token = _current.set(limiter)
    try:
        yield
    finally:
        _current.reset(token)


def current_limiter() -> RateLimiter | None:
    return _current.get()

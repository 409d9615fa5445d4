"""The invocation's deadline, as seen by the provider calls made on its behalf.

Processing sets a scope (`call_scope`) around the work of an invocation; provider clients read it
to stop retrying, and to shorten a request's timeout, when the deadline would otherwise pass
before the answer could arrive. A probe of a backed-off provider also caps the attempts per call.
Worker threads see the scope when started through `submit` (a context variable does not cross
into a thread pool by itself).
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# A retry is not made with less than this left before the deadline after its wait, nor is any
# request started with less than MIN_START_S left.
MIN_REQUEST_S = 2.0
MIN_START_S = 0.05


@dataclass(frozen=True)
class CallScope:
    deadline: float  # time.monotonic() seconds
    max_attempts: int | None = None  # per provider call, when lower than the client's own


_scope: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar("nexus_call_scope", default=None)


@contextmanager
def call_scope(deadline: float, max_attempts: int | None = None) -> Iterator[CallScope]:
    """Provider calls made inside (in this thread, and in threads started with `submit`) end by
    `deadline` (a time.monotonic() value) and try at most `max_attempts` times."""
    scope = CallScope(deadline, max_attempts)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def time_left_s() -> float:
    """Seconds until the current scope's deadline (infinite outside any scope)."""
    scope = _scope.get()
    return math.inf if scope is None else scope.deadline - time.monotonic()


def attempts_allowed(default: int) -> int:
    """A provider call's attempts: `default`, or fewer when the scope caps them."""
    scope = _scope.get()
    return attempts_within(default, None if scope is None else scope.max_attempts)


def attempts_within(default: int, cap: int | None) -> int:
    """`default` attempts, lowered to `cap` when there is one; never fewer than one."""
    if cap is None:
        return default
    return max(1, min(default, cap))


def request_timeout_s(configured_s: float) -> float | None:
    """The timeout for a request starting now: the configured one, shortened to end by the
    deadline; None when the deadline has (nearly) passed. A request that times out on a shortened
    timeout ran out of the invocation's time, which says nothing about the provider."""
    return timeout_within(configured_s, time_left_s())


def timeout_within(configured_s: float, left_s: float) -> float | None:
    """A request's timeout with `left_s` seconds to the deadline: the configured one, cut to end
    by the deadline; None when less than MIN_START_S is left (no request starts)."""
    if left_s < MIN_START_S:
        return None
    return min(configured_s, left_s)


def submit(pool: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
    """`pool.submit(fn, *args)`, run in a copy of the caller's context (its call scope)."""
    return pool.submit(contextvars.copy_context().run, fn, *args)

"""What the APIs said their answers cost (`usage`), gathered where the work is done.

A `UsageMeter` made current with `metered()` collects the usage of every answer the OpenAI
providers receive while it is current: in this thread and in threads started with
`deadlines.submit` (which carries the caller's context). The pipeline meters each unit of work
(an item's summaries, a batch of embedding requests, a client's fold) and hands what it paid to
the store with the work itself. With no meter current, answers are simply not counted.

`apportion` splits one request's reported total over the inputs it carried, in proportion to
their exact token counts, so the parts add up to what the API reported.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

__all__ = ["Usage", "UsageKind", "UsageMeter", "apportion", "metered", "report_usage"]

UsageKind = Literal["embedding", "chat"]


@dataclass
class Usage:
    """What answers of one kind from one model cost: requests, and tokens as the API reported them."""

    kind: UsageKind
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageMeter:
    """The usage of the answers received while it was current, by (kind, model). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[tuple[str, str], Usage] = {}

    def add(
        self, kind: UsageKind, model: str, prompt_tokens: int, completion_tokens: int = 0, requests: int = 1
    ) -> None:
        with self._lock:
            usage = self._usage.get((kind, model))
            if usage is None:
                usage = self._usage[(kind, model)] = Usage(kind, model)
            usage.requests += requests
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens

    def merge(self, other: UsageMeter) -> None:
        for usage in other.totals():
            self.add(usage.kind, usage.model, usage.prompt_tokens, usage.completion_tokens, usage.requests)

    def totals(self) -> list[Usage]:
        """Each (kind, model)'s usage so far, as copies."""
        with self._lock:
            return [
                Usage(u.kind, u.model, u.requests, u.prompt_tokens, u.completion_tokens)
                for u in self._usage.values()
            ]

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._usage)


_current: ContextVar[UsageMeter | None] = ContextVar("nexus_usage_meter", default=None)


@contextmanager
def metered(meter: UsageMeter | None = None) -> Iterator[UsageMeter]:
    """Make `meter` (a new one by default) the current meter while the block runs."""
    meter = meter if meter is not None else UsageMeter()
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)


def report_usage(kind: UsageKind, model: str, prompt_tokens: int, completion_tokens: int = 0) -> None:
    """One answer's usage, added to the current meter (if any). Providers call this."""
    meter = _current.get()
    if meter is not None:
        meter.add(kind, model, max(0, prompt_tokens), max(0, completion_tokens))


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` into whole parts that add up to `total` (largest
    remainders first; equal weights when all are 0)."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    exact = [total * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    short = total - sum(parts)
    for i in sorted(range(len(weights)), key=lambda i: (parts[i] - exact[i], i))[:short]:
        parts[i] += 1
    return parts

"""What a processing run did, and who did it.

A report and a worker id are what every trigger hands back or logs; they hold no behaviour of
the pipeline, so they live apart from it (callers that only read a report import nothing else).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProcessingReport", "new_worker_id"]

_COUNTS = (
    "claimed",
    "done",
    "failed",
    "lost",
    "chunks",
    "reused_chunks",
    "embedded_chunks",
    "embedded_tokens",
    "indexed_chunks",
    "generation_chunks",
    "generation_embedded",
    "released",
    "deferred",
)


@dataclass
class ProcessingReport:
    """What a processing run did; `failed_ids` lets queue triggers report partial failures."""

    claimed: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0
    chunks: int = 0
    reused_chunks: int = 0
    embedded_chunks: int = 0
    embedded_tokens: int = 0
    indexed_chunks: int = 0
    # vectors stored for embedding generations other than the chunks' own write (building ones,
    # and gaps), and of those, how many were embedded rather than reused
    generation_chunks: int = 0
    generation_embedded: int = 0
    released: int = 0  # claimed, then given back unprocessed (no attempt counted): time ran out
    deferred: int = 0  # claimed, then given back after a provider failure (no attempt counted)
    done_ids: set[uuid.UUID] = field(default_factory=set)
    failed_ids: set[uuid.UUID] = field(default_factory=set)
    released_ids: set[uuid.UUID] = field(default_factory=set)
    deferred_ids: set[uuid.UUID] = field(default_factory=set)
    # The fleet's back-off when it stopped this run from claiming ({"state", "probe_at", ...}).
    backed_off: dict[str, Any] | None = None

    def merge(self, other: ProcessingReport) -> None:
        """Add another run's counts and ids to this one's (its back-off, if any, wins)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.done_ids |= other.done_ids
        self.failed_ids |= other.failed_ids
        self.released_ids |= other.released_ids
        self.deferred_ids |= other.deferred_ids
        self.backed_off = other.backed_off or self.backed_off

    def as_dict(self) -> dict[str, Any]:
        """The counts (and the back-off when there was one), as triggers answer and log them."""
        return {
            **{name: getattr(self, name) for name in _COUNTS},
            **({"backed_off": self.backed_off} if self.backed_off else {}),
        }


def new_worker_id(invocation_id: str | None = None) -> str:
    """Who holds a lease: host, pid and the invocation (or a random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{invocation_id or uuid.uuid4().hex[:12]}"

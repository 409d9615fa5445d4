"""Which failure is whose: the item's own, the provider's, or the clock's.

Kept apart from the pipeline because it is judgement, not work: pure functions of the error, the
item's history and what else the claim saw, which decide whether an attempt is counted (the
item's fault), the item is deferred and the fleet backs off (the provider's), or the item is
released untouched (the clock's).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.errors import NexusError
from shared.providers.summaries import SummaryError
from shared.store import ClaimedItem

__all__ = ["Trouble", "blamed", "fleet_failures", "is_quota", "is_suspect", "kind_of", "summary_troubles"]


@dataclass(frozen=True)
class Trouble:
    """Why an item of a claim is not stored: its own input ("item": an attempt is counted), the
    provider ("provider": deferred, no attempt), or the clock ("time": released, no attempt)."""

    error: NexusError
    kind: str


def kind_of(error: NexusError) -> str:
    """The kind of a failure from the error alone: out of time ("time"), the provider's
    (retryable, or no quota), or else the item's."""
    code = getattr(error, "code", "")
    if code == "deadline":
        return "time"
    if code == "insufficient_quota" or getattr(error, "retryable", False):
        return "provider"
    return "item"


def is_suspect(item: ClaimedItem) -> bool:
    """Whether a transient failure of a batch holding this item may be the item's doing: it was
    given back for a provider failure before, or charged for a failure of its own."""
    return item.transient_failures > 0 or item.attempts > 1


def blamed(item: ClaimedItem, error: NexusError, probe: bool, evidence: bool) -> str:
    """The kind of an item's failure. A transient one is the item's own when the item is a
    suspect (given back or charged before), the claim is not a probe (so the fleet was not backed
    off: the provider answered since), and there is `evidence` that the item, not the provider,
    fails: the same API answered the claim's other items, or the item was alone in its claim.
    Otherwise as `kind_of` says. A long outage claims only through probes: it charges nobody."""
    kind = kind_of(error)
    if (
        kind == "provider"
        and getattr(error, "retryable", False)
        and not probe
        and evidence
        and is_suspect(item)
    ):
        return "item"
    return kind


def summary_troubles(
    items: list[ClaimedItem],
    outcomes: dict[uuid.UUID, str | SummaryError | None],
    troubles: dict[uuid.UUID, Trouble],
    probe: bool = False,
    chat_answered: bool = False,
) -> dict[uuid.UUID, Trouble]:
    """The troubles of the items (those chunked) whose summary was not made (None: no time was
    left to start it); items already in `troubles` keep theirs. `chat_answered`: the chat API
    answered calls of this claim."""
    found: dict[uuid.UUID, Trouble] = {}
    evidence = chat_answered or len(items) == 1
    for item in items:
        if item.id in troubles:
            continue
        outcome = outcomes.get(item.id)
        if isinstance(outcome, SummaryError):
            found[item.id] = Trouble(outcome, blamed(item, outcome, probe, evidence))
        elif outcome is None:
            found[item.id] = Trouble(NexusError("No time was left to summarise the item."), "time")
    return found


def is_quota(error: NexusError) -> bool:
    """Whether the provider said the account has no quota left."""
    return getattr(error, "code", "") == "insufficient_quota"


def fleet_failures(troubles: dict[uuid.UUID, Trouble], answered: dict[str, bool]) -> list[NexusError]:
    """The provider failures that back the whole fleet off: no quota, or a failure of an API
    (`answered["embeddings"]`, `answered["chat"]`) that answered nothing in this claim (one that
    answered others is up, whatever this call met)."""
    return [
        t.error
        for t in troubles.values()
        if t.kind == "provider"
        and (is_quota(t.error) or not answered["chat" if isinstance(t.error, SummaryError) else "embeddings"])
    ]

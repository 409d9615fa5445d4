"""How an invocation's time is shared out: leases, claim sizes, each step's deadline.

A claim must be stored before its invocation ends, or everything paid for it (embeddings,
summaries) is lost and paid again by whoever reclaims it. Every rule about time is a pure
function of the time left and what was measured, here, so it reads (and is tested) in one place;
the pipeline only asks the clock and obeys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.providers.embeddings import Embedder
    from shared.providers.summaries import Summarizer

__all__ = [
    "CLAIM_TIME_SHARE",
    "FINISH_RESERVE_S",
    "INDEX_AFTER_ITEM_S",
    "INDEX_BUILDS_PER_RUN",
    "INDEX_BUILD_MIN_ROWS",
    "ITEM_CHUNK_MIN_S",
    "LEASE_MARGIN_S",
    "LONGEST_LEASE_S",
    "MAX_CLAIM_ITEMS",
    "REMOTE_SUMMARY_S",
    "SWEEP_RESERVE_S",
    "calls_deadline",
    "claim_size",
    "countdown",
    "index_batch_rows",
    "index_build_rows",
    "index_time_s",
    "is_local",
    "item_chunk_budget_s",
    "lease_s",
    "probe_wait_s",
    "summaries_deadline",
    "waits_for_probe",
]

LEASE_MARGIN_S = 30.0  # a lease outlives its invocation by this much, no more
LONGEST_LEASE_S = 3600.0  # the lease of work with no end to its time (the CLI's --all), margin apart
SWEEP_RESERVE_S = 5.0  # stop claiming when less than this is left
# Summaries stop starting this long before the end (items left unsummarised go back to the queue,
# no attempt counted), and a sweep sizes each claim to take at most CLAIM_TIME_SHARE of the time
# left, from what its previous claims took per item and per character; before any is measured, a
# remote summariser is assumed to take REMOTE_SUMMARY_S per call (a chat model writing a summary),
# the local one nothing.
FINISH_RESERVE_S = 10.0
CLAIM_TIME_SHARE = 0.6
REMOTE_SUMMARY_S = 3.0
MAX_CLAIM_ITEMS = 2000
CHARS_PER_TOKEN = 4  # a claim's size in characters, from its budget in tokens
# Each item's chunking may take its share (by characters) of the claim's time, and at least this.
ITEM_CHUNK_MIN_S = 10.0
INDEX_BATCH_ROWS = 256  # rows moved into the vector index per transaction (row locks held meanwhile)
INDEX_MIN_BATCH_ROWS = 16
INDEX_RESERVE_S = 2.0  # indexing stops with at least this much of the invocation left
INDEX_AFTER_ITEM_S = 3.0  # what a webhook, queue or CLI item trigger spends on indexing afterwards
# Rebuilding the HNSW index over every row (`begin_vector_index_build` in the migrations) instead
# of moving waiting rows in one by one: only with at least this many waiting, and only over as
# many rows as the time left builds at INDEX_BUILD_S_PER_ROW (about 0.5 ms was measured with two
# parallel workers, 0.8 ms with none; the margin covers slower servers).
INDEX_BUILD_MIN_ROWS = 500
INDEX_BUILD_S_PER_ROW = 0.002
INDEX_BUILDS_PER_RUN = 4  # rebuilds one run may do: the column's index, then generations'
# A scheduled sweep waits for a backed-off provider's next probe only if this much of its time
# would be left for work afterwards; it rechecks at least this often.
PROBE_WAIT_MIN_WORK_S = 30.0
PROBE_WAIT_STEP_S = 0.05


def countdown(remaining_s: Callable[[], float] | float) -> Callable[[], float]:
    """The invocation's time left as a function: `remaining_s` itself, or (a number) that many
    seconds from now on the monotonic clock."""
    if callable(remaining_s):
        return remaining_s
    deadline = time.monotonic() + float(remaining_s)
    return lambda: deadline - time.monotonic()


def lease_s(remaining_s: float) -> float:
    """How long work started with `remaining_s` left is leased: until shortly after the
    invocation must have ended (at most LONGEST_LEASE_S when the time has no end), so a crashed
    one's work is soon claimable again."""
    return min(remaining_s, LONGEST_LEASE_S) + LEASE_MARGIN_S


def calls_deadline(end: float) -> float:
    """When provider calls for a claim must end, the invocation ending at `end` (monotonic)."""
    return end - SWEEP_RESERVE_S


def summaries_deadline(end: float) -> float:
    """When summaries stop starting (and their calls end), so the claim is stored in time."""
    return end - FINISH_RESERVE_S


def claim_size(
    remaining_s: float,
    max_chars: int,
    *,
    seconds_per_item: float | None = None,
    seconds_per_char: float | None = None,
    remote_summaries_at_once: int = 0,
) -> tuple[int, int]:
    """(items, characters) a sweep may claim with `remaining_s` left: a claim should take at most
    CLAIM_TIME_SHARE of the time left after the reserves, judged by what earlier claims took per
    item and per character (each alone, so both bounds are cautious), at most MAX_CLAIM_ITEMS
    items and `max_chars` characters. Before anything is measured, a remote summariser making
    `remote_summaries_at_once` calls at a time (0: a local one) is assumed to take
    REMOTE_SUMMARY_S per call. (0, 0) means there is no time for another claim."""
    budget_s = (remaining_s - SWEEP_RESERVE_S - FINISH_RESERVE_S) * CLAIM_TIME_SHARE
    if budget_s <= 0:
        return 0, 0
    items, chars = MAX_CLAIM_ITEMS, max_chars
    per_item = seconds_per_item
    if per_item is None and remote_summaries_at_once:
        per_item = REMOTE_SUMMARY_S / remote_summaries_at_once
    if per_item:
        items = min(items, int(budget_s / per_item))
    if seconds_per_char:
        chars = min(chars, max(int(budget_s / seconds_per_char), 1))
    return items, chars


def item_chunk_budget_s(
    time_left_s: float, item_chars: int, claim_chars: int, min_s: float = ITEM_CHUNK_MIN_S
) -> float:
    """How long one item's chunking may take with `time_left_s` left in the invocation: its share,
    by characters, of the time before the reserves, and at least `min_s` (infinite when the time
    is). An item still chunking after it fails alone."""
    available_s = time_left_s - FINISH_RESERVE_S - SWEEP_RESERVE_S
    share = available_s * item_chars / max(claim_chars, 1)
    return max(min_s, share)


def index_time_s(remaining_s: float, budget_s: float | None, spent_s: float) -> float:
    """The time left for moving chunks into the vector index: up to INDEX_RESERVE_S before the
    invocation ends and, with a `budget_s`, what is left of it after `spent_s`."""
    left = remaining_s - INDEX_RESERVE_S
    if budget_s is not None:
        left = min(left, budget_s - spent_s)
    return left


def index_build_rows(left_s: float) -> int:
    """The most rows (indexed and waiting together) an index rebuild may cover with `left_s` to
    spend; 0 when that is fewer than INDEX_BUILD_MIN_ROWS."""
    if not math.isfinite(left_s):
        return 2**62
    rows = int(max(left_s, 0.0) / INDEX_BUILD_S_PER_ROW)
    return rows if rows >= INDEX_BUILD_MIN_ROWS else 0


def index_batch_rows(left_s: float, per_row_s: float | None) -> int:
    """Rows to move into the vector index next with `left_s` to spend: a full batch until the
    time per row is measured, then what fits; 0 to stop (no time, or fewer rows than
    INDEX_MIN_BATCH_ROWS would fit)."""
    if left_s <= 0:
        return 0
    rows = INDEX_BATCH_ROWS if per_row_s is None else min(INDEX_BATCH_ROWS, int(left_s / per_row_s))
    return rows if rows >= INDEX_MIN_BATCH_ROWS else 0


def waits_for_probe(probe_in_s: float, remaining_s: float) -> bool:
    """Whether a scheduled sweep waits for the back-off's next probe, due in `probe_in_s`: only
    if PROBE_WAIT_MIN_WORK_S of its `remaining_s` would be left for work afterwards."""
    return probe_in_s + PROBE_WAIT_MIN_WORK_S < remaining_s - SWEEP_RESERVE_S


def probe_wait_s(probe_in_s: float) -> float:
    """How long a sweep sleeps before looking at the back-off again."""
    return max(probe_in_s, PROBE_WAIT_STEP_S)


def is_local(provider: Embedder | Summarizer) -> bool:
    """The offline providers: CPU-bound in this process, so threads would not speed them up, and
    no call of theirs waits on a network."""
    return provider.model.startswith("local")

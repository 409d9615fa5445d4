"""Processing on demand, outside any function: one item, or everything claimable.

What `nexus process` and `nexus demo` run. No runtime limits the time, so each run gets a long
fixed budget; the caller only shows progress (it passes a callback ticked once per item settled).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from shared.process.pipeline import processor_from_settings
from shared.process.report import ProcessingReport
from shared.store import Store

__all__ = ["ITEM_BUDGET_S", "SWEEP_BUDGET_S", "items_to_process", "process_all"]

ITEM_BUDGET_S = 900.0  # one item asked for by id
SWEEP_BUDGET_S = 3600.0  # what a sweep believes is left at every check: it runs until nothing is


def process_all(
    settings: Any,
    store: Store,
    item_id: uuid.UUID | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> ProcessingReport:
    """Process the item `item_id`, or (without one) sweep until nothing is claimable; returns the
    report. `progress(n)` is called as items are done or failed during a sweep."""
    if item_id is not None:
        return processor_from_settings(settings, store).process_ids([item_id], ITEM_BUDGET_S)
    processor = processor_from_settings(settings, store, progress=progress)
    return processor.sweep(lambda: SWEEP_BUDGET_S)


def items_to_process(store: Store) -> int:
    """How many items a sweep may take (pending, failed, or processing under a lease that may
    expire): the total a progress bar counts up to."""
    counts = store.status().get("counts", {})
    return int(counts.get("pending", 0)) + int(counts.get("failed", 0)) + int(counts.get("processing", 0))

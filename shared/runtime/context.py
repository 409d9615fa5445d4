"""What an invocation's context says about the invocation: its time left and its id.

Lambda hands every handler a context with `get_remaining_time_in_millis()` and `aws_request_id`;
functions-framework, the CLI and tests give none (or a stand-in). Services read both through these
two functions, so none of them depends on which runtime called it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_BUDGET_S", "invocation_id", "remaining_time"]

DEFAULT_BUDGET_S = 240.0  # when the runtime does not tell us how long we have


def remaining_time(context: Any, budget_s: float = DEFAULT_BUDGET_S) -> Callable[[], float]:
    """Seconds left in this invocation: Lambda's context knows; elsewhere a fixed budget."""
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if callable(getter):
        return lambda: float(getter()) / 1000.0
    deadline = time.monotonic() + budget_s
    return lambda: deadline - time.monotonic()


def invocation_id(context: Any) -> str | None:
    """The invocation's id (Lambda's `aws_request_id`), or None when the runtime gives none."""
    return getattr(context, "aws_request_id", None)

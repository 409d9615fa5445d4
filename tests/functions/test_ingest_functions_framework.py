"""The ingest target served for real by the functions-framework CLI on loopback, called over HTTP.

One server per module (a subprocess in its own process group, killed in a finalizer), the real
embedded Postgres behind it, and httpx in front: the same path a Cloud Run / GCF deployment takes.
The same server is then checked against docs/openapi.yaml by schemathesis.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from shared.text.documents import DOCX, PDF
from tests.conftest import API_KEY, ROOT, count_items
from tests.support.documents import docx_bytes, pdf_bytes

MAX_BODY_BYTES = 4096
STARTUP_TIMEOUT_S = 60.0
INGEST_PATH = "/api/knowledge/ingest"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _server_env(pg_url: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("NEXUS_", "SUPABASE_", "GOOGLE_", "OPENAI_", "AWS_", "POWERTOOLS_"))
        and name != "DATABASE_URL"
    }
    env.update(
        DATABASE_URL=pg_url,
        NEXUS_INGEST_API_KEYS=f"{API_KEY},second-key",
        NEXUS_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        PYTHONUNBUFFERED="1",
    )
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's whole process group (gunicorn master and workers), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # stray workers whose leader is gone
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_until_serving(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if _port_answers(port):
            return
        try:
            proc.wait(timeout=0.05)  # doubles as the poll interval; returns early if the server died
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"functions-framework exited with {proc.returncode}:\n{log.read_text()}")
    pytest.fail(f"functions-framework did not listen on {port} in {STARTUP_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def base_url(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("functions-framework")  # no stray .env files
    log = workdir / "server.log"
    port = _free_port()
    command = [
        str(ROOT / ".venv" / "bin" / "functions-framework"),
        "--target",
        "ingest",
        "--source",
        str(ROOT / "functions" / "ingest" / "main.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=_server_env(pg_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so the finalizer reaches every worker
        )
    try:
        _wait_until_serving(proc, port, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        yield client


def auth(**extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {API_KEY}", **extra}


def item(client_id: uuid.UUID, **fields: Any) -> dict[str, Any]:
    return {
        "client_id": str(client_id),
        "source": "notes/ff.md",
        "content": "# FF\n\nServed for real.",
        **fields,
    }


def test_valid_item_is_201_and_stored(
    http: httpx.Client, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    response = http.post(INGEST_PATH, json=item(client_id, metadata={"k": "v"}), headers=auth())
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {"id": body["id"], "status": "pending", "duplicate": False}
    row = admin.execute(
        "select client_id, source, content, metadata, status from knowledge_items where id = %s",
        (body["id"],),
    ).fetchone()
    assert row == {
        "client_id": client_id,
        "source": "notes/ff.md",
        "content": "# FF\n\nServed for real.",
        "metadata": {"k": "v"},
        "status": "pending",
    }


def test_root_path_is_accepted(
    http: httpx.Client, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    response = http.post("/", json=item(client_id), headers=auth())
    assert response.status_code == 201, response.text
    assert count_items(admin, client_id) == 1


def test_repeat_with_idempotency_key_is_200_duplicate(
    http: httpx.Client, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    headers = auth(**{"idempotency-key": f"ff-{uuid.uuid4()}"})
    first = http.post(INGEST_PATH, json=item(client_id), headers=headers)
    second = http.post(INGEST_PATH, json=item(client_id), headers=headers)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json() == {"id": first.json()["id"], "status": "pending", "duplicate": True}
    assert count_items(admin, client_id) == 1


def test_chunked_upload_is_read_whole(
    http: httpx.Client, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    """No Content-Length (Transfer-Encoding: chunked): the body must still be read in full."""
    data = httpx.Request("POST", "/", json=item(client_id, content="chunked " * 20)).content
    pieces = iter([data[:10], data[10:50], data[50:]])
    response = http.post(INGEST_PATH, content=pieces, headers=auth(**{"content-type": "application/json"}))
    assert response.status_code == 201, response.text
    row = admin.execute(
        "select content from knowledge_items where id = %s", (response.json()["id"],)
    ).fetchone()
    assert row == {"content": "chunked " * 20}


def test_batch_answers_200_with_one_result_per_item(
    http: httpx.Client, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    items = [item(client_id, content=f"batch doc {i}", external_id=f"ff-b-{i}") for i in range(3)]
    response = http.post(INGEST_PATH, json={"items": items}, headers=auth())
    assert response.status_code == 200, response.text
    results = response.json()["items"]
    assert [r["duplicate"] for r in results] == [False, False, False]
    assert len({r["id"] for r in results}) == 3
    assert count_items(admin, client_id) == 3
    again = http.post(INGEST_PATH, json={"items": items}, headers=auth())
    assert [r["id"] for r in again.json()["items"]] == [r["id"] for r in results]
    assert all(r["duplicate"] for r in again.json()["items"])
    assert count_items(admin, client_id) == 3


def _error_cases(client_id: uuid.UUID) -> dict[str, tuple[dict[str, Any], int, list[str]]]:
    """name → (httpx request arguments, expected status, expected `errors[].field`)."""
    good = item(client_id)
    json_headers = auth(**{"content-type": "application/json"})
    return {
        "no credentials": ({"json": good}, 401, []),
        "wrong key": ({"json": good, "headers": {"authorization": "Bearer wrong"}}, 401, []),
        "get": ({"method": "GET", "headers": auth()}, 405, []),
        "put": ({"method": "PUT", "json": good, "headers": auth()}, 405, []),
        "over the size limit": (
            {"json": item(client_id, content="x" * (MAX_BODY_BYTES + 1)), "headers": auth()},
            413,
            [],
        ),
        "chunked over the size limit": (
            {
                "content": iter([b'{"content": "', b"y" * (MAX_BODY_BYTES + 1), b'"}']),
                "headers": json_headers,
            },
            413,
            [],
        ),
        "text/plain": ({"content": b"hello", "headers": auth(**{"content-type": "text/plain"})}, 415, []),
        "form": ({"data": {"content": "x"}, "headers": auth()}, 415, []),
        "not a uuid": ({"json": good | {"client_id": "nope"}, "headers": auth()}, 422, ["client_id"]),
        "unknown client": ({"json": item(uuid.uuid4()), "headers": auth()}, 422, ["client_id"]),
        "empty content": ({"json": item(client_id, content=""), "headers": auth()}, 422, ["content"]),
        "metadata not an object": (
            {"json": item(client_id, metadata=[1]), "headers": auth()},
            422,
            ["metadata"],
        ),
        "malformed json": ({"content": b'{"client_id": ', "headers": json_headers}, 400, []),
        "invalid utf-8": ({"content": b'{"content": "\xff\xfe"}', "headers": json_headers}, 400, []),
        "unknown path": ({"url": "/api/other", "json": good, "headers": auth()}, 404, []),
    }


ERROR_CASES = list(_error_cases(uuid.UUID(int=0)))


@pytest.mark.parametrize("name", ERROR_CASES)
def test_client_mistakes_get_a_problem_and_store_nothing(
    http: httpx.Client, admin: psycopg.Connection[Any], client_id: uuid.UUID, name: str
) -> None:
    arguments, expected_status, fields = _error_cases(client_id)[name]
    method = arguments.pop("method", "POST")
    url = arguments.pop("url", INGEST_PATH)
    response = http.request(method, url, **arguments)
    assert response.status_code == expected_status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == expected_status
    assert body["type"].startswith("https://")
    assert "Traceback" not in response.text and "psycopg" not in response.text
    assert [e["field"] for e in body.get("errors", [])] == fields
    for error in body.get("errors", []):
        assert set(error) == {"field", "pointer", "detail"}
    if expected_status == 405:
        assert response.headers["allow"] == "POST"
    if expected_status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert count_items(admin, client_id) == 0


# --- docs/openapi.yaml against the live server (schemathesis) ------------------------------------

# A small readable file of each type, for schema-valid cases that carry one.
_SAMPLE_FILES = {
    PDF: pdf_bytes([[("h1", "Sample"), ("p", "A page of text.")]], bookmarks=False),
    DOCX: docx_bytes([[("h1", "Sample"), ("p", "A paragraph.")]]),
    "text/html": b"<p>Sample page</p>",
    "text/markdown": b"# Sample\n\nText.",
    "text/plain": b"Sample text.",
}
SCHEMATHESIS_CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            # This server's body limit is small, so a 413 is a correct answer to any large body.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "405", "413", "415", "422"]},
            "positive_data_acceptance": {"expected-statuses": ["2XX", "413"]},
        }
    }
)
# The document describes ingest and search; this server is ingest (tests/functions/test_search.py
# checks search's operation against a search server).
openapi = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml", config=SCHEMATHESIS_CONFIG).include(
    operation_id_regex="^ingestKnowledge"
)


def _write_for(case: Case, client_id: uuid.UUID) -> None:
    """Point schema-valid cases at a client that exists, with an unused Idempotency-Key.

    The document cannot say "client_id must exist" or "a key is used once"; without this every
    schema-valid case would be a (correct) 422. Negative cases are sent exactly as generated.
    """
    if case.meta is None or case.meta.generation.mode.is_negative:
        return
    body = case.body
    items = body["items"] if isinstance(body, dict) and isinstance(body.get("items"), list) else [body]
    for entry in items:
        if isinstance(entry, dict) and "client_id" in entry:
            entry["client_id"] = str(client_id)
        if isinstance(entry, dict) and "content_base64" in entry:
            # nor "content_base64 holds a readable file of content_type"
            entry["content_base64"] = base64.b64encode(
                _SAMPLE_FILES[entry["content_type"].split(";")[0]]
            ).decode()
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"{case.headers['Idempotency-Key'][:200]}-{uuid.uuid4()}"


@openapi.parametrize()
# Real HTTP to a real server: slow examples and function-scoped fixtures are expected here.
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_server_conforms_to_the_openapi_document(
    case: Case, base_url: str, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    """Every schemathesis check (no 5xx, documented status / content type / schema / headers,
    invalid input rejected, valid input accepted, unsupported methods 405, auth enforced), and
    nothing stored for any answer that is not a success."""
    _write_for(case, client_id)
    before = count_items(admin, client_id)
    response = case.call_and_validate(
        base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    if response.status_code >= 300:
        assert count_items(admin, client_id) == before

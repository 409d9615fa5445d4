"""Ingest → SQS against moto's server mode on loopback: real boto3 calls over real HTTP.

The handler under test builds its own boto3 client from the environment (`AWS_ENDPOINT_URL`,
fake credentials, region), exactly as on Lambda; only the endpoint differs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import count_items, load_function
from tests.functions.test_ingest import call, close_function, item, url_event
from tests.support.json_logs import captured_logs

REGION = "eu-west-1"
MAX_DRAIN_ROUNDS = 50
STALL_BOUND_S = 10.0  # minutes with the bug; a few seconds with bounded SQS timeouts


@pytest.fixture(scope="module")
def sqs_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        if server._server is not None:  # stop() shuts the loop down but leaves the socket open
            server._server.server_close()


@pytest.fixture
def aws_env(function_env: pytest.MonkeyPatch, sqs_endpoint: str, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        function_env.delenv(name, raising=False)
    function_env.setenv("AWS_ACCESS_KEY_ID", "testing")
    function_env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    function_env.setenv("AWS_DEFAULT_REGION", REGION)
    function_env.setenv("AWS_REGION", REGION)
    function_env.setenv("AWS_ENDPOINT_URL", sqs_endpoint)
    function_env.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    function_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    function_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return function_env


@pytest.fixture
def sqs(aws_env: pytest.MonkeyPatch, sqs_endpoint: str) -> Iterator[Any]:
    client = boto3.client(
        "sqs",
        endpoint_url=sqs_endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    yield client
    client.close()


@pytest.fixture
def queue_url(sqs: Any, aws_env: pytest.MonkeyPatch) -> str:
    url: str = sqs.create_queue(QueueName=f"nexus-ingest-{uuid.uuid4().hex}")["QueueUrl"]
    aws_env.setenv("NEXUS_QUEUE_URL", url)
    return url


@pytest.fixture
def ingest(queue_url: str) -> Iterator[Any]:
    module = load_function("ingest")
    yield module
    close_function(module)


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive and delete every visible message; returns their decoded bodies."""
    bodies: list[dict[str, Any]] = []
    for _ in range(MAX_DRAIN_ROUNDS):
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        )
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    pytest.fail(f"the queue did not empty in {MAX_DRAIN_ROUNDS} rounds")


def test_new_item_sends_exactly_one_message(
    ingest: Any, sqs: Any, queue_url: str, client_id: uuid.UUID
) -> None:
    status, _, body = call(ingest, url_event(item(client_id)))
    assert status == 201
    assert drain(sqs, queue_url) == [{"knowledge_item_id": body["id"]}]


def test_duplicate_sends_no_new_message(ingest: Any, sqs: Any, queue_url: str, client_id: uuid.UUID) -> None:
    headers = {"idempotency-key": "sqs-dup-1"}
    first = call(ingest, url_event(item(client_id), headers=headers))
    assert first[0] == 201
    assert drain(sqs, queue_url) == [{"knowledge_item_id": first[2]["id"]}]
    again = call(ingest, url_event(item(client_id), headers=headers))
    same_external = call(ingest, url_event(item(client_id, external_id="e-1")))
    assert drain(sqs, queue_url) == [{"knowledge_item_id": same_external[2]["id"]}]
    repeat_external = call(ingest, url_event(item(client_id, external_id="e-1")))
    assert again[0] == 200 and again[2]["duplicate"] is True
    assert repeat_external[0] == 200 and repeat_external[2]["duplicate"] is True
    assert drain(sqs, queue_url) == []


def test_batch_of_twelve_sends_twelve_messages(
    ingest: Any, sqs: Any, queue_url: str, client_id: uuid.UUID
) -> None:
    """SendMessageBatch takes at most 10 entries: 12 items need two calls, and none may be lost."""
    items = [item(client_id, content=f"batch item {i}", external_id=f"sqs-b-{i}") for i in range(12)]
    status, _, body = call(ingest, url_event({"items": items}))
    assert status == 200
    ids = [r["id"] for r in body["items"]]
    assert len(set(ids)) == 12
    messages = drain(sqs, queue_url)
    assert len(messages) == 12
    assert sorted(m["knowledge_item_id"] for m in messages) == sorted(ids)
    call(ingest, url_event({"items": items}))  # all duplicates now
    assert drain(sqs, queue_url) == []


def test_edited_item_sends_one_message(
    ingest: Any, sqs: Any, queue_url: str, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    first = call(ingest, url_event(item(client_id, external_id="doc-edit", content="version one")))
    assert drain(sqs, queue_url) == [{"knowledge_item_id": first[2]["id"]}]
    admin.execute(
        "update knowledge_items set status = 'done', processed = true where id = %s", (first[2]["id"],)
    )
    edited = call(ingest, url_event(item(client_id, external_id="doc-edit", content="version two")))
    assert edited[0] == 200 and edited[2]["updated"] is True and edited[2]["id"] == first[2]["id"]
    assert drain(sqs, queue_url) == [{"knowledge_item_id": first[2]["id"]}]


def test_rejected_request_sends_nothing(ingest: Any, sqs: Any, queue_url: str, client_id: uuid.UUID) -> None:
    items = [item(client_id, content="fine"), item(uuid.uuid4(), content="unknown client")]
    status, _, _ = call(ingest, url_event({"items": items}))
    assert status == 422
    assert drain(sqs, queue_url) == []


def test_missing_queue_still_stores_the_item_and_warns_without_content(
    aws_env: pytest.MonkeyPatch,
    sqs_endpoint: str,
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
) -> None:
    """Best effort: the item is stored as pending (the sweep catches up); the failure is only logged."""
    aws_env.setenv("NEXUS_QUEUE_URL", f"{sqs_endpoint}/123456789012/no-such-queue-{uuid.uuid4().hex}")
    marker = f"QUEUE-CONTENT-MARKER-{uuid.uuid4().hex}"
    module = load_function("ingest")
    try:
        with captured_logs() as logs:
            status, _, body = call(module, url_event(item(client_id, content=f"secret text {marker}")))
    finally:
        close_function(module)
    assert status == 201
    row = admin.execute("select status, content from knowledge_items where id = %s", (body["id"],)).fetchone()
    assert row == {"status": "pending", "content": f"secret text {marker}"}
    assert count_items(admin, client_id) == 1
    records = logs.records()
    warnings = [r for r in records if r["level"] == "WARNING"]
    assert len(warnings) == 1, records
    assert "queue" in warnings[0]["message"]
    assert marker not in logs.text
    ingested = [r for r in records if r.get("knowledge_item_id") == body["id"]]
    assert len(ingested) == 1 and ingested[0]["client_id"] == str(client_id)


class StalledEndpoint:
    """A loopback endpoint that accepts connections and answers nothing until released.

    Like SQS behind a black-holed route (a Lambda in a VPC with no NAT or endpoint). Once
    released it answers every request with SQS's QueueDoesNotExist, which boto3 does not retry,
    so a waiting caller finishes at once.
    """

    ERROR_BODY = b'{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "released"}'

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # the accept loop's poll interval
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.released = threading.Event()
        self.stopped = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StalledEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.stopped.set()
        self.thread.join(timeout=10)
        for conn in self.held:
            conn.close()
        self.listener.close()

    def release(self) -> None:
        self.released.set()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
                self.held.append(conn)
            except TimeoutError:
                pass
            if self.released.is_set():
                while self.held:
                    self._answer(self.held.pop())

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length and (chunk := conn.recv(65536)):
                body += chunk
            conn.sendall(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\n"
                + f"Content-Length: {len(self.ERROR_BODY)}\r\nConnection: close\r\n\r\n".encode()
                + self.ERROR_BODY
            )


def _call_on_own_loop(module: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    loop = asyncio.new_event_loop()  # mangum needs an event loop on the calling thread
    asyncio.set_event_loop(loop)
    try:
        return call(module, event)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_a_stalled_queue_does_not_hold_up_the_answer(
    aws_env: pytest.MonkeyPatch, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    """Best effort means bounded: the item is stored and answered 201 within seconds, whatever the
    queue does."""
    results: list[tuple[int, dict[str, str], Any]] = []
    with StalledEndpoint() as stalled:
        aws_env.setenv("AWS_ENDPOINT_URL", stalled.url)
        aws_env.setenv("NEXUS_QUEUE_URL", f"{stalled.url}/123456789012/nexus-ingest")
        module = load_function("ingest")
        event = url_event(item(client_id, content="queued while the queue stalls"))
        worker = threading.Thread(target=lambda: results.append(_call_on_own_loop(module, event)))
        started = time.monotonic()
        worker.start()
        worker.join(timeout=STALL_BOUND_S)
        waited_s = time.monotonic() - started
        answered_in_time = not worker.is_alive()
        stalled.release()
        worker.join(timeout=60)
        close_function(module)
    assert not worker.is_alive()
    assert results and results[0][0] == 201
    assert count_items(admin, client_id) == 1
    assert answered_in_time, f"the ingest was still waiting on the queue after {waited_s:.1f} s"

"""Log safety of the ingest function: what a Lambda instance would ship to CloudWatch.

The real Lambda handler runs in a fresh Python process (as on Lambda) over a series of requests:
accepted, duplicate, updated, batch, and every kind of rejection, with API keys, JWTs, a database
outage and an unreachable queue. Everything the process writes is captured. Every stdout line
must be a JSON object, nothing may go to stderr, each stored item is logged with its
`knowledge_item_id` and `client_id`, and no content, metadata, key, JWT or password appears.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import jwt
import psycopg
import pytest

from tests.conftest import API_KEY, ROOT
from tests.functions.test_ingest import JWT_SECRET, item, url_event

CONTENT_MARKER = "CONTENTMARKER7f3a9c"
METADATA_MARKER = "METAMARKER51d2e8"
BAD_KEY = "BADKEYMARKER0e6b4a2f"
DB_PASSWORD = "DBPASSWORDMARKER93c1"
MAX_BODY_BYTES = 64 * 1024

# Runs in the child: each phase sets its environment, loads functions/ingest/main.py afresh
# (a cold start) and feeds it function-URL events; the answers go to a file, not to stdout.
DRIVER = """
import base64, importlib.util, json, os, pathlib, sys
from shared.config import reset_settings

phases = json.loads(pathlib.Path(sys.argv[1]).read_text())
out_path, main_path = sys.argv[2], sys.argv[3]
answers = []
for number, phase in enumerate(phases):
    os.environ.update(phase["env"])
    reset_settings()
    spec = importlib.util.spec_from_file_location(f"ingest_main_{number}", main_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for event in phase["events"]:
        result = module.handler(event, None)
        body = result["body"]
        if result.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        answers.append({"status": result["statusCode"], "body": json.loads(body)})
    store = module.endpoint.store
    if store is not None and hasattr(store, "holder"):
        store.holder.close()
with open(out_path, "w") as out:
    json.dump(answers, out)
"""


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _jwt(claims: dict[str, Any], exp_in_s: int = 600) -> str:
    return jwt.encode({"exp": int(time.time()) + exp_in_s, **claims}, JWT_SECRET, algorithm="HS256")


def _marked(client_id: uuid.UUID, n: int, **fields: Any) -> dict[str, Any]:
    return item(
        client_id,
        content=f"Private notes {n}: {CONTENT_MARKER} and more text.",
        metadata={"note": f"{METADATA_MARKER}-{n}", "nested": {"deep": METADATA_MARKER}},
        **fields,
    )


def _main_events(client_id: uuid.UUID, other: uuid.UUID, tokens: dict[str, str]) -> list[dict[str, Any]]:
    bearer = {name: {"authorization": f"Bearer {token}"} for name, token in tokens.items()}
    return [
        url_event(_marked(client_id, 1, external_id="log-doc-1")),  # 201
        url_event(_marked(client_id, 2), headers={"idempotency-key": "log-key-1"}),  # 201
        url_event(_marked(client_id, 2), headers={"idempotency-key": "log-key-1"}),  # 200 duplicate
        url_event(_marked(client_id, 3, external_id="log-doc-1")),  # 200 updated
        url_event({"items": [_marked(client_id, 4), _marked(client_id, 5)]}, encode_base64=True),  # 200 batch
        url_event(_marked(client_id, 6), headers=bearer["service"]),  # 201 by service_role JWT
        url_event(_marked(client_id, 7), headers=bearer["expired"]),  # 401
        url_event(_marked(other, 8), headers=bearer["user"]),  # 403: a JWT for another client
        url_event(_marked(client_id, 9), headers={"authorization": f"Bearer {BAD_KEY}"}),  # 401
        url_event(f'{{"content": "{CONTENT_MARKER}", '.encode(), raw=True),  # 400
        url_event(_marked(client_id, 10), headers={"content-type": "text/plain"}),  # 415
        url_event(_marked(uuid.uuid4(), 11)),  # 422 unknown client
        url_event(_marked(client_id, 12) | {"content": f"{CONTENT_MARKER}\x00"}),  # 422 NUL
        url_event(_marked(client_id, 13) | {"source": CONTENT_MARKER * 200}),  # 422 source too long
        url_event(_marked(client_id, 14) | {"content": CONTENT_MARKER * (MAX_BODY_BYTES // 10)}),  # 413
        url_event(_marked(client_id, 15), method="GET"),  # 405
    ]


EXPECTED_MAIN = [201, 201, 200, 200, 200, 201, 401, 403, 401, 400, 415, 422, 422, 422, 413, 405]


@pytest.fixture(scope="module")
def run_log(
    pg_url: str, admin: psycopg.Connection[Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Run the driver over three phases; returns answers, stdout, stderr and the secrets used."""
    tmp_path = tmp_path_factory.mktemp("ingest-logs")
    client_id, other = uuid.uuid4(), uuid.uuid4()
    admin.execute("insert into clients (id) values (%s), (%s)", (client_id, other))
    tokens = {
        "service": _jwt({"role": "service_role"}),
        "expired": _jwt({"role": "service_role"}, exp_in_s=-60),
        "user": _jwt({"role": "authenticated", "sub": str(uuid.uuid4()), "client_id": str(client_id)}),
    }
    dead_port = _closed_port()
    phases = [
        {
            "env": {
                "DATABASE_URL": pg_url,
                "NEXUS_INGEST_API_KEYS": API_KEY,
                "SUPABASE_JWT_SECRET": JWT_SECRET,
                "NEXUS_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            },
            "events": _main_events(client_id, other, tokens),
        },
        {  # the database is down: 503, and the DSN's password must stay out of the logs
            "env": {"DATABASE_URL": f"postgresql://nexus:{DB_PASSWORD}@127.0.0.1:{dead_port}/nexus"},
            "events": [url_event(_marked(client_id, 20))],
        },
        {  # the queue is unreachable: still 201, with a warning
            "env": {
                "DATABASE_URL": pg_url,
                "NEXUS_QUEUE_URL": f"http://127.0.0.1:{dead_port}/123456789012/nexus-ingest",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead_port}",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "eu-west-1",
                "AWS_MAX_ATTEMPTS": "1",
                "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true",
            },
            "events": [url_event(_marked(client_id, 21))],
        },
    ]
    phases_path, answers_path = tmp_path / "phases.json", tmp_path / "answers.json"
    phases_path.write_text(json.dumps(phases))
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("NEXUS_", "SUPABASE_", "GOOGLE_", "OPENAI_", "AWS_", "POWERTOOLS_", "PYTHON"))
        and name != "DATABASE_URL"
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            str(phases_path),
            str(answers_path),
            str(ROOT / "functions/ingest/main.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    return {
        "answers": json.loads(answers_path.read_text()),
        "stdout": completed.stdout.decode(),
        "stderr": completed.stderr.decode(errors="replace"),
        "tokens": tokens,
        "client_id": str(client_id),
    }


def test_the_scenario_ran_as_intended(run_log: dict[str, Any]) -> None:
    statuses = [a["status"] for a in run_log["answers"]]
    assert statuses == [*EXPECTED_MAIN, 503, 201], [a["body"] for a in run_log["answers"]]


def test_every_line_is_a_json_object_and_stderr_is_empty(run_log: dict[str, Any]) -> None:
    lines = run_log["stdout"].splitlines()
    assert len(lines) >= 8
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        if "_aws" in record:  # an embedded-metric line (shared/runtime/metrics.py), not a log line
            assert record["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "NexusWorkers", line
            continue
        assert {"level", "message", "timestamp", "service"} <= set(record), line
    assert run_log["stderr"] == ""


def test_each_stored_item_is_logged_with_its_item_and_client_ids(run_log: dict[str, Any]) -> None:
    records = [r for r in map(json.loads, run_log["stdout"].splitlines()) if "_aws" not in r]
    logged = {(r.get("knowledge_item_id"), r.get("client_id")) for r in records if r.get("knowledge_item_id")}
    stored: set[str] = set()
    for answer in run_log["answers"]:
        if answer["status"] in (200, 201):
            stored |= {r["id"] for r in answer["body"].get("items", [answer["body"]])}
    assert len(stored) == 6  # 1 (then updated), 2 (then duplicate), batch 4 and 5, JWT 6, queue phase 21
    assert {(item_id, run_log["client_id"]) for item_id in stored} <= logged
    warnings = [r for r in records if r["level"] == "WARNING"]
    assert any("queue" in r["message"] for r in warnings), "the unreachable queue was not logged"
    assert any(r["level"] == "ERROR" for r in records), "the database outage was not logged"


def test_no_content_metadata_or_secret_appears_anywhere(run_log: dict[str, Any]) -> None:
    everything = run_log["stdout"] + run_log["stderr"]
    secrets = {
        "content": CONTENT_MARKER,
        "metadata": METADATA_MARKER,
        "API key": API_KEY,
        "rejected key": BAD_KEY,
        "JWT secret": JWT_SECRET,
        "database password": DB_PASSWORD,
    }
    for name, token in run_log["tokens"].items():
        secrets[f"{name} JWT"] = token
        secrets[f"{name} JWT signature"] = token.rsplit(".", 1)[1]
    leaked = [name for name, secret in secrets.items() if secret in everything]
    assert leaked == []
    assert "eyJ" not in everything  # no JWT header or claims segment, whatever the token

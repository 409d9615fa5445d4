"""`nexus replay FILE`: every example event in examples/events/ reaches its real handler, in-process,
against the session's embedded Postgres, with the local providers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.cli.main import main
from shared.local.replay import classify, fill_placeholders, placeholders_in, read_event
from tests.conftest import API_KEY, ROOT
from tests.support.process_helpers import isolated_database

EVENTS = ROOT / "examples" / "events"
CONTENT = "\n\n".join(
    f"Section {i}. The charging dock firmware ships on Thursday; lidar lenses are cleaned daily." * 3
    for i in range(6)
)

# file → (shape, function) that replay must choose
EXPECTED_ROUTES = {
    "supabase_webhook_insert.json": ("webhook", "process"),
    "supabase_webhook_update.json": ("webhook", "process"),
    "supabase_webhook_delete.json": ("webhook", "process"),
    "function_url_webhook.json": ("function_url", "process"),
    "function_url_ingest.json": ("function_url", "ingest"),
    "function_url_search.json": ("function_url", "search"),
    "sqs_batch.json": ("sqs", "process"),
    "eventbridge_sweep.json": ("schedule", "process"),
    "eventbridge_gcal_refresh.json": ("schedule", "gcal_refresh"),
    "pubsub_cloudevent.json": ("pubsub", "process"),
}


@pytest.fixture
def replay_env(function_env: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The session database, the test API key, and a fresh NEXUS_HOME for the dev credentials."""
    function_env.setenv("NEXUS_HOME", str(tmp_path / "home"))
    return function_env


def replay(capsys: pytest.CaptureFixture[str], name: str | Path, *args: str) -> tuple[int, Any]:
    """Run `nexus replay examples/events/<name> ARGS…`; return the exit code and the printed result."""
    capsys.readouterr()
    code = main(["replay", str(EVENTS / name), *args])
    captured = capsys.readouterr()
    assert captured.out.strip(), captured.err
    return code, json.loads(captured.out)


def new_item(admin: psycopg.Connection[Any], client_id: uuid.UUID) -> uuid.UUID:
    row = admin.execute(
        "insert into knowledge_items (client_id, source, content) values (%s, 'notes/replay.md', %s)"
        " returning id",
        (client_id, CONTENT),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def item_state(admin: psycopg.Connection[Any], item_id: uuid.UUID) -> tuple[str, int]:
    row = admin.execute(
        "select status, (select count(*) from knowledge_chunks c where c.knowledge_item_id = k.id) as chunks"
        " from knowledge_items k where id = %s",
        (item_id,),
    ).fetchone()
    assert row is not None
    return str(row["status"]), int(row["chunks"])


def dev_env_values(home: Path) -> dict[str, str]:
    lines = (home / "dev.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_every_example_is_routed_by_its_shape() -> None:
    assert {path.name for path in EVENTS.glob("*.json")} == set(EXPECTED_ROUTES)
    for name, (kind, function) in EXPECTED_ROUTES.items():
        routed = classify(read_event(EVENTS / name))
        assert (routed.kind, routed.function) == (kind, function), name


def test_placeholders_are_filled_inside_sqs_bodies_and_base64_pubsub_data() -> None:
    item_id = str(uuid.uuid4())
    for name in ("sqs_batch.json", "pubsub_cloudevent.json"):
        event = read_event(EVENTS / name)
        assert "REPLACE_WITH_ITEM_ID" in placeholders_in(event)
        filled = fill_placeholders(event, {"REPLACE_WITH_ITEM_ID": item_id})
        assert placeholders_in(filled) == set()  # base64 Pub/Sub data is looked into too


@pytest.mark.parametrize(
    "name", ["supabase_webhook_insert.json", "function_url_webhook.json", "pubsub_cloudevent.json"]
)
def test_webhook_shaped_events_process_the_item(
    replay_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    name: str,
) -> None:
    item_id = new_item(admin, client_id)
    code, result = replay(capsys, name, "--item", str(item_id))
    assert code == 0, result
    body = json.loads(result["body"]) if "body" in result else result
    assert body["status"] == "done" and body["done"] == 1
    status, chunks = item_state(admin, item_id)
    assert status == "done" and chunks > 0


def test_sqs_batch_has_no_failures(
    replay_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
) -> None:
    item_id = new_item(admin, client_id)
    code, result = replay(capsys, "sqs_batch.json", "--item", str(item_id))
    assert (code, result) == (0, {"batchItemFailures": []})
    assert item_state(admin, item_id)[0] == "done"


def test_update_of_processed_item_and_delete_need_no_work(
    replay_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
) -> None:
    item_id = new_item(admin, client_id)
    assert replay(capsys, "supabase_webhook_insert.json", "--item", str(item_id))[0] == 0
    code, result = replay(capsys, "supabase_webhook_update.json", "--item", str(item_id))
    assert code == 0 and result["statusCode"] == 200
    assert json.loads(result["body"])["status"] == "skipped"  # the stored content is already processed
    code, result = replay(capsys, "supabase_webhook_delete.json", "--item", str(item_id))
    assert (code, json.loads(result["body"])) == (0, {"status": "ignored"})


def test_missing_item_id_is_one_clear_sentence(
    replay_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(EVENTS / "sqs_batch.json")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("nexus: ") and "--item" in captured.err
    assert "Traceback" not in captured.err


@pytest.fixture
def sweep_database(pg_url: str, replay_env: pytest.MonkeyPatch) -> Iterator[psycopg.Connection[Any]]:
    """A database of its own, so the sweep claims only this test's items."""
    with (
        isolated_database(pg_url) as url,
        psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn,
    ):
        replay_env.setenv("DATABASE_URL", url)
        yield conn


def test_scheduled_sweep_processes_pending_items(
    sweep_database: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    client = uuid.uuid4()
    sweep_database.execute("insert into clients (id) values (%s)", (client,))
    items = [new_item(sweep_database, client) for _ in range(2)]
    code, result = replay(capsys, "eventbridge_sweep.json")
    assert code == 0
    assert result["status"] == "ok" and result["done"] == 2 and result["failed"] == 0
    assert [item_state(sweep_database, item)[0] for item in items] == ["done", "done"]


def test_function_url_ingest_is_201_then_a_duplicate(
    replay_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
) -> None:
    code, result = replay(capsys, "function_url_ingest.json", "--client-id", str(client_id))
    assert code == 0 and result["statusCode"] == 201, result
    created = json.loads(result["body"])
    assert created == {"id": created["id"], "status": "pending", "duplicate": False}
    row = admin.execute(
        "select client_id, source, metadata from knowledge_items where id = %s", (created["id"],)
    ).fetchone()
    assert row == {"client_id": client_id, "source": "notes/replayed.md", "metadata": {"recorded": True}}
    # the recorded Idempotency-Key makes a second replay a duplicate, as in production
    code, again = replay(capsys, "function_url_ingest.json", "--client-id", str(client_id))
    assert (code, again["statusCode"]) == (0, 200)
    assert json.loads(again["body"]) == {"id": created["id"], "status": "pending", "duplicate": True}


def test_function_url_search_answers_hits(
    replay_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], client_id: uuid.UUID
) -> None:
    replay_env.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    code, result = replay(capsys, "function_url_search.json", "--client-id", str(client_id))
    assert code == 0 and result["statusCode"] == 200, result
    assert json.loads(result["body"]) == {"hits": []}  # a new client has no chunks yet


def test_function_url_ingest_defaults_to_the_dev_client_and_the_local_key(
    replay_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    admin: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    replay_env.delenv("NEXUS_INGEST_API_KEYS")  # the generated dev key is used instead
    code, result = replay(capsys, "function_url_ingest.json")
    assert code == 0 and result["statusCode"] in (200, 201), result
    dev_client = dev_env_values(tmp_path / "home")["NEXUS_DEV_CLIENT_ID"]
    row = admin.execute(
        "select client_id from knowledge_items where id = %s", (json.loads(result["body"])["id"],)
    ).fetchone()
    assert row == {"client_id": uuid.UUID(dev_client)}


def test_recorded_credentials_are_replaced_unless_keep_auth(
    replay_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], client_id: uuid.UUID, tmp_path: Path
) -> None:
    recorded = read_event(EVENTS / "function_url_ingest.json")
    recorded["headers"]["authorization"] = "Bearer production-key-not-valid-here"
    recorded["headers"].pop("idempotency-key")
    path = tmp_path / "recorded.json"
    path.write_text(json.dumps(recorded))
    code, result = replay(capsys, path, "--client-id", str(client_id), "--keep-auth")
    assert (code, result["statusCode"]) == (1, 401)
    code, result = replay(capsys, path, "--client-id", str(client_id))
    assert (code, result["statusCode"]) == (0, 201)
    assert API_KEY not in json.dumps(result)


def test_gcal_refresh_schedule_reaches_the_token_upkeep(
    replay_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = replay(capsys, "eventbridge_gcal_refresh.json")
    # No Google settings here: the upkeep answers with one sentence naming what is missing.
    assert code == 1
    assert result["ok"] is False and result["accounts"] == []
    assert result["error"].endswith(".") and ("GOOGLE_" in result["error"] or "NEXUS_" in result["error"])

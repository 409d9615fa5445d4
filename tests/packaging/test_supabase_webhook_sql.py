"""The opt-in database webhook (migration 20261125000600): off by default, it applies without pg_net,
and once enabled it queues one pg_net request per new or changed item, with a body the process
function accepts and the secret read from Vault.

The embedded Postgres has neither pg_net nor Vault, so a scratch database gets stand-ins with their
real signatures: `net.http_post` records each call, `vault.decrypted_secrets` is a plain view.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from shared.runtime.events import item_to_process
from shared.store.migrations import apply_migrations

PROCESS_URL = "https://example.lambda-url.us-east-1.on.aws/"
SECRET = "webhook-secret-from-vault"

STAND_INS = """
create schema net;
create table net.sent (id bigserial primary key, url text, body jsonb, headers jsonb, timeout_ms integer);
create function net.http_post(
  url text, body jsonb default '{}', params jsonb default '{}',
  headers jsonb default '{"Content-Type": "application/json"}', timeout_milliseconds integer default 5000)
returns bigint language sql as $$
  insert into net.sent (url, body, headers, timeout_ms)
  values (url, body, headers, timeout_milliseconds) returning id
$$;
create schema vault;
create table vault.secrets (name text primary key, secret text not null);
create view vault.decrypted_secrets as select name, secret as decrypted_secret from vault.secrets;
"""


@pytest.fixture
def scratch_db(admin: psycopg.Connection[Any], pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A fresh database on the session's server with every migration applied."""
    name = f"webhook_{uuid.uuid4().hex[:12]}"
    admin.execute(f"create database {name}")
    try:
        with psycopg.connect(
            make_conninfo(pg_url, dbname=name), autocommit=True, row_factory=dict_row
        ) as conn:
            apply_migrations(conn)
            yield conn
    finally:
        admin.execute(f"drop database if exists {name} with (force)")


def _add_item(conn: psycopg.Connection[Any], content: str = "hello") -> uuid.UUID:
    client = uuid.uuid4()
    conn.execute("insert into clients (id) values (%s)", (client,))
    row = conn.execute(
        "insert into knowledge_items (client_id, source, content) values (%s, 'test', %s) returning id",
        (client, content),
    ).fetchone()
    assert row is not None
    return row["id"]


def _sent(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return conn.execute("select url, body, headers, timeout_ms from net.sent order by id").fetchall()


def test_enabling_without_pg_net_says_what_is_missing(scratch_db: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="pg_net is not installed"):
        scratch_db.execute("select nexus.enable_process_webhook()")
    triggers = scratch_db.execute(
        "select 1 from pg_trigger where tgname = 'knowledge_items_process_webhook'"
    ).fetchall()
    assert triggers == []


def test_enabling_without_vault_secrets_says_which(scratch_db: psycopg.Connection[Any]) -> None:
    scratch_db.execute(STAND_INS)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="nexus_webhook_secret"):
        scratch_db.execute("select nexus.enable_process_webhook()")


def test_webhook_posts_inserts_and_content_changes_only(scratch_db: psycopg.Connection[Any]) -> None:
    conn = scratch_db
    conn.execute(STAND_INS)
    conn.execute(
        "insert into vault.secrets values ('nexus_process_url', %s), ('nexus_webhook_secret', %s)",
        (PROCESS_URL, SECRET),
    )
    conn.execute("select nexus.enable_process_webhook()")

    item_id = _add_item(conn, "first text")
    conn.execute("update knowledge_items set status = 'done', processed = true where id = %s", (item_id,))
    conn.execute("update knowledge_items set content = content where id = %s", (item_id,))
    conn.execute("update knowledge_items set content = 'second text' where id = %s", (item_id,))
    conn.execute("delete from knowledge_items where id = %s", (item_id,))

    sent = _sent(conn)
    assert [s["body"]["type"] for s in sent] == ["INSERT", "UPDATE"]
    for request in sent:
        assert request["url"] == PROCESS_URL
        assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
        body = request["body"]
        assert body["table"] == "knowledge_items" and body["schema"] == "public"
        assert "content" not in body["record"], "the row's content must not travel through pg_net"
        assert item_to_process(body) == item_id
    assert sent[0]["body"]["old_record"] is None
    assert sent[1]["body"]["old_record"]["content_sha256"] != sent[1]["body"]["record"]["content_sha256"]


def test_a_missing_secret_never_blocks_an_insert(scratch_db: psycopg.Connection[Any]) -> None:
    conn = scratch_db
    conn.execute(STAND_INS)
    conn.execute(
        "insert into vault.secrets values ('nexus_process_url', %s), ('nexus_webhook_secret', %s)",
        (PROCESS_URL, SECRET),
    )
    conn.execute("select nexus.enable_process_webhook()")
    conn.execute("delete from vault.secrets where name = 'nexus_webhook_secret'")
    item_id = _add_item(conn)
    assert conn.execute("select 1 from knowledge_items where id = %s", (item_id,)).fetchone()
    assert _sent(conn) == []


def test_disabling_stops_the_requests(scratch_db: psycopg.Connection[Any]) -> None:
    conn = scratch_db
    conn.execute(STAND_INS)
    conn.execute(
        "insert into vault.secrets values ('nexus_process_url', %s), ('nexus_webhook_secret', %s)",
        (PROCESS_URL, SECRET),
    )
    conn.execute("select nexus.enable_process_webhook()")
    conn.execute("select nexus.disable_process_webhook()")
    _add_item(conn)
    assert _sent(conn) == []


def test_api_roles_cannot_switch_the_webhook(scratch_db: psycopg.Connection[Any]) -> None:
    for role in ("anon", "authenticated", "service_role"):
        for function in ("enable_process_webhook()", "disable_process_webhook()", "notify_process_webhook()"):
            allowed = scratch_db.execute(
                "select has_function_privilege(%s, %s, 'execute') as ok", (role, f"nexus.{function}")
            ).fetchone()
            assert allowed is not None and allowed["ok"] is False, (role, function)

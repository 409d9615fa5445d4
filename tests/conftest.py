"""Shared fixtures: one real embedded Postgres (pgvector) per test session, fresh data per test."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.config import Settings, reset_settings
from shared.local.embedded import start_embedded_postgres, stop_embedded_postgres
from shared.store.database import ConnectionHolder
from shared.store.migrations import apply_migrations
from shared.store.postgres import PostgresStore

ROOT = Path(__file__).resolve().parent.parent
EVENTS = Path(__file__).resolve().parent / "events"
API_KEY = "test-ingest-key-0123456789"


def load_event(name: str) -> dict[str, Any]:
    """A sample event from tests/events/ (real AWS / Supabase / CloudEvent shapes)."""
    return json.loads((EVENTS / name).read_text())


def load_function(name: str) -> ModuleType:
    """Import functions/<name>/main.py afresh, as Lambda and functions-framework do."""
    path = ROOT / "functions" / name / "main.py"
    module_name = f"nexus_fn_{name}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def _close_providers_built_from_settings() -> Iterator[None]:
    """Providers built from settings are cached for the process (warm invocations reuse their HTTP
    connections); close them when the session ends, not in the interpreter's exit, where their
    pooled sockets to the tests' servers would be reported as unclosed."""
    yield
    from shared.providers.cache import close_all

    close_all()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    # Its own folder, not under pytest's tmp: another pytest session on the machine may reset
    # /tmp/pytest-of-<user> to 0700, which the server's own user could then no longer enter.
    data_dir = Path(tempfile.mkdtemp(prefix="nexus-pg-"))
    url = start_embedded_postgres(data_dir / "data")
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        apply_migrations(conn)
    yield url
    stop_embedded_postgres(data_dir / "data")
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def admin(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection for arranging and checking data."""
    with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def client_id(admin: psycopg.Connection[Any]) -> uuid.UUID:
    """A fresh client, so each test sees only its own rows."""
    new_id = uuid.uuid4()
    admin.execute("insert into clients (id) values (%s)", (new_id,))
    return new_id


@pytest.fixture
def settings(pg_url: str) -> Settings:
    return Settings(database_url=pg_url, ingest_api_keys=(API_KEY, "second-key"))


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(ConnectionHolder(pg_url))
    yield store
    store.close()


@pytest.fixture
def db_url(pg_url: str) -> Iterator[str]:
    """A fresh, migrated database of the test's own, for tests that sweep or count globally (the
    session database holds other tests' pending items and chunks)."""
    from tests.support.process_helpers import isolated_database

    with isolated_database(pg_url) as url:
        yield url


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def db_client(db: psycopg.Connection[Any]) -> uuid.UUID:
    """A client in the test's own database."""
    new_id = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (new_id,))
    return new_id


@pytest.fixture
def db_store(db_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(ConnectionHolder(db_url))
    yield store
    store.close()


@pytest.fixture
def function_env(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[pytest.MonkeyPatch]:
    """The environment a deployed function sees; settings are re-read for each test."""
    for name in list(os.environ):
        if name.startswith(("NEXUS_", "SUPABASE_", "GOOGLE_", "OPENAI_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("NEXUS_INGEST_API_KEYS", f"{API_KEY},second-key")
    monkeypatch.chdir(ROOT / "tests")  # no stray .env files from the repo root
    reset_settings()
    yield monkeypatch
    reset_settings()


def count_items(admin: psycopg.Connection[Any], client_id: uuid.UUID) -> int:
    row = admin.execute(
        "select count(*) as n from knowledge_items where client_id = %s", (client_id,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


@pytest.fixture(scope="session")
def openai_server_session() -> Iterator[Any]:
    """The local OpenAI-compatible server, over real HTTP, started once per test session."""
    from tests.support.openai_server import OpenAIServer

    with OpenAIServer() as server:
        yield server


@pytest.fixture
def openai_server(openai_server_session: Any) -> Any:
    """The session's OpenAI-compatible server with fresh stats, no latency and no queued faults."""
    openai_server_session.reset()
    openai_server_session.latency_ms = 0
    return openai_server_session

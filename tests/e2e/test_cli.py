"""The `nexus` command as a user runs it: a fresh NEXUS_HOME (its own embedded Postgres), offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.local.demo import demo_client_id

ROOT = Path(__file__).resolve().parents[2]
NEXUS = [sys.executable, "-m", "shared.cli"]


def nexus(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cleared = ("NEXUS_", "DATABASE_URL", "SUPABASE_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(cleared)}
    env.update(NEXUS_HOME=str(home), NEXUS_EMBEDDING_PROVIDER="local", NEXUS_SUMMARY_PROVIDER="local")
    result = subprocess.run(
        [*NEXUS, *args], cwd=home.parent, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("cli") / ".nexus"
    first = nexus(home, "demo")
    assert "client summaries" in first.stdout and "search" in first.stdout
    assert "Traceback" not in first.stderr
    return home


def test_demo_ingests_processes_and_answers(demo_home: Path) -> None:
    status = json.loads(nexus(demo_home, "status", "--json").stdout)
    assert status["counts"] == {"done": 11}
    assert status["recent_failures"] == []


def test_demo_again_embeds_nothing(demo_home: Path) -> None:
    again = nexus(demo_home, "demo").stdout
    assert "0 new or changed" in again
    assert "0 embedded (0 tokens)" in again


def test_search_finds_the_document_and_respects_the_client(demo_home: Path) -> None:
    acme = demo_client_id("acme-robotics")
    query = "spring-loaded copper contacts pitted or dirty raise resistance"
    hits: list[dict[str, Any]] = json.loads(
        nexus(demo_home, "search", query, "--client-id", str(acme), "-k", "5", "--json").stdout
    )
    assert hits and hits[0]["source"].endswith("amr-maintenance-runbook.md")
    assert {h["client_id"] for h in hits} == {str(acme)}
    assert set(hits[0]) >= {
        "knowledge_item_id",
        "client_id",
        "chunk_index",
        "content",
        "source",
        "similarity",
    }
    # hybrid (the default) ranks by fused rank; vector search alone by similarity
    vector: list[dict[str, Any]] = json.loads(
        nexus(demo_home, "search", query, "--client-id", str(acme), "--mode", "vector", "--json").stdout
    )
    assert vector[0]["source"].endswith("amr-maintenance-runbook.md")
    assert [h["similarity"] for h in vector] == sorted((h["similarity"] for h in vector), reverse=True)
    text = json.loads(
        nexus(demo_home, "search", query, "--client-id", str(acme), "--mode", "text", "--json").stdout
    )
    assert text[0]["source"].endswith("amr-maintenance-runbook.md") and text[0]["similarity"] is None
    other = demo_client_id("cedar-legal")
    theirs = json.loads(nexus(demo_home, "search", query, "--client-id", str(other), "--json").stdout)
    assert theirs and {h["client_id"] for h in theirs} == {str(other)}


def test_ingest_and_process_one_item(demo_home: Path, tmp_path: Path) -> None:
    client = demo_client_id("acme-robotics")
    note = tmp_path / "note.md"
    note.write_text("# Night shift\n\nThe quokka sensor recalibration happens at 02:00 on Sundays.\n")
    out = nexus(demo_home, "ingest", str(note), "--client-id", str(client)).stdout
    item_id = out.split()[0]
    uuid.UUID(item_id)
    processed = nexus(demo_home, "process", "--item", item_id).stdout
    assert processed.startswith("1 done")
    hits = json.loads(nexus(demo_home, "search", "quokka sensor recalibration", "-k", "1", "--json").stdout)
    assert hits[0]["knowledge_item_id"] == item_id
    again = nexus(demo_home, "ingest", str(note), "--client-id", str(client)).stdout
    assert "duplicate" in again


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "missing.md", "--client-id", str(uuid.uuid4())], "does not exist"),
        (["search", "   "], "query is empty"),
    ],
)
def test_user_mistakes_get_one_sentence_and_no_traceback(
    demo_home: Path, args: list[str], message: str
) -> None:
    result = nexus(demo_home, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_openai_provider_without_a_key_names_the_variable(demo_home: Path) -> None:
    env_home = demo_home
    result = subprocess.run(
        [*NEXUS, "search", "anything"],
        cwd=env_home.parent,
        env={"PATH": os.environ["PATH"], "NEXUS_HOME": str(env_home), "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "OPENAI_API_KEY" in result.stderr and "Traceback" not in result.stderr


def test_status_says_when_claiming_is_paused_by_the_provider(
    db_url: str, db: Any, db_client: uuid.UUID
) -> None:
    db.execute(
        "insert into provider_backoff (provider, state, failures, opened_at, probe_at, last_error) "
        "values ('openai https://api.openai.com/v1', 'quota', 1, now(), now() + interval '2 minutes', "
        "'The OpenAI account has no quota left (insufficient_quota)')"
    )
    db.execute(
        "insert into knowledge_items (client_id, source, content, last_transient_error, transient_failures, "
        "next_attempt_at) values (%s, 'a', 'A note waiting for credit.', 'insufficient_quota', 1, "
        "now() + interval '1 minute')",
        (db_client,),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "SUPABASE_", "OPENAI_"))}
    env["DATABASE_URL"] = db_url
    shown = subprocess.run(
        [*NEXUS, "status"],
        cwd=ROOT / "tests" / "e2e",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    as_json = json.loads(
        subprocess.run(
            [*NEXUS, "status", "--json"],
            cwd=ROOT / "tests" / "e2e",
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )

    assert "claiming paused: openai https://api.openai.com/v1 has no quota left (insufficient_quota)" in shown
    assert "next probe at" in shown
    assert "waiting on the provider: 1 item(s), no attempt counted" in shown
    assert [p["state"] for p in as_json["providers"]] == ["quota"]
    assert as_json["deferred_by_provider"] == 1


def test_embeddings_move_to_512_and_back_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / ".nexus"
    nexus(home, "demo")
    (first,) = json.loads(nexus(home, "embeddings", "status", "--json").stdout)
    assert (first["model"], first["dimensions"], first["state"], first["storage"]) == (
        "local-hash-v1",
        1536,
        "active",
        "column",
    )
    assert first["chunks_embedded"] == first["chunks_total"] > 0
    plan = json.loads(
        nexus(home, "embeddings", "plan", "--model", "local-hash-v1", "--dimensions", "512", "--json").stdout
    )
    assert plan["inputs_to_embed"] == plan["texts_total"] > 0 and plan["estimated_usd"] == 0.0

    assert (
        "is building"
        in nexus(home, "embeddings", "start", "--model", "local-hash-v1", "--dimensions", "512").stdout
    )
    early = nexus(home, "embeddings", "cutover", check=False)
    assert early.returncode == 1 and "not switched" in early.stdout
    assert "vectors stored for other embedding generations" in nexus(home, "process", "--all").stdout
    assert "active: generation 2" in nexus(home, "embeddings", "cutover").stdout

    acme = demo_client_id("acme-robotics")
    query = "spring-loaded copper contacts pitted or dirty raise resistance"
    hits = json.loads(nexus(home, "search", query, "--client-id", str(acme), "-k", "3", "--json").stdout)
    assert hits[0]["source"].endswith("amr-maintenance-runbook.md")

    assert "active again: generation 1" in nexus(home, "embeddings", "rollback").stdout
    assert "dropped generation 2" in nexus(home, "embeddings", "drop", "--generation", "2").stdout
    assert [g["id"] for g in json.loads(nexus(home, "embeddings", "status", "--json").stdout)] == [1]

    wrong = nexus(
        home, "embeddings", "start", "--model", "text-embedding-3-small", "--dimensions", "512", check=False
    )
    assert (
        wrong.returncode == 1
        and "NEXUS_EMBEDDING_PROVIDER" in wrong.stderr
        and "Traceback" not in wrong.stderr
    )
    too_big = nexus(home, "embeddings", "plan", "--model", "x", "--dimensions", "5000", check=False)
    assert too_big.returncode == 2 and "between 1 and 4000" in too_big.stderr

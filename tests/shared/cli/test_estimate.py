"""`nexus estimate` against what processing then pays: the embedding tokens match exactly (the
same reading, chunking and reuse), nothing is called while estimating, and after processing the
same files cost nothing more."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.cli.estimate import estimate_files
from shared.config import Settings
from shared.ingest.files import ingest_files
from shared.process.pipeline import Processor
from shared.providers.embeddings import OpenAIEmbedder
from shared.providers.summaries import OpenAISummarizer
from shared.store.postgres import PostgresStore
from tests.support.openai_server import OpenAIServer

API_KEY = "sk-test-estimate-0123456789"
PAGE = "<html><body><h1>Runbook {n}</h1>{body}</body></html>"


def write_files(folder: Path) -> None:
    folder.mkdir()
    for n in range(3):
        body = "".join(
            f"<p>Step {n}.{i}: check the pump {i} pressure gauge, note it, and reset.</p>" for i in range(60)
        )
        (folder / f"runbook-{n}.html").write_text(PAGE.format(n=n, body=body), encoding="utf-8")
    (folder / "copy.html").write_text(PAGE.format(n=0, body=""), encoding="utf-8")
    (folder / "notes.md").write_text("# Notes\n\n季度报告 — the quarterly report is due.\n", encoding="utf-8")


@pytest.mark.parametrize("headings", [False, True], ids=["plain", "heading-context"])
def test_the_estimate_is_what_processing_pays(
    tmp_path: Path,
    db: psycopg.Connection[Any],
    db_url: str,
    db_store: PostgresStore,
    db_client: uuid.UUID,
    headings: bool,
) -> None:
    """With NEXUS_CHUNK_HEADINGS too: the heading paths leading the chunks are estimated, paid
    and recorded in the ledger alike."""
    folder = tmp_path / "docs"
    write_files(folder)
    with OpenAIServer(latency_ms=0) as server:
        settings = Settings(
            database_url=db_url,
            embedding_provider="openai",
            summary_provider="openai",
            openai_api_key=API_KEY,
            openai_base_url=server.base_url,
            chunk_tokens=120,
            chunk_headings=headings,
        )
        estimate = estimate_files(db_store, settings, [folder])
        assert server.stats.requests == 0
        (embedding,) = estimate["embeddings"]
        assert (embedding["model"], embedding["dimensions"]) == ("text-embedding-3-small", 1536)
        assert estimate["files"] == 5 and embedding["inputs_to_embed"] == estimate["distinct_texts"]
        assert estimate["usd"] == embedding["usd"] + estimate["summaries"]["usd"]

        ingest_files(db_store, [folder], db_client)
        embedder = OpenAIEmbedder(API_KEY, base_url=server.base_url)
        summarizer = OpenAISummarizer(API_KEY, base_url=server.base_url)
        try:
            processor = Processor(db_store, embedder, summarizer, chunk_tokens=120, chunk_headings=headings)
            report = processor.sweep(lambda: 600.0)
        finally:
            embedder.close()
            summarizer.close()
        assert report.done == 5
        led = db.execute(
            "select count(*) as n from knowledge_chunks where content like 'Runbook 1\n\n%'"
        ).fetchone()
        assert (led["n"] > 0) is headings  # chunks under "Runbook 1" are led by it
        assert report.embedded_tokens == server.stats.embedding_tokens == embedding["tokens_to_embed"]
        assert report.embedded_chunks == embedding["inputs_to_embed"]
        assert server.stats.chat_requests == estimate["summaries"]["calls"]
        # the ledger says what the estimate said (exactly: within 1% is the bar)
        (ledger,) = [row for row in db_store.usage_report() if row["kind"] == "embedding"]
        assert int(ledger["tokens"]) == embedding["tokens_to_embed"]
        assert float(ledger["usd"]) == pytest.approx(embedding["usd"], rel=0.01)

        again = estimate_files(db_store, settings, [folder])
        assert again["embeddings"][0]["tokens_to_embed"] == 0
        assert again["summaries"]["calls_reused"] == 5  # every item's summary is kept
        assert server.stats.requests == server.stats.embedding_requests + server.stats.chat_requests

"""`nexus explain ITEM_ID` on the real database: an item in each state gets the sentence that says
why it is there and what happens next, with the facts behind it (`--json`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from shared.cli.main import main
from shared.config import reset_settings
from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.store.postgres import PostgresStore
from tests.support.process_helpers import insert_items


@pytest.fixture
def explain(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("NEXUS_MAX_ATTEMPTS", "3")

    def run(item: uuid.UUID | str, *flags: str) -> tuple[int, Any]:
        reset_settings()
        capsys.readouterr()
        code = main(["explain", str(item), *flags])
        out = capsys.readouterr().out
        return code, json.loads(out) if "--json" in flags and code == 0 else out

    return run


def one_item(db: psycopg.Connection[Any], client: uuid.UUID, text: str = "A note about pumps.") -> uuid.UUID:
    (item,) = insert_items(db, client, [text])
    return item


def test_each_state_says_why(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID, explain: Any
) -> None:
    # done: its chunks, how many are in the vector index, how long it took
    done = one_item(db, db_client, "\n\n".join(f"Paragraph {i} about pumps and seals." for i in range(30)))
    Processor(db_store, LocalEmbedder(), LocalSummarizer(), chunk_tokens=40).process_ids([done], 60.0)
    code, facts = explain(done, "--json")
    assert code == 0 and facts["status"] == "done" and facts["chunks"] > 1
    assert facts["chunks_in_vector_index"] == facts["chunks"]
    assert facts["why"].startswith(
        f"Done: {facts['chunks']} chunks stored, {facts['chunks']} in the vector index"
    )
    db.execute("update knowledge_chunks set vector_indexed = false where knowledge_item_id = %s", (done,))
    assert "wait for the vector index" in explain(done, "--json")[1]["why"]

    # pending, nothing in its way
    pending = one_item(db, db_client)
    assert "the next trigger or sweep claims it" in explain(pending)[1]

    # processing: who holds it and until when; then its worker died
    db.execute(
        "update knowledge_items set status = 'processing', attempts = 1, lease_owner = 'w-7', "
        "lease_expires_at = now() + interval '5 minutes' where id = %s",
        (pending,),
    )
    assert "Being processed by w-7 (attempt 1 of 3)" in explain(pending)[1]
    db.execute(
        "update knowledge_items set lease_expires_at = now() - interval '1 minute' where id = %s", (pending,)
    )
    assert "Its worker (w-7) stopped before finishing" in explain(pending)[1]
    assert "attempt 2 of 3" in explain(pending)[1]

    # failed, retried later; then for good
    db.execute(
        "update knowledge_items set status = 'failed', attempts = 1, lease_owner = null, "
        "lease_expires_at = null, last_error = 'The embeddings endpoint rejected the request.', "
        "next_attempt_at = now() + interval '1 hour' where id = %s",
        (pending,),
    )
    assert (
        "Failed 1 of 3 attempts (last: The embeddings endpoint rejected the request.)" in explain(pending)[1]
    )
    db.execute("update knowledge_items set attempts = 3 where id = %s", (pending,))
    assert "Failed for good after 3 attempts" in explain(pending)[1]

    # given back for provider failures, no attempt counted
    deferred = one_item(db, db_client, "Another note.")
    db.execute(
        "update knowledge_items set transient_failures = 2, last_transient_error = 'HTTP 503', "
        "next_attempt_at = now() + interval '2 minutes' where id = %s",
        (deferred,),
    )
    assert "given back 2 time(s) for provider failures (last: HTTP 503)" in explain(deferred)[1]

    # the fleet is backed off from the provider
    db_store.record_provider_failure(
        "openai https://api.openai.com/v1", "HTTP 500 server_error", False, None, 120
    )
    said = explain(deferred)[1]
    assert "Waiting: openai https://api.openai.com/v1 is failing" in said and "HTTP 500" in said

    # its client is over its monthly budget (this comes first: the budget holds it whatever the provider)
    db_store.set_client_budget(db_client, 0.0)
    code, facts = explain(deferred, "--json")
    assert facts["budget"]["over_budget"] is True
    assert facts["why"].startswith("Waiting for its client's monthly budget: 0.0000 of 0.0000 USD spent in ")


def test_an_unknown_item_is_one_sentence(explain: Any) -> None:
    missing = uuid.uuid4()
    code, out = explain(missing)
    assert code == 1 and out.strip() == f"nexus: no knowledge item {missing}."
    with pytest.raises(SystemExit):
        explain("not-a-uuid")


def test_status_says_how_fresh_the_knowledge_is(
    db: psycopg.Connection[Any],
    db_store: PostgresStore,
    db_client: uuid.UUID,
    db_url: str,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = insert_items(db, db_client, [f"Note {i} about valves." for i in range(4)])
    # ingested 10, 20, 30 and 40 seconds before they are processed
    for seconds, item in zip((10, 20, 30, 40), ids, strict=True):
        db.execute(
            "update knowledge_items set created_at = now() - make_interval(secs => %s) where id = %s",
            (seconds, item),
        )
    Processor(db_store, LocalEmbedder(), LocalSummarizer()).process_ids(ids, 60.0)
    fresh = db_store.status()["freshness"]
    assert fresh["done_in_window"] == 4
    assert 24 <= float(fresh["ingest_to_done_p50_seconds"]) <= 28  # 25 s, plus the processing itself
    assert 38 <= float(fresh["ingest_to_done_p95_seconds"]) <= 42
    # their chunks joined the vector index after they were done (the trigger's stamps)
    db_store.index_chunks(1000)
    fresh = db_store.status()["freshness"]
    assert fresh["indexed_in_window"] == 4
    assert float(fresh["ingest_to_done_p50_seconds"]) <= float(fresh["ingest_to_indexed_p50_seconds"]) <= 30
    monkeypatch.setenv("DATABASE_URL", db_url)
    reset_settings()
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "ingest to done, last hour: p50 2" in out and "; to the vector index: p50 2" in out


def test_a_pdf_part_way_through_and_one_with_scanned_pages(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID, explain: Any
) -> None:
    import base64

    from shared.ingest.queue import NoQueue
    from shared.ingest.service import ingest_items, parse_items
    from shared.text.documents import PDF
    from tests.support.documents import pdf_bytes

    def ingest_pdf(pages: list[Any]) -> uuid.UUID:
        body = {"client_id": str(db_client), "source": "m.pdf", "content_type": PDF}
        body["content_base64"] = base64.b64encode(pdf_bytes(pages)).decode()
        (result,) = ingest_items(parse_items(body)[0], store=db_store, queue=NoQueue())
        return result.item_id

    text_page = [("h1", "Valves"), ("p", "Valve VX-1 is checked monthly. " * 5)]
    processor = Processor(
        db_store, LocalEmbedder(), LocalSummarizer(), item_chunk_min_s=5.0, pdf_page_batch=4
    )
    # a long PDF given back after its first batch of pages: explain says how far it got
    long_pdf = ingest_pdf([text_page] * 12)
    assert processor.process_ids([long_pdf], 15.0).released == 1
    _, facts = explain(long_pdf, "--json")
    assert facts["document_pages_kept"] == 4
    assert "4 of its PDF's pages are extracted and kept" in facts["why"]
    # done, with pages that have no text layer (blank pages: a scan without OCR looks the same)
    scanned = ingest_pdf([text_page, [], text_page, []])
    assert processor.process_ids([scanned], 60.0).done == 1
    _, facts = explain(scanned, "--json")
    assert facts["pages"] == 4 and facts["pages_without_text"] == [2, 4]
    assert facts["why"].endswith("2 of its 4 pages have no text layer (2, 4).")

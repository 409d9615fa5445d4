"""The fleet's rate limit on the real database, against a local OpenAI-compatible server that
enforces a tokens-per-minute limit: four sweepers at once stay under it (no 429s beyond the first)
and together run near it; without the shared limit they collide; live work goes before
backfills; a 429 slows everyone down, and the limits show in `nexus status`."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.process.pipeline import Processor
from shared.providers.embeddings import OpenAIEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.store.database import ConnectionHolder
from shared.store.postgres import PostgresStore
from tests.support.openai_server import OpenAIServer
from tests.support.process_helpers import document, insert_items

API_KEY = "sk-test-limits-0123456789"
MODEL = "text-embedding-3-small"
TPM = 600_000  # 10,000 tokens a second
BURST_S = 1.0
REQUEST_TOKENS = 2_000  # requests well inside one second's worth


@pytest.fixture
def items(db: psycopg.Connection[Any], db_client: uuid.UUID) -> int:
    """Pending items of about 50,000 tokens in all; returns their count."""
    rng = random.Random(17)
    contents = [document(rng, 6, 120, tag=f"limit{i}") for i in range(48)]
    insert_items(db, db_client, contents)
    return len(contents)


def run_sweepers(db_url: str, base_url: str, limits: dict[str, tuple[float, float, float]] | None) -> float:
    """Four sweepers at once, each with its own connection and HTTP client; the seconds they took."""
    stores = [PostgresStore(ConnectionHolder(db_url)) for _ in range(4)]
    embedders = [
        OpenAIEmbedder(API_KEY, base_url=base_url, max_request_tokens=REQUEST_TOKENS) for _ in range(4)
    ]
    errors: list[BaseException] = []

    def sweep(store: PostgresStore, embedder: OpenAIEmbedder) -> None:
        try:
            processor = Processor(store, embedder, LocalSummarizer(), batch_tokens=4_000, rate_limits=limits)
            processor.sweep(lambda: 600.0)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=sweep, args=pair) for pair in zip(stores, embedders, strict=True)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    for store, embedder in zip(stores, embedders, strict=True):
        store.close()
        embedder.close()
    assert not errors, errors
    return elapsed


def too_many_requests(server: OpenAIServer) -> int:
    return sum(1 for _, status, _ in server.stats.rejected if status == 429)


def test_four_sweepers_share_the_limit_and_run_near_it(
    db: psycopg.Connection[Any], db_url: str, db_client: uuid.UUID, items: int
) -> None:
    with OpenAIServer(tokens_per_minute=TPM, burst_s=BURST_S) as server:
        elapsed = run_sweepers(db_url, server.base_url, {MODEL: (TPM, 100_000, BURST_S)})
        stats = server.stats
    done = db.execute("select count(*) as n from knowledge_items where status = 'done'").fetchone()
    assert done == {"n": items}
    assert too_many_requests(server) <= 1
    # past the first burst, tokens went out at (nearly) the limit: the rest is chunking and storing
    tokens_per_s = (stats.embedding_tokens - TPM * BURST_S / 60) / elapsed
    print(f"{stats.embedding_tokens} tokens in {elapsed:.2f} s: {tokens_per_s:.0f} tokens/s")
    assert stats.embedding_tokens > 40_000
    assert tokens_per_s >= 0.8 * TPM / 60, f"{tokens_per_s:.0f} tokens/s under a limit of {TPM / 60:.0f}"
    assert tokens_per_s <= 1.05 * TPM / 60


def test_without_the_shared_limit_the_sweepers_collide(
    db: psycopg.Connection[Any], db_url: str, db_client: uuid.UUID, items: int
) -> None:
    with OpenAIServer(tokens_per_minute=TPM, burst_s=BURST_S) as server:
        run_sweepers(db_url, server.base_url, None)
    # what the shared limit saves the fleet from: collisions, and retries that run out (those
    # items are given back to a later sweep, as an outage's would be)
    assert too_many_requests(server) > 1


def test_a_429_slows_the_whole_fleet_down(
    db: psycopg.Connection[Any], db_url: str, db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    insert_items(db, db_client, [document(random.Random(2), 6, 120, tag=f"t{i}") for i in range(8)])
    # settings that promise ten times what the account allows: the provider's 429 corrects them
    with OpenAIServer(tokens_per_minute=TPM / 10, burst_s=BURST_S) as server:
        embedder = OpenAIEmbedder(API_KEY, base_url=server.base_url, max_request_tokens=REQUEST_TOKENS)
        try:
            processor = Processor(
                db_store, embedder, LocalSummarizer(), rate_limits={MODEL: (TPM, 100_000, 1.0)}
            )
            assert processor.sweep(lambda: 600.0).done == 8
        finally:
            embedder.close()
    assert too_many_requests(server) >= 1
    (bucket,) = db_store.status()["rate_limits"]
    assert bucket["model"] == MODEL and bucket["throttled"] == too_many_requests(server)
    assert float(bucket["scale"]) < 1.0


@pytest.fixture
def side(db_store: PostgresStore) -> Iterator[Any]:
    yield db_store.side_store()


def test_live_work_goes_before_backfills(side: Any) -> None:
    limits = (600.0, 600.0, 60.0)  # a bucket of 600 tokens and 600 requests, 10 a second
    assert side.take_provider_capacity("p", MODEL, 500, 1, limits) == (True, 0.0)
    # 100 left: a backfill leaves a quarter (150) to live work, so it takes nothing and waits
    taken, wait = side.take_provider_capacity("p", MODEL, 50, 1, limits, backfill=True)
    assert not taken and wait > 0
    assert side.take_provider_capacity("p", MODEL, 50, 1, limits) == (True, 0.0)
    # more than is left: live work reserves its place; its request goes once the bucket has refilled
    taken, wait = side.take_provider_capacity("p", MODEL, 300, 1, limits)
    assert taken and 24 < wait <= 25.5
    # and the next one queues behind it
    taken, wait = side.take_provider_capacity("p", MODEL, 60, 1, limits)
    assert taken and 30 < wait <= 31.5
    # unless that is past the caller's deadline: then nothing is taken
    taken, wait = side.take_provider_capacity("p", MODEL, 60, 1, limits, max_wait_s=10)
    assert not taken and wait > 10
    # a request larger than the whole bucket counts as a full bucket
    assert side.take_provider_capacity("q", MODEL, 5_000, 1, limits) == (True, 0.0)


def test_a_429_pauses_the_bucket_for_everyone(side: Any) -> None:
    limits = (600_000.0, 10_000.0, 10.0)
    assert side.take_provider_capacity("p", MODEL, 10, 1, limits) == (True, 0.0)
    assert side.provider_throttled("p", MODEL, 3.0) == pytest.approx(0.8)
    taken, wait = side.take_provider_capacity("p", MODEL, 10, 1, limits)
    assert taken and 2.5 < wait <= 3.1
    assert side.provider_throttled("p", MODEL, None) == pytest.approx(0.64)


def test_nexus_rate_limits_reads_models_and_refuses_nonsense_in_one_sentence() -> None:
    from shared.config import load_settings
    from shared.errors import ConfigError

    settings = load_settings(
        {"NEXUS_RATE_LIMITS": '{"text-embedding-3-small": {"tpm": 1000000, "rpm": 3000}}'}
    )
    assert settings.rate_limits == {"text-embedding-3-small": (1_000_000.0, 3000.0, 10.0)}
    for bad, said in (
        ("fast", "NEXUS_RATE_LIMITS is invalid: it must be JSON such as"),
        ("[1]", "NEXUS_RATE_LIMITS is invalid: it must be a JSON object of models"),
        ('{"m": {"tpm": 0, "rpm": 5}}', 'the limits of m need "tpm" and "rpm"'),
        ('{"m": {"tpm": 10}}', 'the limits of m need "tpm" and "rpm"'),
    ):
        with pytest.raises(ConfigError, match=said):
            load_settings({"NEXUS_RATE_LIMITS": bad})

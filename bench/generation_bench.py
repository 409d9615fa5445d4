#!/usr/bin/env python3
"""Generation backfill benchmark (issue 17): fill a second embedding generation over N chunks.

A fresh embedded database gets `--chunks` chunks (default 100,000) of synthetic text, each about
`--tokens` cl100k tokens, with random 1536-d vectors in the column and the first generation
(`text-embedding-3-small` at 1536) active, as a processed database has them. Then, against the local
OpenAI-compatible server answering each request after `--latency-ms`:

1. `nexus embeddings plan` for `text-embedding-3-small` at 512: the figures, no API call;
2. `start`, then `Processor.sweep` fills the generation (lease, reuse, embed, store), and moves its
   rows into its HNSW index (a bulk build: `begin_vector_index_build`); timed apart;
3. recall@10 of `match_knowledge_chunks` on the new generation (after `cutover`) against an exact
   scan over the same vectors, for `--queries` stored vectors used as queries.

Prints a Markdown table and writes `bench/results/generation.json`.

    python bench/generation_bench.py [--chunks 100000] [--tokens 300] [--latency-ms 80]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "generation.json"
MODEL = "text-embedding-3-small"

WORDS = (
    "index vacuum tuple page buffer lock snapshot replica standby wal segment checkpoint planner "
    "executor join hash merge nested loop bitmap heap toast sequence trigger function schema role"
).split()


def synthesize(conn: Any, chunks: int, tokens: int, seed: int = 1) -> None:
    """`chunks` chunk rows under items of 20 chunks, distinct texts, random unit 1536-d vectors."""
    from array import array

    from shared.store.copy_binary import copy_rows_binary
    from shared.store.rows import ChunkRecord, ClaimedItem, CompletedItem
    from shared.text.hashing import sha256_hex
    from shared.text.tokenizer import count_tokens

    rng = random.Random(seed)
    # The column's vectors only need to be there (the fill embeds the texts anew): a small pool.
    pool = []
    for _ in range(64):
        vector = [rng.gauss(0, 1) for _ in range(1536)]
        norm = sum(v * v for v in vector) ** 0.5
        pool.append(array("f", [v / norm for v in vector]))
    client = conn.execute("insert into clients (id) values (gen_random_uuid()) returning id").fetchone()[0]
    per_item = 20
    for start in range(0, chunks, 1000):
        completed = []
        for first in range(start, min(start + 1000, chunks), per_item):
            count = min(per_item, chunks - first)
            texts = [
                f"chunk {first + i}: " + " ".join(rng.choice(WORDS) for _ in range(tokens - 4))
                for i in range(count)
            ]
            item_id = conn.execute(
                "insert into knowledge_items (client_id, source, content, status, processed_at) "
                "values (%s, 'synthetic', %s, 'done', now()) returning id",
                (client, "\n\n".join(texts)),
            ).fetchone()[0]
            item = ClaimedItem(item_id, client, "synthetic", "", "", None, None, None, 0)
            records = [
                ChunkRecord(i, text, rng.choice(pool), count_tokens(text), 0, len(text), sha256_hex(text))
                for i, text in enumerate(texts)
            ]
            completed.append(CompletedItem(item, records, "", MODEL, 1536, 0))
        with (
            conn.cursor() as cursor,
            cursor.copy(
                "copy public.knowledge_chunks (id, knowledge_item_id, chunk_index, content, embedding, "
                "client_id, token_count, embedding_model, embedding_dimensions, char_start, char_end, "
                "content_sha256) from stdin (format binary)"
            ) as copy,
        ):
            for block in copy_rows_binary(completed):
                copy.write(block)
    conn.execute("update knowledge_chunks set vector_indexed = true")
    conn.execute("vacuum analyze knowledge_chunks")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--latency-ms", type=int, default=80)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    import psycopg

    from shared.cli.embeddings import plan_figures
    from shared.local.embedded import start_embedded_postgres, stop_embedded_postgres
    from shared.process.pipeline import Processor
    from shared.providers.embeddings import OpenAIEmbedder
    from shared.providers.summaries import LocalSummarizer
    from shared.store.database import ConnectionHolder
    from shared.store.migrations import migrate
    from shared.store.postgres import PostgresStore
    from tests.support.openai_server import OpenAIServer

    work = Path(tempfile.mkdtemp(prefix="nexus-generation-bench-"))
    dsn = start_embedded_postgres(work / "pgdata")
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "args": vars(args),
    }
    try:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.monotonic()
            synthesize(conn, args.chunks, args.tokens)
            results["load_s"] = round(time.monotonic() - started, 1)
        store = PostgresStore(ConnectionHolder(dsn))
        store.ensure_generation(MODEL, 1536)
        with OpenAIServer(latency_ms=args.latency_ms) as server:
            requests = server.stats.requests
            plan = plan_figures(store.plan_generation(MODEL, 512), MODEL, 512)
            results["plan"] = plan
            results["plan_calls"] = server.stats.requests - requests
            generation = store.start_generation(MODEL, 512)
            embedder = OpenAIEmbedder("sk-bench", base_url=server.base_url)
            processor = Processor(store, embedder, LocalSummarizer())
            processor.check_settings()
            started = time.monotonic()
            report = processor.sweep(lambda: 10_000.0)
            total_s = time.monotonic() - started
            stats = server.stats
        with psycopg.connect(dsn, autocommit=True) as conn:
            waiting = conn.execute("select count(*) from chunk_vectors where not vector_indexed").fetchone()[
                0
            ]
            stored = conn.execute(
                "select count(*) from chunk_vectors where generation_id = %s", (generation.id,)
            ).fetchone()[0]
        results.update(
            fill_and_index_s=round(total_s, 1),
            vectors_stored=stored,
            awaiting_index=waiting,
            inputs_embedded=stats.embedding_inputs,
            tokens_embedded=stats.embedding_tokens,
            requests=stats.embedding_requests,
            chunks_per_s=round(stored / total_s),
            report=report.as_dict(),
            usd_per_million_chunks=round(stats.embedding_tokens / stored * 1_000_000 / 1_000_000 * 0.02, 2),
        )
        store.cutover_generation()
        results["recall_at_10"] = recall(dsn, generation.id, args.queries)
        store.close()
    finally:
        stop_embedded_postgres(work / "pgdata")
    results["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    return 0


def recall(dsn: str, generation: int, queries: int) -> float:
    """recall@10 of match_knowledge_chunks (HNSW on the generation) against an exact scan."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select embedding::text from chunk_vectors where generation_id = %s order by random() limit %s",
            (generation, queries),
        ).fetchall()
        found = 0
        for (vector,) in rows:
            hnsw = {
                r[0]
                for r in conn.execute(
                    "select id from match_knowledge_chunks(%s::vector, 10, null)", (vector,)
                )
            }
            exact = {
                r[0]
                for r in conn.execute(
                    "select c.id from chunk_vectors v "
                    "join knowledge_chunks c using (knowledge_item_id, chunk_index) "
                    "where v.generation_id = %s order by v.embedding <=> %s::vector limit 10",
                    (generation, vector),
                )
            }
            found += len(hnsw & exact)
        return round(found / (10 * len(rows)), 4)


if __name__ == "__main__":
    sys.exit(main())

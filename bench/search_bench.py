#!/usr/bin/env python3
"""Search benchmark (issue 5): `match_knowledge_chunks` latency and recall@10, HNSW vs exact scan.

For each size, a fresh table in an embedded Postgres (pgvector) is filled by binary COPY with the
HNSW index dropped (inserting 1536-d rows into HNSW one by one costs ~8 ms each on this build),
then the index is rebuilt and timed. Measured, per size:

- p50/p99 of `select * from match_knowledge_chunks(q, 10, null)`: warm, sequential, one connection
  opened like the product's (`shared.store.database.connect`: autocommit, no prepared statements);
- recall@10 against the exact top-10 by full-precision cosine (numpy over the same float32 rows);
- the exact scan (`order by embedding <=> q limit 10`, no index) for comparison, whose answers
  also check the numpy ground truth;
- index build time and `pg_relation_size`;
- a filtered run (`filter_client_id`, rows spread over 10 clients), recall against each client's
  exact top-10.

Data: realistic embeddings cannot be downloaded here, so synthetic vectors have cluster structure
(random unit centres plus gaussian noise, L2-normalised; queries are held-out points drawn the same
way); `--text` adds a run over `LocalEmbedder` vectors of the PostgreSQL HTML documentation chunks,
with held-out chunks as queries. numpy is used by this benchmark only.

    python bench/search_bench.py [--sizes 10000,100000] [--queries 200] [--text]

Prints a Markdown table and writes `bench/results/search.json` (merged per dataset label).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.local.embedded import start_embedded_postgres, stop_embedded_postgres  # noqa: E402
from shared.store.database import connect  # noqa: E402
from shared.store.migrations import apply_migrations  # noqa: E402
from shared.store.vectors import register_vector_type  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "search.json"
PG_DOCS = Path("/usr/share/doc/postgresql-doc-15/html")
DIMENSIONS = 1536
CLIENTS = 10
TOP_K = 10
WARMUP = 20
TARGETS = {"p50_ms": 10.0, "recall_at_10": 0.95, "size": 100_000}
INDEX = "knowledge_chunks_embedding_hnsw_half"
CREATE_INDEX = (
    f"create index {INDEX} on public.knowledge_chunks "
    "using hnsw ((embedding::halfvec(1536)) halfvec_cosine_ops) where vector_indexed"
)
SEARCH = "select * from match_knowledge_chunks(%s, 10, %s)"
EXACT = "select chunk_index from knowledge_chunks order by embedding <=> %s limit 10"


@dataclass
class Dataset:
    label: str
    rows: np.ndarray  # (n, 1536) float32, unit length
    queries: np.ndarray  # (q, 1536) float32, unit length, not in rows
    contents: list[str] | None = None


@dataclass
class Result:
    label: str
    rows: int
    queries: int
    load_s: float
    index_build_s: float
    index_mb: float
    table_mb: float
    search_p50_ms: float
    search_p99_ms: float
    search_mean_ms: float
    recall_at_10: float
    recall_min: float
    queries_below_half_recall: int
    exact_p50_ms: float
    exact_p99_ms: float
    exact_queries: int
    exact_sql_vs_numpy_recall: float
    as_is_p50_ms: float
    as_is_p99_ms: float
    as_is_recall_at_10: float
    as_is_queries: int
    filtered_p50_ms: float | None = None
    filtered_p99_ms: float | None = None
    filtered_recall_at_10: float | None = None
    filtered_short_answers: int | None = None
    notes: list[str] = field(default_factory=list)


# --- data ----------------------------------------------------------------------------------------


def _unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, queries: int, centres: int, noise: float, seed: int) -> Dataset:
    """`n + queries` points = a random unit centre + gaussian noise of expected norm `noise`."""
    rng = np.random.default_rng(seed)
    centre_vectors = _unit(rng.standard_normal((centres, DIMENSIONS), dtype=np.float32))
    sigma = noise / np.sqrt(DIMENSIONS)
    total = n + queries
    points = np.empty((total, DIMENSIONS), dtype=np.float32)
    step = 20_000
    for start in range(0, total, step):
        stop = min(total, start + step)
        owners = rng.integers(0, centres, stop - start)
        block = centre_vectors[owners] + sigma * rng.standard_normal(
            (stop - start, DIMENSIONS), dtype=np.float32
        )
        points[start:stop] = _unit(block)
    shape = "" if (centres, noise) == (300, 1.0) else f"-c{centres}-noise{noise:g}"
    return Dataset(f"clustered-{n}{shape}", points[:n], points[n:])


def pg_docs(queries: int, seed: int) -> Dataset:
    """Chunks of the PostgreSQL 15 HTML docs embedded by `LocalEmbedder`; `queries` held out."""
    from shared.providers.embeddings import LocalEmbedder
    from shared.text.chunking import chunk_text
    from shared.text.html import html_to_text

    texts: list[str] = []
    for path in sorted(PG_DOCS.glob("*.html")):
        texts.extend(chunk_text(html_to_text(path.read_text(encoding="utf-8", errors="replace"))))
    texts = sorted(set(texts))
    random.Random(seed).shuffle(texts)
    started = time.perf_counter()
    vectors = LocalEmbedder().embed(texts)
    embed_s = time.perf_counter() - started
    matrix = np.frombuffer(b"".join(v.tobytes() for v in vectors), dtype=np.float32).reshape(len(texts), -1)
    print(f"pg docs: {len(texts)} chunks embedded in {embed_s:.1f} s", flush=True)
    rows, held_out = matrix[queries:], matrix[:queries]
    return Dataset(f"pg-docs-local-embedder-{len(rows)}", rows, held_out, texts[queries:])


def exact_top_k(rows: np.ndarray, queries: np.ndarray, mask: np.ndarray | None = None) -> list[set[int]]:
    """Exact top-10 row numbers by cosine distance (rows and queries are unit length)."""
    scores = queries @ rows.T
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
    return [set(map(int, row)) for row in top]


# --- database ------------------------------------------------------------------------------------


def load(conn: psycopg.Connection[Any], data: Dataset, waiting: int = 0) -> tuple[list[str], float]:
    """Replace all chunks with `data.rows` (chunk_index = row number; client = row % 10). The last
    `waiting` rows are stored as the pipeline leaves them, outside the HNSW graph
    (`vector_indexed` false, searched exactly); the rest as the indexer leaves them."""
    conn.execute("truncate clients cascade")
    clients = [uuid.uuid4() for _ in range(CLIENTS)]
    items = [uuid.uuid4() for _ in range(CLIENTS)]
    for number, (client, item) in enumerate(zip(clients, items, strict=True)):
        conn.execute("insert into clients (id, name) values (%s, %s)", (client, f"bench {number}"))
        conn.execute(
            "insert into knowledge_items (id, client_id, source, content) values (%s, %s, 'bench', '')",
            (item, client),
        )
    conn.execute(f"drop index if exists {INDEX}")
    started = time.perf_counter()
    copy_sql = (
        "copy knowledge_chunks (knowledge_item_id, client_id, chunk_index, content, embedding, "
        "token_count, embedding_model, embedding_dimensions, vector_indexed) from stdin (format binary)"
    )
    first_waiting = len(data.rows) - waiting
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        copy.set_types(["uuid", "uuid", "int4", "text", "vector", "int4", "text", "int4", "bool"])
        for number, row in enumerate(data.rows):
            owner = number % CLIENTS
            content = data.contents[number] if data.contents else f"synthetic chunk {number}"
            vector = array("f", row.tobytes())
            indexed = number < first_waiting
            row_values = (
                items[owner],
                clients[owner],
                number,
                content,
                vector,
                8,
                "bench",
                DIMENSIONS,
                indexed,
            )
            copy.write_row(row_values)
    conn.execute("vacuum analyze knowledge_chunks")
    return clients, time.perf_counter() - started


def build_index(conn: psycopg.Connection[Any]) -> float:
    conn.execute("set maintenance_work_mem = '1GB'")
    conn.execute("set max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    conn.execute(CREATE_INDEX)
    elapsed = time.perf_counter() - started
    conn.execute("analyze knowledge_chunks")
    return elapsed


def relation_mb(conn: psycopg.Connection[Any], name: str, total: bool = False) -> float:
    function = "pg_total_relation_size" if total else "pg_relation_size"
    row = conn.execute(f"select {function}(%s::regclass) as size", (name,)).fetchone()
    return round(row["size"] / 2**20, 1)


def timed(
    conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]
) -> tuple[float, list[dict[str, Any]]]:
    started = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    return (time.perf_counter() - started) * 1000, rows


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def recall(found: list[list[int]], truth: list[set[int]]) -> list[float]:
    return [len(set(got) & want) / TOP_K for got, want in zip(found, truth, strict=True)]


def search(
    conn: psycopg.Connection[Any], queries: list[array[float]], client: Any
) -> tuple[list[float], list[list[int]]]:
    """Warm up, then time `match_knowledge_chunks` sequentially; return latencies and row numbers."""
    for q in queries[:WARMUP]:
        conn.execute(SEARCH, (q, client)).fetchall()
    latencies, found = [], []
    for q in queries:
        elapsed, rows = timed(conn, SEARCH, (q, client))
        latencies.append(elapsed)
        found.append([r["chunk_index"] for r in rows])
    return latencies, found


def measure(
    conn: psycopg.Connection[Any],
    data: Dataset,
    exact_queries: int,
    as_is_queries: int,
    filtered: bool,
    waiting: int = 0,
) -> Result:
    clients, load_s = load(conn, data, waiting)
    build_s = build_index(conn)
    queries = [array("f", q.tobytes()) for q in data.queries]
    truth = exact_top_k(data.rows, data.queries)

    # Postgres 18 caches the plans of SQL functions: after five calls the cached generic plan (the
    # one the product gets when warm) can order by distance without the HNSW index. Measure it as
    # shipped, then with custom plans forced for the session, which keeps the index.
    as_is_latencies, as_is_found = search(conn, queries[:as_is_queries], None)
    conn.execute("set plan_cache_mode = force_custom_plan")
    latencies, found = search(conn, queries, None)
    recalls = recall(found, truth)
    as_is_recalls = recall(as_is_found, truth[:as_is_queries])

    conn.execute("set enable_indexscan = off")
    exact_latencies, exact_found = [], []
    for q in queries[:exact_queries]:
        elapsed, rows = timed(conn, EXACT, (q,))
        exact_latencies.append(elapsed)
        exact_found.append([r["chunk_index"] for r in rows])
    conn.execute("reset enable_indexscan")
    conn.execute("reset plan_cache_mode")

    result = Result(
        label=data.label,
        rows=len(data.rows),
        queries=len(queries),
        load_s=round(load_s, 1),
        index_build_s=round(build_s, 1),
        index_mb=relation_mb(conn, INDEX),
        table_mb=relation_mb(conn, "knowledge_chunks", total=True),
        search_p50_ms=round(percentile(latencies, 0.50), 2),
        search_p99_ms=round(percentile(latencies, 0.99), 2),
        search_mean_ms=round(statistics.fmean(latencies), 2),
        recall_at_10=round(statistics.fmean(recalls), 4),
        recall_min=min(recalls),
        queries_below_half_recall=sum(1 for value in recalls if value < 0.5),
        exact_p50_ms=round(percentile(exact_latencies, 0.50), 1),
        exact_p99_ms=round(percentile(exact_latencies, 0.99), 1),
        exact_queries=len(exact_latencies),
        exact_sql_vs_numpy_recall=round(statistics.fmean(recall(exact_found, truth[:exact_queries])), 4),
        as_is_p50_ms=round(percentile(as_is_latencies, 0.50), 2),
        as_is_p99_ms=round(percentile(as_is_latencies, 0.99), 2),
        as_is_recall_at_10=round(statistics.fmean(as_is_recalls), 4),
        as_is_queries=len(as_is_latencies),
    )
    if filtered:
        owners = np.arange(len(data.rows)) % CLIENTS
        picks = [number % CLIENTS for number in range(len(queries))]
        filtered_truth = []
        for client in range(CLIENTS):
            chosen = [n for n, pick in enumerate(picks) if pick == client]
            answers = exact_top_k(data.rows, data.queries[chosen], owners == client)
            filtered_truth.extend(zip(chosen, answers, strict=True))
        by_query = dict(filtered_truth)
        filtered_latencies, filtered_found = [], []
        for client in range(CLIENTS):
            chosen = [n for n, pick in enumerate(picks) if pick == client]
            latencies_c, found_c = search(conn, [queries[n] for n in chosen], clients[client])
            filtered_latencies.extend(latencies_c)
            filtered_found.extend(found_c)
        order = [n for client in range(CLIENTS) for n, pick in enumerate(picks) if pick == client]
        result.filtered_p50_ms = round(percentile(filtered_latencies, 0.50), 2)
        result.filtered_p99_ms = round(percentile(filtered_latencies, 0.99), 2)
        ordered_truth = [by_query[n] for n in order]
        result.filtered_recall_at_10 = round(statistics.fmean(recall(filtered_found, ordered_truth)), 4)
        result.filtered_short_answers = sum(1 for got in filtered_found if len(got) < TOP_K)
    return result


# --- report --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "arch": platform.machine(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_avg": os.getloadavg(),
        "numpy": np.__version__,
    }


def server_info(conn: psycopg.Connection[Any]) -> dict[str, str]:
    row = conn.execute(
        "select version() as postgres,"
        " (select extversion from pg_extension where extname = 'vector') as pgvector,"
        " current_setting('shared_buffers') as shared_buffers,"
        " current_setting('max_parallel_workers_per_gather') as parallel_workers_per_gather"
    ).fetchone()
    return {key: str(value) for key, value in row.items()}


def markdown(results: list[Result]) -> str:
    lines = [
        "| data | rows | build s | index MB | p50 ms | p99 ms | recall@10 (min) | exact p50 ms "
        "| exact p99 ms | as shipped p50/p99 ms (recall) "
        "| filtered p50/p99 ms | filtered recall@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        filtered = f"{r.filtered_p50_ms} / {r.filtered_p99_ms}" if r.filtered_p50_ms is not None else "–"
        lines.append(
            f"| {r.label} | {r.rows} | {r.index_build_s} | {r.index_mb} "
            f"| {r.search_p50_ms} | {r.search_p99_ms} "
            f"| {r.recall_at_10:.3f} ({r.recall_min:.1f}) | {r.exact_p50_ms} | {r.exact_p99_ms} "
            f"| {r.as_is_p50_ms} / {r.as_is_p99_ms} ({r.as_is_recall_at_10:.3f}) | {filtered} "
            f"| {r.filtered_recall_at_10 if r.filtered_recall_at_10 is not None else '–'} |"
        )
    return "\n".join(lines)


def save(results: list[Result], meta: dict[str, Any]) -> None:
    stored: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = stored.get("runs", {})
    for r in results:
        runs[r.label] = {
            **asdict(r),
            "machine": meta["machine"],
            "server": meta["server"],
            "args": meta["args"],
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"targets": TARGETS, "runs": runs}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated row counts ('' for none)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=50, help="exact scans timed (each is slow)")
    parser.add_argument("--centres", type=int, default=300)
    parser.add_argument(
        "--noise", type=float, default=1.0, help="expected norm of the noise on a unit centre"
    )
    parser.add_argument(
        "--text", action="store_true", help="also run over the PostgreSQL docs (LocalEmbedder)"
    )
    parser.add_argument(
        "--as-is-queries", type=int, default=50, help="searches timed with the shipped (cached generic) plan"
    )
    parser.add_argument("--no-filtered", action="store_true")
    parser.add_argument(
        "--waiting", type=int, default=0, help="rows left outside the HNSW graph (searched exactly)"
    )
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    data_dir = Path(tempfile.mkdtemp(prefix="search-bench-"))
    dsn = start_embedded_postgres(data_dir)
    results: list[Result] = []
    try:
        conn = connect(dsn, application_name="search-bench")
        apply_migrations(conn)
        register_vector_type(conn)
        meta = {"machine": machine(), "server": server_info(conn), "args": vars(args)}
        print(json.dumps(meta, indent=2), flush=True)
        datasets = [
            lambda n=n: clustered(n, args.queries, args.centres, args.noise, args.seed) for n in sizes
        ]
        if args.text:
            datasets.append(lambda: pg_docs(args.queries, args.seed))
        for make in datasets:
            data = make()
            print(f"{data.label}: loading {len(data.rows)} rows", flush=True)
            if args.waiting:
                data.label += f", {args.waiting:,} awaiting the index"
            result = measure(
                conn, data, args.exact_queries, args.as_is_queries, not args.no_filtered, args.waiting
            )
            results.append(result)
            print(json.dumps(asdict(result)), flush=True)
            meta["machine"]["load_avg"] = os.getloadavg()
            save([result], meta)
        conn.close()
    finally:
        stop_embedded_postgres(data_dir)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    print(markdown(results))


if __name__ == "__main__":
    main()

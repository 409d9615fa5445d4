#!/usr/bin/env python3
"""recall@10 of `match_knowledge_chunks` (the HNSW index of the active generation) against an exact
scan over the same vectors, on an existing database: the one `bench/whole_command.sh` leaves when
given `KEEP=1`, or any NEXUS_HOME / DATABASE_URL.

Queries are stored vectors (`--queries` of them, chosen at random with a fixed seed), each
perturbed by Gaussian noise of `--noise` per coordinate before normalising, so a query is near,
not at, its source.

    NEXUS_HOME=/tmp/x/.nexus python bench/index_recall.py [--queries 200] [--noise 0.01]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.01)
    args = parser.parse_args()

    import psycopg

    from shared.config import get_settings
    from shared.local.database import database_url

    rng = random.Random(17)
    with psycopg.connect(database_url(get_settings()), autocommit=True) as conn:
        active = conn.execute(
            "select id, storage, dimensions from embedding_generations where state = 'active'"
        ).fetchone()
        generation, storage, dimensions = active if active else (None, "column", 1536)
        if storage == "column":
            source = "select embedding::text from knowledge_chunks where embedding is not null"
            exact = (
                "select id from knowledge_chunks where embedding is not null "
                "order by embedding <=> %s::vector limit 10"
            )
        else:
            source = f"select embedding::text from chunk_vectors where generation_id = {int(generation)}"
            exact = (
                "select c.id from chunk_vectors v "
                "join knowledge_chunks c using (knowledge_item_id, chunk_index) "
                f"where v.generation_id = {int(generation)} order by v.embedding <=> %s::vector limit 10"
            )
        conn.execute("select setseed(0.17)")
        rows = conn.execute(f"{source} order by random() limit %s", (args.queries,)).fetchall()
        found = 0
        for (text,) in rows:
            values = [float(v) + rng.gauss(0, args.noise) for v in text.strip("[]").split(",")]
            norm = math.sqrt(sum(v * v for v in values))
            query = "[" + ",".join(f"{v / norm:.7g}" for v in values) + "]"
            hnsw = {
                r[0]
                for r in conn.execute("select id from match_knowledge_chunks(%s::vector, 10, null)", (query,))
            }
            truth = {r[0] for r in conn.execute(exact, (query,))}
            found += len(hnsw & truth)
        rows_total = conn.execute(f"select count(*) from ({source}) s").fetchone()[0]
    print(
        f"generation {generation} ({storage}, {dimensions} dimensions, {rows_total} vectors): "
        f"recall@10 = {found / (10 * len(rows)):.4f} over {len(rows)} queries, noise {args.noise}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

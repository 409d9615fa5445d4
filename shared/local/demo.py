"""`nexus demo`: the whole job on the sample documents in `examples/`, offline, no keys.

Each folder under `examples/` is one client (its id derived from the folder name, so re-runs
reuse the same clients and unchanged documents are duplicates, not copies). Processing uses the
local embedder and summariser whatever the environment says, so the demo never needs a network.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEMO_NAMESPACE = uuid.UUID("6e657875-7300-4000-8000-64656d6f0000")
DEMO_QUERIES = (
    ("acme-robotics", "what to check on the charging dock contacts"),
    ("bluefin-health", "how do patients join a telehealth visit"),
    ("cedar-legal", "how long are closed client files kept"),
)


def demo_client_id(name: str) -> uuid.UUID:
    return uuid.uuid5(DEMO_NAMESPACE, name)


def run_demo(
    store: Any, settings: Any, examples_dir: Path, process: Callable[[Any, Any], Any] | None = None
) -> int:
    """Run the demo; `process(settings, store)` processes everything claimable (default
    `shared.process.process_all`; the CLI passes its own, which draws a progress bar)."""
    from shared.ingest.files import ingest_files
    from shared.process import process_all
    from shared.search.service import search

    folders = sorted(
        p for p in examples_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "events"
    )
    if not folders:
        print(f"no sample documents under {examples_dir}")
        return 1
    local = settings.model_copy(update={"embedding_provider": "local", "summary_provider": "local"})

    print("1. ingest")
    for folder in folders:
        client_id = demo_client_id(folder.name)
        store.ensure_client(client_id, folder.name)
        results = ingest_files(store, [folder], client_id, base=examples_dir.parent)
        new = sum(1 for _, r in results if not r.duplicate)
        print(f"   {folder.name:<16} {len(results)} documents ({new} new or changed)  client {client_id}")

    print("2. process (local embedder and summariser: offline, lexical, not semantic)")
    report = (process or process_all)(local, store)
    r = report.as_dict()
    print(
        f"   {r['done']} items done, {r['failed']} failed; {r['chunks']} chunks, "
        f"{r['embedded_chunks']} embedded ({r['embedded_tokens']} tokens), the rest reused"
    )

    print("3. client summaries")
    for folder in folders:
        summary = store.client_summary(demo_client_id(folder.name))
        print(f"   {folder.name}:")
        print(textwrap.indent(textwrap.fill(summary or "(none yet)", 96), "     "))

    print("4. search")
    for name, query in DEMO_QUERIES:
        if not (examples_dir / name).is_dir():
            continue
        print(f'   "{query}" (client {name})')
        for rank, hit in enumerate(search(store, local, query, 3, demo_client_id(name)), 1):
            snippet = " ".join(hit.content.split())[:110]
            print(f"     {rank}. {hit.similarity:.3f} {hit.source} [{hit.chunk_index}] {snippet}…")
    counts = store.status().get("counts", {})
    print("items by status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0 if not report.failed else 1

"""`nexus demo`: the whole job on the sample documents in `examples/`, offline.

Each folder under `examples/` is one client (its id derived from the folder name, so re-runs
reuse the same clients and items are duplicates, not copies).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

DEMO_NAMESPACE = uuid.UUID("6e657875-7300-4000-8000-64656d6f0000")


def demo_client_id(name: str) -> uuid.UUID:
    return uuid.uuid5(DEMO_NAMESPACE, name)


def run_demo(store: Any, examples_dir: Path) -> int:
    from shared.cli import ingest_paths

    folders = sorted(p for p in examples_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        print(f"no sample documents under {examples_dir}")
        return 1
    for folder in folders:
        client_id = demo_client_id(folder.name)
        store.ensure_client(client_id, folder.name)
        results = ingest_paths(store, [folder], client_id)
        new = sum(1 for _, r in results if not r.duplicate)
        print(f"{folder.name:<16} client {client_id}  {len(results)} document(s), {new} new or changed")
    counts = store.status().get("counts", {})
    print("items by status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0

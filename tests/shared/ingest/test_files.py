"""`ingest_files` (`nexus ingest`) on the real database: files are stored in batches and, for a
folder of many, read by several processes; the results keep the files' order, re-ingesting
stores only what changed, and a file that is too large or empty is skipped alone."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg

from shared.ingest.files import (
    MAX_BATCH_ITEMS,
    PARALLEL_READ_MIN_FILES,
    find_documents,
    ingest_files,
    read_document,
)
from shared.store.postgres import PostgresStore
from tests.conftest import count_items

PAGE = """<!DOCTYPE html><html><head><title>t{n}</title><style>p {{ color: red }}</style></head>
<body><h1>Page {n}</h1><p>Der Zähler steht auf {n} &amp; mehr.</p><pre>  keep   {n}
  spacing</pre><ul><li>一 {n}</li><li>🙂</li></ul></body></html>"""


def write_folder(folder: Path, pages: int, notes: int) -> None:
    folder.mkdir()
    for n in range(pages):
        (folder / f"page-{n:03}.html").write_text(PAGE.format(n=n), encoding="utf-8")
    for n in range(notes):
        (folder / f"note-{n:03}.txt").write_text(f"Note {n}: plain text, نص عربي {n}.", encoding="utf-8")


def test_a_large_folder_is_stored_in_order_and_again_only_as_it_changed(
    tmp_path: Path, store: PostgresStore, client_id: uuid.UUID, admin: psycopg.Connection[Any]
) -> None:
    folder = tmp_path / "docs"
    write_folder(folder, pages=MAX_BATCH_ITEMS + 20, notes=15)
    files = find_documents([folder])
    assert len(files) >= PARALLEL_READ_MIN_FILES  # read by several processes

    first = ingest_files(store, [folder], client_id, base=tmp_path)

    assert [path for path, _ in first] == [f.relative_to(tmp_path) for f in files]
    assert not any(result.duplicate for _, result in first)
    assert count_items(admin, client_id) == len(files)
    for path, result in first[:3] + first[-3:]:
        row = admin.execute("select content from knowledge_items where id = %s", (result.item_id,)).fetchone()
        assert row is not None and row["content"] == read_document(tmp_path / path)
        assert "<" not in row["content"]
    page = admin.execute(
        "select content from knowledge_items where client_id = %s and external_id = %s",
        (client_id, "docs/page-007.html"),
    ).fetchone()
    assert page is not None
    text = page["content"]
    assert text.startswith("# Page 7\n\nDer Zähler steht auf 7 & mehr.\n\n")  # its h1, marked
    assert "keep   7\n" in text and text.endswith("一 7\n\n🙂") and "color" not in text

    (folder / "page-007.html").write_text(PAGE.format(n=700), encoding="utf-8")
    again = ingest_files(store, [folder], client_id, base=tmp_path)
    changed = [str(path) for path, result in again if not result.duplicate]
    assert changed == ["docs/page-007.html"]
    assert [r.item_id for _, r in again] == [r.item_id for _, r in first]
    assert count_items(admin, client_id) == len(files)


def test_a_file_too_large_or_empty_is_skipped_alone(
    tmp_path: Path, store: PostgresStore, client_id: uuid.UUID, admin: psycopg.Connection[Any]
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for n in range(5):
        (folder / f"a-{n}.txt").write_text(f"A short note number {n}.", encoding="utf-8")
    (folder / "b-large.md").write_text("word " * 5000, encoding="utf-8")
    (folder / "c-empty.html").write_text("<html><body><script>x()</script></body></html>", encoding="utf-8")
    skipped: list[tuple[str, str]] = []

    results = ingest_files(
        store,
        [folder],
        client_id,
        base=tmp_path,
        max_item_tokens=1000,
        on_skip=lambda path, reason: skipped.append((str(path), reason)),
    )

    assert [str(path) for path, _ in results] == [f"mixed/a-{n}.txt" for n in range(5)]
    assert [path for path, _ in skipped] == ["mixed/c-empty.html", "mixed/b-large.md"]
    assert skipped[0][1] == "no text" and "1000" in skipped[1][1]
    assert count_items(admin, client_id) == 5

"""Knowledge from local files (`nexus ingest`, `nexus demo`): .txt, .md and .html, each file an
item whose `external_id` is its path, so ingesting a folder again stores only what changed."""

from __future__ import annotations

import multiprocessing
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from shared.http.problems import ProblemError
from shared.ingest.queue import NoQueue
from shared.ingest.service import MAX_BATCH_ITEMS, IngestItem, IngestResult, ingest_items
from shared.text.html import html_to_text

if TYPE_CHECKING:
    from shared.store import Store

__all__ = ["SUPPORTED_SUFFIXES", "find_documents", "ingest_files", "read_document"]

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
# Files are stored in batches (one transaction and round trip each) of up to MAX_BATCH_ITEMS
# files and about this many characters, so a folder of large files is never all in memory.
BATCH_CHARS = 8_000_000
# Many files are read (HTML turned into text) by up to MAX_READERS processes, READ_CHUNK_FILES
# files per task.
PARALLEL_READ_MIN_FILES = 64
MAX_READERS = 4
READ_CHUNK_FILES = 8


def read_document(path: Path) -> str:
    """The text of a supported file; raises ValueError for other kinds."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path} is not a .txt, .md or .html file.")
    raw = path.read_text(encoding="utf-8", errors="replace")
    return html_to_text(raw) if suffix in {".html", ".htm"} else raw


def find_documents(paths: list[Path]) -> list[Path]:
    """Expand folders (recursively) into the supported files they hold, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES))
        elif path.exists():
            found.append(path)
        else:
            raise ValueError(f"{path} does not exist.")
    return found


def ingest_files(
    store: Store,
    paths: Sequence[Path],
    client_id: uuid.UUID,
    source: str | None = None,
    base: Path | None = None,
    max_item_tokens: int | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
) -> list[tuple[Path, IngestResult]]:
    """Ingest files (folders expanded) for one client, in batches; each file's path (relative to
    `base` when under it) is its external_id, so re-ingesting an unchanged file is a duplicate and
    an edited one an update. A file with no text, or over `max_item_tokens`, is skipped and passed
    to `on_skip` with the reason."""
    results: list[tuple[Path, IngestResult]] = []
    for batch in _batches(paths, client_id, source, base, on_skip):
        results.extend(_store_batch(store, batch, max_item_tokens, on_skip))
    return results


def _batches(
    paths: Sequence[Path],
    client_id: uuid.UUID,
    source: str | None,
    base: Path | None,
    on_skip: Callable[[Path, str], None] | None,
) -> Iterator[list[tuple[Path, IngestItem]]]:
    """The files as items, in batches of up to MAX_BATCH_ITEMS files and about BATCH_CHARS."""
    batch: list[tuple[Path, IngestItem]] = []
    chars = 0
    for found, text in _read_documents(find_documents(list(paths))):
        path = found.relative_to(base) if base is not None and found.is_relative_to(base) else found
        if not text.strip():
            if on_skip:
                on_skip(path, "no text")
            continue
        item = IngestItem(
            client_id=client_id,
            source=source or path.as_posix(),
            content=text,
            metadata={"path": path.as_posix()},
            external_id=path.as_posix(),
        )
        batch.append((path, item))
        chars += len(text)
        if len(batch) == MAX_BATCH_ITEMS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _read_documents(files: list[Path]) -> Iterator[tuple[Path, str]]:
    """Each file with its text, in order. Turning HTML into text is CPU-bound pure Python (about
    3 ms a page here): a folder of many pages is read by a process per core, while this process
    stores what is read."""
    workers = min(os.cpu_count() or 1, MAX_READERS)
    # Forked readers start at once and need no importable __main__; fork is safe only on Linux.
    if workers < 2 or len(files) < PARALLEL_READ_MIN_FILES or sys.platform != "linux":
        yield from ((found, read_document(found)) for found in files)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from zip(files, pool.map(read_document, files, chunksize=READ_CHUNK_FILES), strict=True)


def _store_batch(
    store: Store,
    batch: list[tuple[Path, IngestItem]],
    max_item_tokens: int | None,
    on_skip: Callable[[Path, str], None] | None,
) -> list[tuple[Path, IngestResult]]:
    """One call for the batch; when a file in it is over the size limit, one call per file, so
    only that file is skipped."""
    try:
        stored = ingest_items(
            [item for _, item in batch],
            store=store,
            queue=NoQueue(),
            max_item_tokens=max_item_tokens,
            is_batch=True,
        )
        return list(zip([path for path, _ in batch], stored, strict=True))
    except ProblemError as problem:
        if problem.status != 413:
            raise
    results = []
    for path, item in batch:
        try:
            (result,) = ingest_items([item], store=store, queue=NoQueue(), max_item_tokens=max_item_tokens)
        except ProblemError as problem:
            if problem.status != 413:
                raise
            if on_skip:
                on_skip(path, problem.errors[0].detail)
            continue
        results.append((path, result))
    return results

"""Knowledge from local files (`nexus ingest`, `nexus demo`): .txt, .md, .html, .pdf and .docx,
each file an item whose `external_id` is its path, so ingesting a folder again stores only what
changed. HTML is kept as its visible text with its headings marked (`#`); a PDF or DOCX is checked
and kept as the file (a data URL), its text extracted while processing."""

from __future__ import annotations

import multiprocessing
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from shared.http.problems import ProblemError
from shared.ingest.documents import FileRejected, decode_file
from shared.ingest.items import MAX_BATCH_ITEMS, IngestItem
from shared.ingest.queue import NoQueue
from shared.ingest.service import IngestResult, ingest_items
from shared.text.documents import DOCX, PDF
from shared.text.html import html_to_markdown_text

if TYPE_CHECKING:
    from shared.store import Store

__all__ = ["SUPPORTED_SUFFIXES", "find_documents", "ingest_files", "read_document"]

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
_FILE_TYPES = {".pdf": PDF, ".docx": DOCX}
# Files are stored in batches (one transaction and round trip each) of up to MAX_BATCH_ITEMS
# files and about this many characters, so a folder of large files is never all in memory.
BATCH_CHARS = 8_000_000
# Many files are read (HTML turned into text) by up to MAX_READERS processes, READ_CHUNK_FILES
# files per task.
PARALLEL_READ_MIN_FILES = 64
MAX_READERS = 4
READ_CHUNK_FILES = 8


def read_document(path: Path, max_file_bytes: int | None = None) -> str:
    """The content a supported file is stored as; raises ValueError for other kinds, and
    FileRejected (a ValueError: why, in one sentence) for a PDF or DOCX that cannot be read or
    is over `max_file_bytes`."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path} is not a .txt, .md, .html, .pdf or .docx file.")
    if suffix in _FILE_TYPES:
        if max_file_bytes is not None and path.stat().st_size > max_file_bytes:
            raise FileRejected(f"over the {max_file_bytes}-byte limit (NEXUS_MAX_FILE_BYTES)")
        return decode_file(_FILE_TYPES[suffix], path.read_bytes())[0]
    raw = path.read_text(encoding="utf-8", errors="replace")
    return html_to_markdown_text(raw) if suffix in {".html", ".htm"} else raw


def _read_or_reason(path: Path, max_file_bytes: int | None = None) -> str | FileRejected:
    """`read_document`, a rejected file's reason returned (it crosses a process pool)."""
    try:
        return read_document(path, max_file_bytes)
    except FileRejected as rejected:
        return rejected


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
    max_file_bytes: int | None = None,
) -> list[tuple[Path, IngestResult]]:
    """Ingest files (folders expanded) for one client, in batches; each file's path (relative to
    `base` when under it) is its external_id, so re-ingesting an unchanged file is a duplicate and
    an edited one an update. A file with no text, or over `max_item_tokens`, is skipped and passed
    to `on_skip` with the reason."""
    results: list[tuple[Path, IngestResult]] = []
    for batch in _batches(paths, client_id, source, base, on_skip, max_file_bytes):
        results.extend(_store_batch(store, batch, max_item_tokens, on_skip))
    return results


def _batches(
    paths: Sequence[Path],
    client_id: uuid.UUID,
    source: str | None,
    base: Path | None,
    on_skip: Callable[[Path, str], None] | None,
    max_file_bytes: int | None = None,
) -> Iterator[list[tuple[Path, IngestItem]]]:
    """The files as items, in batches of up to MAX_BATCH_ITEMS files and about BATCH_CHARS."""
    batch: list[tuple[Path, IngestItem]] = []
    chars = 0
    for found, text in _read_documents(find_documents(list(paths)), max_file_bytes):
        path = found.relative_to(base) if base is not None and found.is_relative_to(base) else found
        if isinstance(text, FileRejected):
            if on_skip:
                on_skip(path, str(text))
            continue
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


def _read_documents(
    files: list[Path], max_file_bytes: int | None = None
) -> Iterator[tuple[Path, str | FileRejected]]:
    """Each file with its text, in order. Turning HTML into text is CPU-bound pure Python (about
    3 ms a page here): a folder of many pages is read by a process per core, while this process
    stores what is read."""
    workers = min(os.cpu_count() or 1, MAX_READERS)
    # Forked readers start at once and need no importable __main__; fork is safe only on Linux.
    if workers < 2 or len(files) < PARALLEL_READ_MIN_FILES or sys.platform != "linux":
        yield from ((found, _read_or_reason(found, max_file_bytes)) for found in files)
        return
    read = partial(_read_or_reason, max_file_bytes=max_file_bytes)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from zip(files, pool.map(read, files, chunksize=READ_CHUNK_FILES), strict=True)


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

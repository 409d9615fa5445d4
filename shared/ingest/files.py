"""Knowledge from local files (`nexus ingest`, `nexus demo`): .txt, .md and .html, each file an
item whose `external_id` is its path, so ingesting a folder again stores only what changed."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shared.http.problems import ProblemError
from shared.ingest.queue import NoQueue
from shared.ingest.service import IngestItem, IngestResult, ingest_items
from shared.text.html import html_to_text

if TYPE_CHECKING:
    from shared.store import Store

__all__ = ["SUPPORTED_SUFFIXES", "find_documents", "ingest_files", "read_document"]

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")


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
    """Ingest files (folders expanded) for one client; each file's path (relative to `base` when
    under it) is its external_id, so re-ingesting an unchanged file is a duplicate and an edited
    one an update. A file with no text, or over `max_item_tokens`, is skipped and passed to
    `on_skip` with the reason."""
    results = []
    for found in find_documents(list(paths)):
        text = read_document(found)
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

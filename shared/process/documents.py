"""Claimed items as documents: the text to chunk and its structure, a long PDF's pages extracted in
batches with checkpoints.

A PDF of more pages than one batch (`NEXUS_PDF_PAGE_BATCH`) is extracted a batch at a time, each
batch kept in `document_pages` as soon as it is read. When the item's share of the invocation is
spent before its last page, it is given back (`ExtractionPaused`: no attempt counted) and the next
claim goes on from the pages kept, so an invocation of any length makes progress and no page is
read twice. Once every page is there, the item is chunked, embedded and summarised like any other:
vectors paid for by an invocation that then ran out of time are kept too (the embedding cache) and
summaries of a long text's parts (the summary memo), so a finished batch is never paid for again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import NexusError
from shared.store import ClaimedItem, Store
from shared.text.documents import PDF, Document, DocumentError, parse_data_url
from shared.text.extract import document_of

if TYPE_CHECKING:
    from shared.text.pdf import PdfFile

__all__ = ["DocumentReader", "ExtractionPaused"]


class ExtractionPaused(NexusError):
    """A PDF's extraction stopped at its time share; its pages so far are kept. `code` makes the
    item's trouble the clock's (`troubles.kind_of`): given back, no attempt counted."""

    code = "deadline"
    retryable = True

    def __init__(self, done: int, pages: int) -> None:
        super().__init__(f"Extracted {done} of the PDF's {pages} pages; the next claim goes on from there.")
        self.done, self.pages = done, pages


@dataclass
class DocumentReader:
    store: Store
    page_batch: int = 25

    def read(self, item: ClaimedItem, deadline: float = math.inf) -> Document:
        """The item's document. A PDF's pages past the first batch are extracted batch by batch
        while `deadline` (a `time.monotonic()` value) is not passed, each batch kept. Raises
        ExtractionPaused when the deadline stops it, DocumentError for a file without text."""
        file = parse_data_url(item.content)
        if file is None:
            return document_of(item.content)
        try:
            return _with_text(self._file_document(item, file[0], file[1], deadline))
        except NexusError:
            raise
        except Exception as exc:  # a parser's own failure on an odd file: that file's, reported
            raise DocumentError(f"The {file[0]} file cannot be read ({type(exc).__name__}).") from None

    def _file_document(self, item: ClaimedItem, content_type: str, data: bytes, deadline: float) -> Document:
        if content_type != PDF:
            return document_of(item.content)
        from shared.text.pdf import PdfFile

        pdf = PdfFile(data)
        return pdf.document(None if pdf.pages <= self.page_batch else self._checkpointed(pdf, item, deadline))

    def _checkpointed(self, pdf: PdfFile, item: ClaimedItem, deadline: float) -> dict[int, str]:
        """Every page's text: those kept by earlier claims, the rest read a batch at a time and
        kept, while there is time (at least one batch per claim, so each claim makes progress)."""
        texts = self.store.document_pages(item.id, item.content_sha256)
        pages = pdf.pages
        missing = [page for page in range(1, pages + 1) if page not in texts]
        for start in range(0, len(missing), self.page_batch):
            if start and time.monotonic() >= deadline:
                raise ExtractionPaused(len(texts), pages)
            batch = {page: pdf.page_text(page) for page in missing[start : start + self.page_batch]}
            self.store.save_document_pages(item.id, item.content_sha256, batch)
            texts.update(batch)
        return texts

    def finished(self, items: list[ClaimedItem]) -> None:
        """Forget the kept pages of items now stored (those that had any)."""
        self.store.drop_document_pages([item.id for item in items if _is_pdf(item)])


def _is_pdf(item: ClaimedItem) -> bool:
    return item.content.startswith("data:application/pdf;")


def _with_text(document: Document) -> Document:
    """A file's document, unless it has no text at all: a file without a text layer is reported
    (no OCR is guessed at), and is not retried."""
    if document.text.strip():
        return document
    if document.pages:
        raise DocumentError(
            f"The document has no text layer on any of its {document.pages} page(s) (scanned images?); "
            "run OCR on it and ingest the result."
        )
    raise DocumentError("The document holds no text.")

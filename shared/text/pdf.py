"""PDF: checked at ingest (readable, not locked, how many pages), its text layer extracted page by
page while processing, with its bookmarks as headings.

pypdf is imported only when a PDF is met, so ingest's cold start does not pay for it. A PDF
encrypted with an empty user password (locked against editing, not reading) is read; one that
needs a password is refused. A page without a text layer (a scan) gives no text and is reported,
never guessed at (no OCR).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping
from typing import Any

from shared.text.documents import HEADING, PAGE, Document, DocumentError, HeadingPath, Section

__all__ = ["PdfFile", "check_pdf", "pdf_document"]

# Pages are joined with a blank line, so each page starts a paragraph.
PAGE_JOIN = "\n\n"
_SPACES = re.compile(r"\s+")


class PdfFile:
    """An open PDF: its page count, each page's text, and its bookmarks."""

    def __init__(self, data: bytes) -> None:
        if b"%PDF-" not in data[:1024]:
            raise DocumentError("The file is not a PDF (it does not start with %PDF-).")
        try:
            from pypdf import PdfReader

            self.reader = PdfReader(io.BytesIO(data), strict=False)
            locked = self.reader.is_encrypted and not self.reader.decrypt("")
        except DocumentError:
            raise
        except Exception as exc:
            raise DocumentError(f"The PDF cannot be read ({_reason(exc)}).") from None
        if locked:
            raise DocumentError("The PDF is encrypted with a password; ingest a copy saved without one.")
        try:
            self.pages = len(self.reader.pages)
        except Exception as exc:
            raise DocumentError(f"The PDF's pages cannot be read ({_reason(exc)}).") from None
        if self.pages == 0:
            raise DocumentError("The PDF has no pages.")

    def page_text(self, number: int) -> str:
        """The text layer of page `number` (1-based); empty for a page without one or whose
        content cannot be parsed."""
        try:
            text = self.reader.pages[number - 1].extract_text() or ""
        except Exception:  # one broken page's content stream loses that page only
            return ""
        return text.replace("\x00", "").strip()

    def document(self, page_texts: Mapping[int, str] | None = None) -> Document:
        """The PDF's document from its pages' texts (default: every page read now)."""
        if page_texts is None:
            page_texts = {page: self.page_text(page) for page in range(1, self.pages + 1)}
        return pdf_document(page_texts, self.pages, self.bookmarks())

    def bookmarks(self) -> list[tuple[int, int, str]]:
        """The outline (bookmarks) as (page, depth, title), in outline order; [] without one."""
        found: list[tuple[int, int, str]] = []
        try:
            self._walk(self.reader.outline, 1, found)
        except Exception:  # a broken outline only loses the headings
            return []
        return found

    def _walk(self, entries: Any, depth: int, found: list[tuple[int, int, str]]) -> None:
        for entry in entries:
            if isinstance(entry, list):
                self._walk(entry, depth + 1, found)
                continue
            page = self.reader.get_destination_page_number(entry)
            title = str(getattr(entry, "title", "") or "").strip()
            if page is not None and page >= 0 and title:
                found.append((page + 1, min(depth, 6), title))


def _reason(exc: Exception) -> str:
    text = _SPACES.sub(" ", str(exc)).strip()
    return text[:160] if text else type(exc).__name__


def check_pdf(data: bytes) -> int:
    """The page count of a readable PDF; raises DocumentError (one sentence) for one that is not
    a PDF, is corrupt, needs a password, or has no pages."""
    return PdfFile(data).pages


def pdf_document(
    page_texts: Mapping[int, str], pages: int, bookmarks: list[tuple[int, int, str]]
) -> Document:
    """The document of a PDF from each page's text (1-based; all `pages` of them): the pages
    joined by blank lines, a section at each page start (its page and the headings in effect)
    and at each bookmark's title where it is found on its page (else at the page's start)."""
    by_page: dict[int, list[tuple[int, str]]] = {}
    for page, depth, title in bookmarks:
        by_page.setdefault(page, []).append((depth, title))
    parts: list[str] = []
    sections: list[Section] = []
    path = HeadingPath()
    offset = 0
    empty = []
    for page in range(1, pages + 1):
        text = page_texts.get(page, "")
        if not text:
            empty.append(page)
        sections.append(Section(offset, page, path.titles, PAGE))
        for at, depth, title in _placed(text, by_page.get(page, [])):
            heading = Section(offset + at, page, path.enter(depth, title), HEADING)
            if at == 0:
                sections[-1] = heading
            else:
                sections.append(heading)
        parts.append(text)
        offset += len(text) + len(PAGE_JOIN)
    return Document(PAGE_JOIN.join(parts), tuple(sections), pages, tuple(empty))


def _placed(text: str, headings: list[tuple[int, str]]) -> Iterator[tuple[int, int, str]]:
    """(offset in the page's text, depth, title) for a page's bookmarks, in order: each title
    where it next appears on the page (searched from the previous one), else at the start."""
    position = 0
    for depth, title in headings:
        found = text.find(title.strip(), position) if title.strip() else -1
        if found >= 0:
            position = found
        yield position, depth, title

"""Any item's content as a `Document`: what processing chunks (see `shared.text.documents`).

`check_file` is what ingest runs on a file before storing it (cheap: no text is extracted);
`document_of` is what processing runs (a PDF's pages may instead be extracted in batches with
checkpoints, `shared.process.documents`).
"""

from __future__ import annotations

from shared.text.documents import DOCX, PDF, Document, DocumentError, parse_data_url, text_document
from shared.text.html import html_document, is_html

__all__ = ["check_file", "document_of"]


def check_file(content_type: str, data: bytes) -> int | None:
    """Check a PDF or DOCX before it is stored: its page count (PDF), None otherwise. Raises
    DocumentError (one sentence) for a file processing could not read."""
    if content_type == PDF:
        from shared.text.pdf import check_pdf

        return check_pdf(data)
    if content_type == DOCX:
        from shared.text.docx import check_docx

        check_docx(data)
    return None


def document_of(content: str) -> Document:
    """The document an item's content holds: a PDF's or DOCX's text (from its data URL), HTML's
    visible text with its headings, or the text itself with its Markdown headings."""
    file = parse_data_url(content)
    if file is None:
        return html_document(content) if is_html(content) else text_document(content)
    content_type, data = file
    if content_type == PDF:
        from shared.text.pdf import PdfFile

        return PdfFile(data).document()
    if content_type == DOCX:
        from shared.text.docx import docx_document

        return docx_document(data)
    raise DocumentError(f"Files of type {content_type} cannot be processed.")  # pragma: no cover

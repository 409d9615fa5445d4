#!/usr/bin/env python3
"""Files: how fast a PDF and a DOCX are checked at ingest, and how fast their text is extracted
and chunked while processing, on real prose (PostgreSQL manual pages laid out as documents).

    .venv/bin/python bench/document_bench.py [CORPUS_DIR] [--pages 300] [--repeats 3]

CORPUS_DIR holds the manual's HTML pages (default /usr/share/doc/postgresql-doc-15/html, Debian's
postgresql-doc-15). The pages' visible text is laid out with reportlab into an A4 PDF (10 pt
Helvetica, a bookmark per manual page, flowing onto as many PDF pages as it takes) until it has
`--pages` pages, and into a DOCX (a Heading 1 per manual page, a paragraph per paragraph).
Prints, for each, the median over `--repeats` runs of: the ingest check (`check_file`), the
extraction (pages/s for the PDF), and the structure-aware chunking of the extracted text.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.text.chunking import split_text  # noqa: E402
from shared.text.documents import DOCX, PDF, data_url  # noqa: E402
from shared.text.extract import check_file, document_of  # noqa: E402
from shared.text.html import html_document  # noqa: E402

DEFAULT_CORPUS = Path("/usr/share/doc/postgresql-doc-15/html")


def manual_sections(corpus: Path) -> list[tuple[str, list[str]]]:
    """(title, paragraphs) of each manual page, in file-name order."""
    sections = []
    for path in sorted(corpus.glob("*.html")):
        document = html_document(path.read_text(encoding="utf-8", errors="replace"))
        title = document.sections[0].headings[-1] if document.sections else path.stem
        paragraphs = [p.strip() for p in document.text.split("\n\n") if p.strip()]
        if paragraphs:
            sections.append((title, paragraphs))
    return sections


def build_pdf(sections: list[tuple[str, list[str]]], pages: int) -> tuple[bytes, int]:
    """The sections laid out on A4 pages until `pages` pages are full; (bytes, manual pages used)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=True)
    top, bottom = A4[1] - 50, 50
    y, page, used = top, 1, 0

    def line(text: str, font: str, size: int) -> None:
        nonlocal y, page
        if y < bottom:
            pdf.showPage()
            y, page = top, page + 1
        pdf.setFont(font, size)
        pdf.drawString(50, y, text)
        y -= size + 3

    for n, (title, paragraphs) in enumerate(sections):
        if page > pages:
            break
        used += 1
        line(title[:90], "Helvetica-Bold", 13)
        pdf.bookmarkHorizontal(f"s{n}", 0, y + 16)
        pdf.addOutlineEntry(title[:90], f"s{n}", level=0)
        for paragraph in paragraphs:
            for text in textwrap.wrap(paragraph, 100) or [""]:
                line(text, "Helvetica", 10)
                if page > pages:
                    break
            y -= 5
    pdf.save()
    return buffer.getvalue(), used


def build_docx(sections: list[tuple[str, list[str]]]) -> bytes:
    import docx

    document = docx.Document()
    for title, paragraphs in sections:
        document.add_heading(title[:200], level=1)
        for paragraph in paragraphs:
            document.add_paragraph(paragraph)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure(name: str, content_type: str, data: bytes, repeats: int) -> None:
    check_s, _ = timed(lambda: check_file(content_type, data), repeats)
    content = data_url(content_type, data)
    extract_s, document = timed(lambda: document_of(content), repeats)
    chunk_s, chunks = timed(lambda: split_text(document.text, 350, 0, document.boundaries()), repeats)
    tokens = sum(c.token_count for c in chunks)
    pages = document.pages or 0
    print(
        f"{name}: {len(data) / 1e6:.2f} MB, {pages} pages, {len(document.text):,} characters, "
        f"{len(document.sections)} sections"
    )
    print(f"  ingest check  {check_s * 1000:8.1f} ms")
    rate = f" ({pages / extract_s:,.0f} pages/s)" if pages else ""
    print(f"  extraction    {extract_s * 1000:8.1f} ms{rate}")
    print(
        f"  chunking      {chunk_s * 1000:8.1f} ms ({len(chunks)} chunks, {tokens:,} tokens, "
        f"{tokens / chunk_s / 1e6:.2f} M tokens/s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sections = manual_sections(args.corpus)
    pdf, used = build_pdf(sections, args.pages)
    print(f"{used} manual pages laid out on {args.pages} PDF pages")
    measure("PDF", PDF, pdf, args.repeats)
    measure("DOCX (the same manual pages)", DOCX, build_docx(sections[:used]), args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

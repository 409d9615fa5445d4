"""Real PDFs and DOCX files for the tests, built here (reportlab, python-docx): headings,
paragraphs, tables, several pages, bookmarks; an encrypted, a corrupt and a scanned-looking PDF.

A page is a list of blocks: ("h1" | "h2" | "h3", text), ("p", text) or ("table", rows).
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

Block = tuple[str, Any]

HEADING_SIZES = {"h1": 18, "h2": 14, "h3": 12}


def pdf_bytes(pages: list[list[Block]], *, password: str | None = None, bookmarks: bool = True) -> bytes:
    """A PDF with a text layer: each page's blocks drawn top to bottom, each heading a bookmark
    (outline entry) at its level when `bookmarks`; encrypted with a user `password` if given."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, encrypt=password, invariant=True)
    _, height = A4
    mark = 0
    for blocks in pages:
        y = height - 60
        for kind, value in blocks:
            if kind in HEADING_SIZES:
                pdf.setFont("Helvetica-Bold", HEADING_SIZES[kind])
                pdf.drawString(50, y, value)
                if bookmarks:
                    key = f"h{mark}"
                    mark += 1
                    pdf.bookmarkHorizontal(key, 0, y + 20)
                    pdf.addOutlineEntry(value, key, level=int(kind[1]) - 1)
                y -= HEADING_SIZES[kind] + 10
            elif kind == "p":
                pdf.setFont("Helvetica", 10)
                for line in textwrap.wrap(value, 95):
                    pdf.drawString(50, y, line)
                    y -= 13
                y -= 8
            elif kind == "table":
                pdf.setFont("Helvetica", 10)
                for row in value:
                    for column, cell in enumerate(row):
                        pdf.drawString(50 + 150 * column, y, str(cell))
                    y -= 14
                y -= 8
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def scanned_pdf_bytes(pages: int = 2) -> bytes:
    """A PDF whose pages hold only drawings: no text layer, as a scan without OCR."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=True)
    for page in range(pages):
        for i in range(20):
            pdf.rect(40 + i * 5, 100 + page * 10 + i * 30, 300, 12, fill=1)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def corrupt_pdf_bytes() -> bytes:
    """Starts like a PDF and is not one: no objects, no cross-reference table, no trailer."""
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"this is not a pdf body \x00\x01\x02\n" * 40


def docx_bytes(pages: list[list[Block]]) -> bytes:
    """A Word document: headings in Word's heading styles, paragraphs, tables, and a hard page
    break between pages."""
    import docx

    document = docx.Document()
    for number, blocks in enumerate(pages):
        if number:
            document.add_page_break()
        for kind, value in blocks:
            if kind in HEADING_SIZES:
                document.add_heading(value, level=int(kind[1]))
            elif kind == "p":
                document.add_paragraph(value)
            elif kind == "table":
                table = document.add_table(rows=len(value), cols=len(value[0]))
                for r, row in enumerate(value):
                    for c, cell in enumerate(row):
                        table.cell(r, c).text = str(cell)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def handbook() -> list[list[Block]]:
    """A three-page handbook: headings on two levels, a table, rare exact terms to search for."""
    return [
        [
            ("h1", "Field Service Handbook"),
            ("p", "This handbook explains how technicians service the Trekker robots in the field."),
            ("h2", "Safety first"),
            ("p", "Always isolate the battery pack before opening the chassis. Wear insulated gloves."),
        ],
        [
            ("h2", "Error codes"),
            ("p", "The controller reports faults with short codes. Code ZX-4471 means the lidar lost sync."),
            (
                "table",
                [
                    ["Code", "Meaning", "Action"],
                    ["ZX-4471", "lidar sync lost", "reseat cable"],
                    ["QP-0093", "motor overheat", "let it cool"],
                ],
            ),
        ],
        [
            ("h1", "Maintenance"),
            ("h2", "Monthly checks"),
            ("p", "Every month, inspect the drive belts and replace the air filter cartridge FC-221."),
        ],
    ]


def long_pdf_pages(count: int) -> list[list[Block]]:
    """`count` pages, each a chapter heading and distinct text (no two pages share a sentence)."""
    return [
        [
            ("h1", f"Chapter {n}"),
            ("p", f"Page {n} describes procedure number {n * 7919 % 100003}. " * 6),
            ("p", f"Reference code PG-{n:04d} applies only to this page, {n} of {count}."),
        ]
        for n in range(1, count + 1)
    ]


def cjk_pdf_bytes(lines: list[str]) -> bytes:
    """A one-page PDF of Chinese text (reportlab's built-in CID font, with its ToUnicode map: no
    font file needed), each line drawn on its own."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=True)
    pdf.setFont("STSong-Light", 12)
    for n, line in enumerate(lines):
        pdf.drawString(50, 780 - 18 * n, line)
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()

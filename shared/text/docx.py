"""DOCX (Word): checked at ingest with the standard library (a zip holding word/document.xml),
its text extracted while processing with python-docx: paragraphs and tables in document order,
heading styles as headings, page breaks counted for pages.

python-docx (and lxml) are imported only when a DOCX is processed.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

from shared.text.documents import HEADING, Document, DocumentError, HeadingPath, Section

__all__ = ["check_docx", "docx_document"]

# An Office file encrypted with a password is an OLE compound file, not a zip.
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# word/document.xml may inflate to at most this: a zip bomb is refused before it is parsed.
MAX_XML_BYTES = 256 * 1024 * 1024
_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\r\f\v]+")
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def check_docx(data: bytes) -> int:
    """The uncompressed size of a DOCX's main part; raises DocumentError (one sentence) for a
    file that is not a readable DOCX."""
    if data[:8] == _OLE_MAGIC:
        raise DocumentError(
            "The file is an encrypted or legacy (.doc) Word file; save it as .docx without a password."
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo("word/document.xml")
    except KeyError:
        raise DocumentError("The file is a zip but not a Word document (no word/document.xml).") from None
    except (zipfile.BadZipFile, ValueError, OSError):
        raise DocumentError("The DOCX cannot be read (it is not a valid zip file).") from None
    if info.file_size > MAX_XML_BYTES:
        raise DocumentError(f"The DOCX's text part is over {MAX_XML_BYTES // 2**20} MiB uncompressed.")
    return int(info.file_size)


def docx_document(data: bytes) -> Document:
    """The text of a DOCX: each paragraph a line, a blank line before each heading, each table
    row a line of cells joined by ` | `; a section at each heading (its path by heading level,
    `Title` as level 1), each on the page that the page breaks before it say."""
    check_docx(data)
    try:
        import docx

        document = docx.Document(io.BytesIO(data))
        blocks = list(document.iter_inner_content())
        # style id → heading level, read once: `paragraph.style` looks the document's styles up
        # again for every paragraph (seconds for a long document)
        levels = {style.style_id: _heading_level(style.name or "") for style in document.styles}
    except Exception as exc:
        raise DocumentError(f"The DOCX cannot be read ({type(exc).__name__}).") from None
    rendered = any(_rendered_breaks(block) for block in blocks)
    parts: list[str] = []
    sections: list[Section] = []
    path = HeadingPath()
    page, offset = 1, 0
    for block in blocks:
        page += _rendered_breaks(block) if rendered else 0
        text, level = _block_text(block, levels)
        if text:
            if level:
                titles = path.enter(level, text)
                if parts:
                    parts.append("\n")
                    offset += 1
                sections.append(Section(offset, page, titles, HEADING))
            parts.append(text + "\n")
            offset += len(text) + 1
        page += 0 if rendered else _explicit_breaks(block)
    pages = page if rendered or page > 1 else None
    return Document("".join(parts).strip("\n"), tuple(sections), pages)


def _heading_level(style_name: str) -> int:
    """1-6 for Word's heading styles (`Heading 1`…, `Title` as 1), else 0."""
    match = _HEADING_STYLE.match(style_name)
    if match:
        return min(int(match.group(1)), 6)
    return 1 if style_name.lower() == "title" else 0


def _block_text(block: Any, levels: dict[str, int]) -> tuple[str, int]:
    """(text, heading level or 0) of a paragraph or a table; `levels`: heading level by style id."""
    if hasattr(block, "rows"):
        rows = []
        for row in block.rows:
            cells = [_SPACES.sub(" ", cell.text).strip() for cell in row.cells]
            # merged cells repeat: keep each once
            unique = [c for i, c in enumerate(cells) if c and (i == 0 or c != cells[i - 1])]
            if unique:
                rows.append(" | ".join(unique))
        return "\n".join(rows), 0
    text = _SPACES.sub(" ", block.text).strip()
    style_id = block._p.style  # the paragraph's own style; none: the default (not a heading)
    return text, levels.get(style_id, 0) if style_id else 0


def _rendered_breaks(block: Any) -> int:
    """Page breaks Word recorded where it last laid the block out (paragraphs only)."""
    return len(block.rendered_page_breaks) if hasattr(block, "rendered_page_breaks") else 0


def _explicit_breaks(block: Any) -> int:
    """Hard page breaks (`<w:br w:type="page"/>`) inside a paragraph."""
    element = getattr(block, "_p", None)
    if element is None:
        return 0
    return sum(1 for br in element.iter(f"{_W}br") if br.get(f"{_W}type") == "page")

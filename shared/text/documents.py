"""Documents: an item's text as it is chunked, with its structure (headings, pages).

Every item is turned into a `Document` before chunking: its text, and the sections that start in
it, each with the page it is on and the path of headings above it. Where the text comes from:

- a file ingested as `content_base64` (PDF, DOCX) is stored as a data URL (RFC 2397,
  `data:application/pdf;base64,…`) in `content`, so it is deduplicated, updated and claimed like
  any text; `shared.text.pdf` and `shared.text.docx` extract it while the item is processed;
- HTML gives its visible text, its `<h1>`…`<h6>` as headings (`shared.text.html`);
- anything else is its own text, with Markdown's `#` headings (outside code fences) as headings.

Sections are where the chunker prefers to cut (a heading over a page break over a paragraph), and
what a chunk records: the section it starts in gives its page and heading path.
"""

from __future__ import annotations

import base64
import binascii
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import NexusError

__all__ = [
    "BINARY_TYPES",
    "DOCX",
    "FILE_TYPES",
    "HEADING",
    "PAGE",
    "PDF",
    "TEXT_TYPES",
    "Document",
    "DocumentError",
    "HeadingPath",
    "Section",
    "data_url",
    "heading_sections",
    "locate",
    "parse_data_url",
]

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
BINARY_TYPES = (PDF, DOCX)
TEXT_TYPES = ("text/html", "text/markdown", "text/plain")
FILE_TYPES = (*BINARY_TYPES, *TEXT_TYPES)

# Boundary strengths a section start gives the chunker (above a paragraph's, `atoms.PARAGRAPH`).
PAGE, HEADING = 4, 5

_DATA_URL = re.compile(r"data:([a-z0-9.+-]+/[a-z0-9.+-]+);base64,", re.IGNORECASE)
# An ATX heading: up to three spaces, 1-6 `#`, a space, the title (closing `#`s dropped).
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)
MAX_HEADING_CHARS = 200


class DocumentError(NexusError):
    """A file that cannot be read (corrupt, encrypted, no text): the message says why, in one
    sentence. Processing it again would fail the same way, so it is not retried."""

    retryable = False
    status = 422


@dataclass(frozen=True, slots=True)
class Section:
    start: int  # where it starts in `Document.text`
    page: int | None  # 1-based; None when the format has no pages
    headings: tuple[str, ...]  # the heading path, outermost first
    level: int = HEADING  # how strongly the chunker prefers to cut where it starts


@dataclass(frozen=True)
class Document:
    text: str
    sections: tuple[Section, ...] = ()
    pages: int | None = None  # a paged format's page count
    pages_without_text: tuple[int, ...] = ()  # pages with no text layer (scans), 1-based

    def boundaries(self) -> list[tuple[int, int]]:
        """(offset, level) of each section start inside the text: where chunks prefer to begin."""
        return [(s.start, s.level) for s in self.sections if 0 < s.start < len(self.text)]

    def outline(self) -> list[list[object]]:
        """The sections as JSON ([start, page, [headings…]]), as the store keeps them."""
        return [[s.start, s.page, list(s.headings)] for s in self.sections]


def locate(sections: Sequence[Section], starts: Sequence[int]) -> list[Section | None]:
    """For each offset in `starts`, the section it falls in (the last one starting at or before
    it), or None before the first."""
    offsets = [s.start for s in sections]
    found: list[Section | None] = []
    for start in starts:
        i = bisect_right(offsets, start) - 1
        found.append(sections[i] if i >= 0 else None)
    return found


def data_url(content_type: str, data: bytes) -> str:
    """A file as the text `content` keeps it: `data:<type>;base64,<data>`."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def parse_data_url(content: str) -> tuple[str, bytes] | None:
    """(content type, bytes) of a data URL of one of the BINARY_TYPES; None for other text.

    Raises DocumentError when such a URL's data is not base64."""
    if not content.startswith("data:"):
        return None
    match = _DATA_URL.match(content, 0, 200)
    if match is None or match.group(1).lower() not in BINARY_TYPES:
        return None
    try:
        return match.group(1).lower(), base64.b64decode(content[match.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise DocumentError(f"The {match.group(1)} data URL in content is not valid base64.") from None


def _clean_heading(title: str) -> str:
    title = re.sub(r"\s+", " ", title).strip()
    return title[:MAX_HEADING_CHARS]


class HeadingPath:
    """The headings in effect while a document is read in order: each heading met replaces those
    of its level and deeper."""

    def __init__(self) -> None:
        self._path: list[tuple[int, str]] = []  # (level, title) from the outermost

    def enter(self, level: int, title: str) -> tuple[str, ...]:
        """The path once a heading of `level` (1 outermost) titled `title` is met."""
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        self._path.append((level, _clean_heading(title)))
        return self.titles

    @property
    def titles(self) -> tuple[str, ...]:
        return tuple(title for _, title in self._path)


def heading_sections(text: str, headings: Sequence[tuple[int, int, str]]) -> tuple[Section, ...]:
    """Sections from headings given as (offset, level 1-6, title), in order of offset: each
    heading starts a section whose path is the titles of the headings it is under."""
    path = HeadingPath()
    return tuple(Section(start, None, path.enter(level, title)) for start, level, title in headings)


def markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """Markdown's ATX headings (`## Title`) as (offset, level, title), those inside fenced code
    blocks left out. Linear: one pass of each pattern."""
    if "#" not in text:
        return []
    fences = [m.start() for m in _FENCE.finditer(text)]
    found = []
    for match in _ATX.finditer(text):
        # inside a fence when an odd number of fence lines come before it
        if fences and bisect_right(fences, match.start()) % 2 == 1:
            continue
        found.append((match.start(), len(match.group(1)), match.group(2)))
    return found


def text_document(text: str) -> Document:
    """A text item: its text, with Markdown headings as sections."""
    return Document(text, heading_sections(text, markdown_headings(text)))

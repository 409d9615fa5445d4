"""HTML to text: the visible text of a page, paragraphs kept as blank lines, never its tags; and
`html_document`, the same text with the page's `<h1>`…`<h6>` as headings (how processing reads an
HTML item: never with its tags); `is_html`, whether an item's text is HTML."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from shared.text.documents import Document, heading_sections

_BLOCK_TAGS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "ul",
    ]
)
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "head"})
_HEADING_TAGS = {f"h{level}": level for level in range(1, 7)}
# Marks where a heading starts while the text is being cleaned up; NUL is never in stored content.
_MARK = "\x00"


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self.mark_headings = False
        self.headings: list[tuple[int, str]] = []  # (level, title), in order
        self._heading: tuple[int, int] | None = None  # (level, index in parts) of an open heading

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag == "pre":
            self._pre_depth += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"br", "td", "th", "li", "dd", "dt"} else "\n")
        if self.mark_headings and tag in _HEADING_TAGS and not self._skip_depth and self._heading is None:
            self.parts.append(_MARK)
            self.headings.append((_HEADING_TAGS[tag], ""))
            self._heading = (_HEADING_TAGS[tag], len(self.parts))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip_depth:
            self._skip_depth -= 1
        elif tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
        if self._heading is not None and _HEADING_TAGS.get(tag) == self._heading[0]:
            self.close_heading()
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"td", "th", "li", "dd", "dt"} else "\n")

    def close_heading(self) -> None:
        """Give the open heading its title: the text since it opened."""
        if self._heading is not None:
            level, first = self._heading
            self.headings[-1] = (level, html.unescape("".join(self.parts[first:])))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        self.parts.append(data if self._pre_depth else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """Visible text of an HTML document, with paragraph breaks kept as blank lines."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return _clean("".join(parser.parts))


def _clean(text: str) -> str:
    text = html.unescape(text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n[ \t]+", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _marked(markup: str) -> tuple[list[str], list[tuple[int, str]]]:
    """The visible text cut where each heading starts, and the headings (level, title)."""
    parser = _TextExtractor()
    parser.mark_headings = True
    parser.feed(markup)
    parser.close()
    parser.close_heading()  # one left open by malformed markup ends with the page
    marked = re.sub(_MARK + r"[ \t]+", _MARK, _clean("".join(parser.parts)))
    return marked.split(_MARK), parser.headings


def html_to_markdown_text(markup: str) -> str:
    """`html_to_text`, each heading's line starting with Markdown's `#`s for its level: how
    `nexus ingest` keeps an HTML file, so its headings survive as text."""
    pieces, headings = _marked(markup)
    return pieces[0] + "".join(
        ("#" * level + " " if title.strip() else "") + piece
        for piece, (level, title) in zip(pieces[1:], headings, strict=True)
    )


def html_document(markup: str) -> Document:
    """`html_to_text`'s text, with a section at each heading (`<h1>`…`<h6>`): the heading
    starts are marked while parsing and found again once the text is cleaned up."""
    pieces, headings = _marked(markup)
    text = "".join(pieces)
    starts, offset = [], len(pieces[0])
    for piece in pieces[1:]:
        starts.append(offset)
        offset += len(piece)
    found = [(start, level, title) for start, (level, title) in zip(starts, headings, strict=True)]
    return Document(text, heading_sections(text, [h for h in found if h[2].strip()]))


# Markup begins with a tag (after whitespace and comments): a document, or a fragment of one. Text
# that merely quotes a tag further on (Markdown with an HTML example) is left as it is.
_MARKUP_START = re.compile(
    r"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|main|article|section|div|p|h[1-6]|table|ul|ol"
    r"|span|a|b|i|em|strong|br|img|nav|header|footer|form|pre|blockquote|meta|link|title|style|script)\b",
    re.IGNORECASE | re.DOTALL,
)


def is_html(text: str) -> bool:
    """Whether `text` is HTML markup: it begins with an HTML tag (after whitespace and comments)."""
    return _MARKUP_START.match(text[:65536]) is not None

"""HTML to text: the visible text of a page, paragraphs kept as blank lines, never its tags; and
`document_text`, which gives any item's text as it is chunked and embedded (HTML without its tags)."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

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


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag == "pre":
            self._pre_depth += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"br", "td", "th", "li", "dd", "dt"} else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip_depth:
            self._skip_depth -= 1
        elif tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"td", "th", "li", "dd", "dt"} else "\n")

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        self.parts.append(data if self._pre_depth else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """Visible text of an HTML document, with paragraph breaks kept as blank lines."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n[ \t]+", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


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


def document_text(content: str) -> str:
    """An item's text as it is chunked and embedded: HTML's visible text, anything else as it is."""
    return html_to_text(content) if is_html(content) else content

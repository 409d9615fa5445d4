"""Metadata extracted from an item at ingest, without a tokenizer (ingest ships no tiktoken)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HTML = re.compile(r"<\s*(!doctype\s+html|html|body|head|div|p|h[1-6]|article|section|table)\b", re.I)
_MARKDOWN = re.compile(r"^(#{1,6}\s|\s*[-*+]\s|\s*\d+\.\s|```|>\s)|\[[^\]]+\]\([^)]+\)", re.M)
_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_LONG_WORD_PIECE = re.compile(r"\w{7}", re.UNICODE)
# Scripts written without spaces (CJK, kana, hangul, Thai): about a token per character.
_UNSPACED_CHAR = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@dataclass(frozen=True)
class ContentMetadata:
    """What ingest works out itself; the content's sha256 and character count are computed by
    the database as the row is written (`knowledge_items` trigger), so they are not here."""

    token_estimate: int
    content_type: str


def estimate_tokens(text: str) -> int:
    """Roughly cl100k's count: words and punctuation, plus long words split (~4 chars a piece).

    Within about ±20% on English prose; the exact count is taken when the item is chunked.
    """
    # Regex passes run in C: no Python loop per word on the ingest hot path (bench/README.md).
    unspaced = len(_UNSPACED_CHAR.findall(text))
    if not unspaced:
        return len(_WORDS.findall(text)) + len(_LONG_WORD_PIECE.findall(text))
    # Unspaced runs were counted as words and long-word pieces: count their characters instead.
    plain = _UNSPACED_CHAR.sub(" ", text)
    return len(_WORDS.findall(plain)) + len(_LONG_WORD_PIECE.findall(plain)) + unspaced


def detect_content_type(text: str, source: str = "") -> str:
    """`text/html`, `text/markdown`, `application/json` or `text/plain`, from the source's
    file extension when it has one, else from the text itself."""
    lowered = source.lower().rsplit("?", 1)[0]
    for suffix, kind in (
        (".html", "text/html"),
        (".htm", "text/html"),
        (".md", "text/markdown"),
        (".markdown", "text/markdown"),
        (".json", "application/json"),
        (".txt", "text/plain"),
    ):
        if lowered.endswith(suffix):
            return kind
    head = text[:4096]
    stripped = head.lstrip()
    if stripped[:1] in "{[" and stripped.rstrip()[-1:] in "}]" and len(text) == len(head):
        return "application/json"
    if _HTML.search(head):
        return "text/html"
    if len(_MARKDOWN.findall(head)) >= 2:
        return "text/markdown"
    return "text/plain"


def extract_metadata(
    content: str, source: str, content_type: str | None = None, token_estimate: int | None = None
) -> ContentMetadata:
    """The content's token estimate and type: as given (a file's, from `resolve_files`), else
    worked out from the text."""
    return ContentMetadata(
        token_estimate=estimate_tokens(content) if token_estimate is None else token_estimate,
        content_type=content_type or detect_content_type(content, source),
    )

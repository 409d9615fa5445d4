"""A document cut into chunks, each chunk's text led by the heading path it sits under.

A chunk from the middle of a section says nothing of what the section is about; its heading path
does ("Server Administration › Backup and Restore › Continuous Archiving"). With heading context
each chunk's text starts with that path and a blank line, so the path is embedded, full-text
indexed and paid for (it is part of the chunk's tokens) with the chunk. Room for it is kept: the
document is chunked to `max_tokens - HEADING_RESERVE` tokens, and a path longer than the
reserve loses its outer headings first, then the end of the innermost one. A
chunk whose text begins with its innermost heading does not repeat it. `char_start` and
`char_end` still locate the chunk's own text in the document.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import replace

from shared.text.atoms import first_tokens
from shared.text.chunking import Chunk, split_text
from shared.text.documents import Document, locate
from shared.text.tokenizer import get_encoding

__all__ = ["HEADING_RESERVE", "chunk_document"]

# Tokens of each chunk kept for its heading path (and the blank line after it).
HEADING_RESERVE = 24
SEPARATOR = " › "


def chunk_document(
    document: Document,
    max_tokens: int,
    overlap_tokens: int = 0,
    *,
    headings: bool = True,
    chunker: Callable[..., list[Chunk]] = split_text,
) -> list[Chunk]:
    """The document's chunks of at most `max_tokens` tokens, cut preferably at its sections; with
    `headings`, each led by its heading path, when the document has headings and chunks of
    `max_tokens - HEADING_RESERVE` are at least 32 tokens above the overlap; otherwise the chunks
    are not led. (Keeping room for the document's longest path instead, often fewer tokens, gave
    no faster run on the manual and moved retrieval by ±0.02: bench/README.md.)"""
    boundaries = document.boundaries()
    leads = _Leads()
    has_headings = any(section.headings for section in document.sections)
    budget = max_tokens - HEADING_RESERVE
    if not (headings and has_headings and budget >= 32 and overlap_tokens < budget):
        if boundaries:
            return chunker(document.text, max_tokens, overlap_tokens, boundaries)
        return chunker(document.text, max_tokens, overlap_tokens)
    chunks = chunker(document.text, budget, overlap_tokens, boundaries)
    places = locate(document.sections, [chunk.char_start for chunk in chunks])
    return [
        _led(chunk, section.headings if section is not None else (), leads, max_tokens)
        for chunk, section in zip(chunks, places, strict=True)
    ]


class _Leads:
    """Each heading path's lead (`_fitted`) and its token ids, worked out once per document."""

    def __init__(self) -> None:
        self.encode = get_encoding().encode_ordinary
        self._made: dict[tuple[str, ...], tuple[str, list[int]]] = {}

    def lead(self, titles: tuple[str, ...]) -> tuple[str, list[int]]:
        if titles not in self._made:
            lead = _fitted(list(titles))
            self._made[titles] = (lead, self.encode(lead))
        return self._made[titles]


def _led(chunk: Chunk, path: tuple[str, ...], leads: _Leads, max_tokens: int) -> Chunk:
    """The chunk with its text led by `path` (fitted to HEADING_RESERVE) and a blank line; as it
    is if the two would not fit in `max_tokens` after all."""
    if path and _first_line(chunk.text) == path[-1]:
        path = path[:-1]  # the chunk begins with its own heading
    if not path:
        return chunk
    lead, lead_ids = leads.lead(path)
    text = lead + chunk.text
    if chunk.text[:1].isspace() or not chunk.token_ids:
        ids = array("I", leads.encode(text))
    else:
        # a whitespace run ending in a line break is one piece whatever follows it: the ids join up
        ids = array("I", lead_ids)
        ids.extend(chunk.token_ids)
    if len(ids) > max_tokens:
        return chunk
    return replace(chunk, text=text, token_count=len(ids), token_ids=ids)


def _fitted(titles: list[str]) -> str:
    """`titles` joined, then a blank line, in at most HEADING_RESERVE tokens: outer titles are
    dropped first, then the innermost one is cut by its tokens."""
    encode = get_encoding().encode_ordinary
    while len(titles) > 1 and len(encode(SEPARATOR.join(titles) + "\n\n")) > HEADING_RESERVE:
        titles = titles[1:]
    joined = SEPARATOR.join(titles)
    ids = encode(joined)
    if len(ids) + 1 > HEADING_RESERVE:  # "\n\n" is one token
        _, characters = first_tokens(ids, HEADING_RESERVE - 2)
        joined = joined[:characters].rstrip()
    return joined + "\n\n"


def _first_line(text: str) -> str:
    """The text's first line without Markdown's `#` marks, whitespace normalised like a title."""
    line = text.lstrip().split("\n", 1)[0].lstrip("#")
    return " ".join(line.split())

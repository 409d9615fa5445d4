"""A document cut into chunks, each chunk's text led by the heading path it sits under.

A chunk from the middle of a section says nothing of what the section is about; its heading path
does ("Server Administration › Backup and Restore › Continuous Archiving"). With heading context
each chunk's text starts with that path and a blank line, so the path is embedded, full-text
indexed and paid for (it is part of the chunk's tokens) with the chunk. Room for it is kept: the
document is chunked to `max_tokens - HEADING_RESERVE` tokens, and a path longer than the reserve
loses its outer headings first, then the end of the innermost one. A chunk whose text begins with
its innermost heading does not repeat it. `char_start` and `char_end` still locate the chunk's
own text in the document.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
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
    `headings`, each led by its heading path (when the document has headings and the chunks
    leave room for them: `max_tokens - HEADING_RESERVE` above the overlap and at least 32)."""
    boundaries = document.boundaries()
    has_headings = any(section.headings for section in document.sections)
    budget = max_tokens - HEADING_RESERVE
    if not (headings and has_headings and budget >= 32 and overlap_tokens < budget):
        if boundaries:
            return chunker(document.text, max_tokens, overlap_tokens, boundaries)
        return chunker(document.text, max_tokens, overlap_tokens)
    chunks = chunker(document.text, budget, overlap_tokens, boundaries)
    places = locate(document.sections, [chunk.char_start for chunk in chunks])
    return [
        _led(chunk, section.headings if section is not None else (), max_tokens)
        for chunk, section in zip(chunks, places, strict=True)
    ]


def _led(chunk: Chunk, path: Sequence[str], max_tokens: int) -> Chunk:
    """The chunk with its text led by `path` (fitted to HEADING_RESERVE) and a blank line; as it
    is if the two would not fit in `max_tokens` after all."""
    titles = list(path)
    if titles and _first_line(chunk.text) == titles[-1]:
        titles.pop()  # the chunk begins with its own heading
    if not titles:
        return chunk
    lead = _fitted(titles)
    text = lead + chunk.text
    encode = get_encoding().encode_ordinary
    if chunk.text[:1].isspace() or not chunk.token_ids:
        ids = array("I", encode(text))
    else:
        # a whitespace run ending in a line break is one piece whatever follows it: the ids join up
        ids = array("I", encode(lead))
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

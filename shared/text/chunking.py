"""Split text into chunks of at most `max_tokens` cl100k tokens, at the best boundary available.

The text is first cut into atoms (`shared.text.atoms`: the boundaries, and why the time is
linear in the input for every script and shape of text); atoms are then packed greedily into
chunks, each cut at the strongest boundary that leaves it at least half full. Chunks are exact
slices of the text in order, so without overlap they concatenate back to the input; nothing is
lost. Every chunk's `token_ids` are exactly `encode_ordinary(chunk.text)`.

A chunk's exact count is usually known without encoding it again: cl100k encodes each piece of
its pre-tokenising pattern on its own, and where one atom ends with a line break and the next
starts with a non-space character, no piece can span the junction or change at it (no
alternative of the pattern looks behind, and a whitespace run that ends in a line break is one
piece whatever follows it). Across such junctions the atoms' token ids join up exactly; a chunk
with any other junction inside (between sentences or words), or with estimated ids, is encoded to
verify it.

Overlap (`overlap_tokens`) starts each chunk with up to that many tokens from the end of the
previous one, snapped to a word start. It re-embeds the overlapped text, so it is off by default.
A character is never split: one that alone takes more tokens than the limit (possible only for a
limit under 4) gets a chunk of its own, over the limit.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.text.atoms import Atom, first_tokens, split_into_atoms
from shared.text.tokenizer import get_encoding


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    token_count: int
    char_start: int
    char_end: int
    # The cl100k token ids of `text` (4 bytes each): what an embedding request can send instead
    # of the text, so the server need not tokenise it again.
    token_ids: array[int] = field(default_factory=lambda: array("I"), repr=False, compare=False)


def _best_cut(atoms: list[Atom], counts: list[int], first: int, last: int, min_tokens: int) -> int:
    """Index after which to cut atoms[first:last+1] (`counts`: their token counts): the strongest
    boundary leaving at least `min_tokens` in the chunk, the latest among equals."""
    best, best_level, total = last, -1, 0
    for i in range(first, last + 1):
        total += counts[i]
        if total >= min_tokens and atoms[i].level >= best_level:
            best, best_level = i, atoms[i].level
    return best


def chunk_text(text: str, max_tokens: int = 350, overlap_tokens: int = 0) -> list[str]:
    """The chunk texts of `text` (see `split_text` for positions and token counts)."""
    return [chunk.text for chunk in split_text(text, max_tokens, overlap_tokens)]


def split_text(
    text: str, max_tokens: int = 350, overlap_tokens: int = 0, boundaries: Sequence[tuple[int, int]] = ()
) -> list[Chunk]:
    """Chunks of at most `max_tokens` tokens covering `text` in order. `boundaries`: (offset,
    level) of section starts (`shared.text.documents`), sorted, where a cut is preferred to a
    paragraph's when it leaves the chunk at least half full.

    Raises ValueError when `overlap_tokens` is not smaller than `max_tokens`.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError("overlap_tokens must be at least 0 and smaller than max_tokens")
    if not text:
        return []
    budget = max_tokens - overlap_tokens
    pieces = split_into_atoms(text, budget, boundaries)
    spans = _pack(text, pieces, budget)
    return _finish(text, spans, max_tokens, overlap_tokens)


def _adds_up(text: str, atom: Atom) -> bool:
    """Whether the tokens of `atom` followed by the next atom are exactly both atoms' tokens."""
    return text[atom.end - 1] in "\r\n" and not text[atom.end].isspace()


def _pack(text: str, atoms: list[Atom], budget: int) -> list[tuple[int, int, array[int] | None]]:
    """Greedy packing of atoms into spans of at most `budget` (estimated) tokens: (start, end,
    token ids, or None when a junction inside or an estimate makes the atoms' ids inexact)."""
    spans = []
    counts = [len(atom.ids) for atom in atoms]
    first = 0
    min_tokens = budget // 2
    while first < len(atoms):
        total, last = 0, first
        while last < len(atoms) and total + counts[last] <= budget:
            total += counts[last]
            last += 1
        last = max(last, first + 1)  # an atom over the budget (one character) goes alone
        cut = last - 1 if last == len(atoms) else _best_cut(atoms, counts, first, last - 1, min_tokens)
        ids = None
        if all(_adds_up(text, atoms[i]) for i in range(first, cut)):
            ids = array("I")
            for atom in atoms[first : cut + 1]:
                if not atom.exact:
                    ids = None
                    break
                ids.extend(atom.ids)
        spans.append((atoms[first].start, atoms[cut].end, ids))
        first = cut + 1
    return spans


def _finish(
    text: str, spans: list[tuple[int, int, array[int] | None]], max_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    """Add overlap, verify token counts not known exactly, and shrink the rare chunk the
    estimate got wrong (a span shrunk again keeps a doubling margin below the limit)."""
    encoding = get_encoding()
    chunks: list[Chunk] = []
    pending = [(start, end, ids, 0) for start, end, ids in reversed(spans)]
    previous_tokens: list[int] = []
    while pending:
        start, end, ids, margin = pending.pop()
        if ids is not None and not overlap_tokens:
            chunks.append(Chunk(len(chunks), text[start:end], len(ids), start, end, ids))
            continue
        chunk_start = _overlap_start(text, start, previous_tokens, overlap_tokens) if chunks else start
        tokens = encoding.encode_ordinary(text[chunk_start:end])
        if len(tokens) > max_tokens and chunk_start < start and end - start == 1:
            chunk_start = start  # the overlap leaves no room for this one character: drop it
            tokens = encoding.encode_ordinary(text[start:end])
        if len(tokens) > max_tokens and end - start > 1:
            cut = _shrink(text, chunk_start, start, end, tokens, max_tokens - margin)
            pending.extend([(cut, end, None, 0), (start, cut, None, 2 * margin + 1)])
            continue
        chunks.append(
            Chunk(len(chunks), text[chunk_start:end], len(tokens), chunk_start, end, array("I", tokens))
        )
        previous_tokens = tokens
    return chunks


def _shrink(text: str, chunk_start: int, start: int, end: int, tokens: list[int], limit: int) -> int:
    """A cut in (start, end) that makes text[chunk_start:cut] fit in `limit` tokens, from the
    exact `tokens` of text[chunk_start:end]: after as many of them as fit, at a word start when
    possible."""
    _, characters = first_tokens(tokens, max(1, limit))
    fit = min(max(chunk_start + characters, start + 1), end - 1)
    word_start = text.rfind(" ", start + 1, fit + 1)
    return word_start if word_start > start else fit


def _overlap_start(text: str, start: int, previous_tokens: list[int], overlap_tokens: int) -> int:
    """Where a chunk starting at `start` begins once the previous chunk's tail is prepended."""
    if overlap_tokens == 0 or not previous_tokens:
        return start
    tail = get_encoding().decode_bytes(previous_tokens[-overlap_tokens:]).decode("utf-8", "ignore")
    begin = max(0, start - len(tail))
    # Snap forward to a word start so the overlap never begins mid-word.
    space = text.find(" ", begin, start)
    return space if space != -1 else start

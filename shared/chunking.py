"""Split text into chunks of at most `max_tokens` cl100k tokens, at the best boundary available.

Boundaries are preferred in this order: paragraph (a blank line), sentence, word, and only as a
last resort inside a word. Chunks are exact slices of the text in order, so without overlap
they concatenate back to the input; nothing is lost. Time is linear in the input: every
character is tokenised a bounded number of times (once per level it is split at, once more when
its chunk is verified).

A chunk's exact count is usually known without encoding it again: cl100k encodes each piece of
its pre-tokenising pattern on its own, and where one atom ends with a line break and the next
starts with a non-space character, no piece can span the junction or change at it (no
alternative of the pattern looks behind, and a whitespace run that ends in a line break is one
piece whatever follows it). Across such junctions the atoms' token ids join up exactly; a chunk
with any other junction inside (between sentences or words) is encoded to verify it.

Overlap (`overlap_tokens`) starts each chunk with up to that many tokens from the end of the
previous one, snapped to a word start. It re-embeds the overlapped text, so it is off by default.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field

from shared.tokens import get_encoding

PARAGRAPH, SENTENCE, WORD, HARD = 3, 2, 1, 0

# A paragraph ends after a line break followed by a blank line (the blank lines stay with it).
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends after . ! ? … (and closing quotes/brackets), before the whitespace that follows.
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?=\s)|\n")
# A word starts where whitespace begins: cl100k attaches a leading space to the following word.
_WORD_START = re.compile(r"(?<=\S)(?=\s)")


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


@dataclass
class _Atom:
    start: int
    end: int
    ids: array[int]  # 4 bytes per token: a long document's atoms stay small
    level: int  # boundary strength at the atom's end

    @property
    def tokens(self) -> int:
        return len(self.ids)


def _pieces(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Split text[start:end] after each match of `pattern` (matches end a piece)."""
    spans = []
    position = start
    for match in pattern.finditer(text, start, end):
        cut = match.end()
        if position < cut < end:
            spans.append((position, cut))
            position = cut
    spans.append((position, end))
    return spans


def _hard_split(text: str, start: int, end: int, max_tokens: int) -> list[_Atom]:
    """Split a single over-long word by characters, each piece within `max_tokens`."""
    encoding = get_encoding()
    atoms = []
    position = start
    while position < end:
        low, high = position + 1, end
        while low < high:  # the longest prefix that fits
            middle = (low + high + 1) // 2
            if len(encoding.encode_ordinary(text[position:middle])) <= max_tokens:
                low = middle
            else:
                high = middle - 1
        atoms.append(_Atom(position, low, array("I", encoding.encode_ordinary(text[position:low])), HARD))
        position = low
    atoms[-1].level = WORD
    return atoms


_LEVELS = ((PARAGRAPH, _PARAGRAPH_END), (SENTENCE, _SENTENCE_END), (WORD, _WORD_START))


def _atoms(text: str, start: int, end: int, max_tokens: int, depth: int = 0) -> list[_Atom]:
    """Pieces of text[start:end] no larger than `max_tokens`, split as coarsely as possible."""
    if depth == len(_LEVELS):
        return _hard_split(text, start, end, max_tokens)
    level, pattern = _LEVELS[depth]
    spans = _pieces(text, start, end, pattern)
    # One encode call per span: encode_ordinary_batch would start a thread pool on every call.
    encode = get_encoding().encode_ordinary
    encoded = [array("I", encode(text[a:b])) for a, b in spans]
    atoms: list[_Atom] = []
    for (a, b), ids in zip(spans, encoded, strict=True):
        if len(ids) <= max_tokens:
            atoms.append(_Atom(a, b, ids, level))
        else:
            inner = _atoms(text, a, b, max_tokens, depth + 1)
            inner[-1].level = max(inner[-1].level, level)
            atoms.extend(inner)
    return atoms


def _best_cut(atoms: list[_Atom], first: int, last: int, min_tokens: int) -> int:
    """Index after which to cut atoms[first:last+1]: the strongest boundary leaving at least
    `min_tokens` in the chunk, the latest among equals."""
    best, best_level, total = last, -1, 0
    for i in range(first, last + 1):
        total += atoms[i].tokens
        if total >= min_tokens and atoms[i].level >= best_level:
            best, best_level = i, atoms[i].level
    return best


def chunk_text(text: str, max_tokens: int = 350, overlap_tokens: int = 0) -> list[str]:
    """The chunk texts of `text` (see `split_text` for positions and token counts)."""
    return [chunk.text for chunk in split_text(text, max_tokens, overlap_tokens)]


def split_text(text: str, max_tokens: int = 350, overlap_tokens: int = 0) -> list[Chunk]:
    """Chunks of at most `max_tokens` tokens covering `text` in order.

    Raises ValueError when `overlap_tokens` is not smaller than `max_tokens`.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError("overlap_tokens must be at least 0 and smaller than max_tokens")
    if not text:
        return []
    budget = max_tokens - overlap_tokens
    atoms = _atoms(text, 0, len(text), budget)
    spans = _pack(text, atoms, budget)
    return _finish(text, spans, max_tokens, overlap_tokens)


def _adds_up(text: str, atom: _Atom) -> bool:
    """Whether the tokens of `atom` followed by the next atom are exactly both atoms' tokens."""
    return text[atom.end - 1] in "\r\n" and not text[atom.end].isspace()


def _pack(text: str, atoms: list[_Atom], budget: int) -> list[tuple[int, int, array[int] | None]]:
    """Greedy packing of atoms into spans of at most `budget` (estimated) tokens: (start, end,
    token ids, or None when a junction inside makes the atoms' ids only an estimate)."""
    spans = []
    first = 0
    min_tokens = budget // 2
    while first < len(atoms):
        total, last = 0, first
        while last < len(atoms) and total + atoms[last].tokens <= budget:
            total += atoms[last].tokens
            last += 1
        cut = last - 1 if last == len(atoms) else _best_cut(atoms, first, last - 1, min_tokens)
        exact = all(_adds_up(text, atoms[i]) for i in range(first, cut))
        ids = None
        if exact:
            ids = array("I")
            for atom in atoms[first : cut + 1]:
                ids.extend(atom.ids)
        spans.append((atoms[first].start, atoms[cut].end, ids))
        first = cut + 1
    return spans


def _finish(
    text: str, spans: list[tuple[int, int, array[int] | None]], max_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    """Add overlap, verify token counts not known exactly, and shrink the rare chunk the
    estimate got wrong."""
    encoding = get_encoding()
    chunks: list[Chunk] = []
    pending = list(reversed(spans))
    previous_tokens: list[int] = []
    while pending:
        start, end, ids = pending.pop()
        if ids is not None and not overlap_tokens:
            chunks.append(Chunk(len(chunks), text[start:end], len(ids), start, end, ids))
            continue
        chunk_start = _overlap_start(text, start, previous_tokens, overlap_tokens) if chunks else start
        tokens = encoding.encode_ordinary(text[chunk_start:end])
        if len(tokens) > max_tokens:
            cut = _shrink(text, chunk_start, start, end, max_tokens)
            pending.extend([(cut, end, None), (start, cut, None)])
            continue
        chunks.append(
            Chunk(len(chunks), text[chunk_start:end], len(tokens), chunk_start, end, array("I", tokens))
        )
        previous_tokens = tokens
    return chunks


def _shrink(text: str, chunk_start: int, start: int, end: int, max_tokens: int) -> int:
    """A cut in (start, end) that makes text[chunk_start:cut] fit, at a word start when possible."""
    encoding = get_encoding()
    low, high = start + 1, end - 1
    while low < high:
        middle = (low + high + 1) // 2
        if len(encoding.encode_ordinary(text[chunk_start:middle])) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    word_start = text.rfind(" ", start + 1, low + 1)
    return word_start if word_start > start else max(low, start + 1)


def _overlap_start(text: str, start: int, previous_tokens: list[int], overlap_tokens: int) -> int:
    """Where a chunk starting at `start` begins once the previous chunk's tail is prepended."""
    if overlap_tokens == 0 or not previous_tokens:
        return start
    tail = get_encoding().decode_bytes(previous_tokens[-overlap_tokens:]).decode("utf-8", "ignore")
    begin = max(0, start - len(tail))
    # Snap forward to a word start so the overlap never begins mid-word.
    space = text.find(" ", begin, start)
    return space if space != -1 else start

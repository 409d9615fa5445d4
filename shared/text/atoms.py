"""Text cut into atoms: pieces of at most a budget of cl100k tokens, ending at the strongest
boundary available (paragraph, sentence, word, else inside a word), with their token ids.

Boundaries are preferred in this order: paragraph (a blank line), sentence, word, and only as a
last resort inside a word. A sentence ends after `.` `!` `?` `…` (and closing quotes/brackets)
followed by whitespace; after `。` `！` `？` (and closing quotes/brackets) whatever follows, as
Chinese and Japanese put no space between sentences; and at a line break.

Time is linear in the input for every script and shape of text (prose, Chinese, Japanese or Thai
without spaces, base64, minified JSON, runs of punctuation or whitespace, emoji, CRLF):

- Every character is tokenised a bounded number of times: once per level it is split at, once
  more when it is cut inside a word, and once more when its chunk is verified. A piece that
  cannot fit (more characters than the budget × the longest token's bytes) is split without
  being encoded first; a piece alone at its level keeps the ids it already has.
- tiktoken is never handed an unbounded piece: its BPE is slow on one long pre-token piece, so a
  run of `_RUN_CHARS` or more non-space (or space) characters is encoded in windows of at most
  `_RUN_CHARS`, cut after a word character followed by another kind when one is near the end.
  Ids across a window's seam are an estimate, so a chunk holding one is encoded again to verify
  it. No other call is longer than a chunk can be (the budget × the longest token's bytes).
- A piece with no boundary inside is cut by its token ids, never by searching prefixes: the ids
  are taken a budget at a time, backed off to a token boundary that is a character boundary (a
  token may hold part of a UTF-8 character), and each cut is encoded alone once for its exact
  ids. Encoded alone, a cut can take more tokens than inside the longer text (BPE changes at the
  seam); it is then shortened by its own ids, with a margin that doubles on each retry. A
  verified chunk over the limit is shortened the same way, to a word start when there is one.
- The boundary patterns never backtrack over a run: their repeats are possessive, and a run of
  Latin sentence punctuation is only tried from its first character.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from shared.text.tokenizer import get_encoding

PARAGRAPH, SENTENCE, WORD, HARD = 3, 2, 1, 0

# A paragraph ends after a line break followed by a blank line (the blank lines stay with it).
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends after . ! ? … (and closing quotes/brackets) before whitespace, or after 。！？
# (and closing quotes/brackets) before anything, or at a line break. Possessive repeats and the
# look-behind keep a long run of punctuation from being matched again from each of its characters.
_SENTENCE_END = re.compile(
    r"(?<![.!?\u2026])[.!?\u2026]++[\"'\u201d\u2019)\]]*+(?=\s)"
    r"|[\u3002\uff01\uff1f]++[\"'\u201d\u2019)\]\u300d\u300f\u3011\uff09]*+"
    r"|\n"
)
# A word starts where whitespace begins: cl100k attaches a leading space to the following word.
_WORD_START = re.compile(r"(?<=\S)(?=\s)")

# Whitespace as cl100k's pattern sees it (Unicode White_Space; Python's \s also has \x1c-\x1f).
_SPACE = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A pre-token piece of cl100k lies within a run of non-space characters (plus one character
# before it and line breaks after it) or within a run of spaces, so bounding runs bounds pieces.
_RUN_CHARS = 1024
_LONG_RUN = re.compile(
    rf"(?<![^{_SPACE}])[^{_SPACE}]{{{_RUN_CHARS},}}|(?<![{_SPACE}])[{_SPACE}]{{{_RUN_CHARS},}}"
)
# A space next to a non-space character: a block without one is all spaces or has no space.
_MIXED = re.compile(f"[{_SPACE}][^{_SPACE}]|[^{_SPACE}][{_SPACE}]")
# Where a window inside a long run is best cut: after a word character followed by another kind.
_CLASS_CHANGE = re.compile(r"(?<=\w)(?=\W)")
# The longest cl100k token, in bytes: a text of more characters than budget × this cannot fit.
_MAX_TOKEN_BYTES = 128


@dataclass(slots=True)
class Atom:
    start: int
    end: int
    ids: array[int]  # 4 bytes per token: a long document's atoms stay small
    level: int  # boundary strength at the atom's end
    exact: bool = True  # False: `ids` are an estimate (a long run encoded in windows)

    @property
    def tokens(self) -> int:
        return len(self.ids)


class Source:
    """The text being split, with its runs of `_RUN_CHARS` or more characters without a break."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.encode = get_encoding().encode_ordinary
        self.runs = _long_runs(text)
        self.run_ends = [end for _, end in self.runs]

    def ids(self, start: int, end: int) -> tuple[array[int], bool]:
        """The token ids of text[start:end] and whether they are exact. They are unless the slice
        holds a long run: that is encoded in windows, which gives an estimate."""
        runs = self._long_runs(start, end) if self.runs and end - start >= _RUN_CHARS else None
        if not runs:
            return array("I", self.encode(self.text[start:end])), True
        ids: array[int] = array("I")
        position = start
        for run_start, run_end in runs:
            if position < run_start:
                ids.extend(self.encode(self.text[position:run_start]))
            for window_start, window_end in _windows(self.text, run_start, run_end):
                ids.extend(self.encode(self.text[window_start:window_end]))
            position = run_end
        if position < end:
            ids.extend(self.encode(self.text[position:end]))
        return ids, False

    def encode_spans(
        self, spans: list[tuple[int, int]], budget: int
    ) -> tuple[list[array[int] | None], list[bool]]:
        """The ids of each span and whether they are exact, as `ids` gives them; None for a span
        of more characters than `budget` tokens can hold, which is not encoded."""
        too_long = budget * _MAX_TOKEN_BYTES
        if self.runs:
            pairs = [self.ids(a, b) if b - a <= too_long else (None, False) for a, b in spans]
            return [ids for ids, _ in pairs], [exact for _, exact in pairs]
        encode, text = self.encode, self.text
        encoded = [array("I", encode(text[a:b])) if b - a <= too_long else None for a, b in spans]
        return encoded, [True] * len(spans)

    def _long_runs(self, start: int, end: int) -> list[tuple[int, int]]:
        """The long runs inside text[start:end], clipped to it, that are still long."""
        found = []
        i = bisect_right(self.run_ends, start)  # the first run ending after start
        while i < len(self.runs) and self.runs[i][0] < end:
            run_start, run_end = max(self.runs[i][0], start), min(self.runs[i][1], end)
            if run_end - run_start >= _RUN_CHARS:
                found.append((run_start, run_end))
            i += 1
        return found


def _long_runs(text: str) -> list[tuple[int, int]]:
    """The runs of `_RUN_CHARS` or more non-space (or space) characters in `text`, in order.

    A run that long holds an aligned block of half that length with no space (or only spaces),
    and such a run ends inside the next block that is mixed, so only the regions around unmixed
    blocks are searched; a mixed block is told by a search that stops at its first word."""
    half = _RUN_CHARS // 2
    runs: list[tuple[int, int]] = []
    block = 0
    blocks = len(text) // half
    while block < blocks:
        first = block
        while block < blocks and not _MIXED.search(text, block * half, (block + 1) * half):
            block += 1
        if block > first:
            start, end = max(0, (first - 1) * half), min(len(text), (block + 1) * half)
            runs.extend(match.span() for match in _LONG_RUN.finditer(text, start, end))
        block += 1
    return runs


def _windows(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """text[start:end] cut into windows of at most `_RUN_CHARS`, each cut after a word character
    followed by another kind when there is one in the window's last quarter."""
    windows = []
    position = start
    while end - position > _RUN_CHARS:
        limit = position + _RUN_CHARS
        cut = limit
        for match in _CLASS_CHANGE.finditer(text, limit - _RUN_CHARS // 4, limit):
            cut = match.start()
        windows.append((position, cut))
        position = cut
    windows.append((position, end))
    return windows


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


def _partial_tail(data: bytes, end: int) -> int:
    """How many bytes at the end of data[:end] (valid UTF-8 cut anywhere) start a character
    that they do not finish: 0 when `end` is a character boundary."""
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:  # the lead byte of a character of 2, 3 or 4 bytes
            size = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if back < size else 0
    return 0


def first_tokens(ids: Sequence[int], count: int) -> tuple[int, int]:
    """(tokens, characters): the most tokens, at most `count`, from the start of `ids` (the ids of
    a text starting at a character boundary) that end at a character boundary (a token may hold
    part of a UTF-8 character), and the number of characters they hold. At least one character,
    which may take more than `count` tokens."""
    encoding = get_encoding()
    taken = min(count, len(ids))
    data = encoding.decode_bytes(list(ids[: taken + 4]))
    end = len(data) - len(encoding.decode_bytes(list(ids[taken : taken + 4])))
    while taken > 1 and _partial_tail(data, end):
        taken -= 1
        end -= len(encoding.decode_single_token_bytes(ids[taken]))
    while _partial_tail(data, end) and taken < len(ids):  # the first character is not complete yet
        end += len(encoding.decode_single_token_bytes(ids[taken]))
        taken += 1
    return taken, len(data[:end].decode("utf-8", "replace"))


def _fit_prefix(source: Source, start: int, end: int, ids: array[int], limit: int) -> tuple[int, array[int]]:
    """(end, exact ids) of a prefix of text[start:end] within `limit` tokens, from `ids`, the exact
    ids of text[start:end]. Each try cuts after as many of the previous try's ids as fit, less a
    margin that doubles, and always at least one character shorter, so a few bounded encodes
    suffice; one character is kept even if it does not fit."""
    margin = 0
    while len(ids) > limit and end - start > 1:
        _, characters = first_tokens(ids, max(1, limit - margin))
        end = start + min(characters, end - start - 1)
        ids = array("I", source.encode(source.text[start:end]))
        margin = 2 * margin + 1
    return end, ids


def _hard_split(source: Source, start: int, end: int, budget: int, ids: array[int] | None) -> list[Atom]:
    """Cut text[start:end], a piece with no boundary inside, into atoms of at most `budget`
    tokens by its token ids (`ids`, exact or estimated, when already known)."""
    if ids is None:
        ids, _ = source.ids(start, end)
    atoms = []
    head: list[int] = []  # exact ids of text from `position` not in `ids` (after a shortened cut)
    position, index = start, 0
    while position < end:
        window = head[: budget + 4]
        window.extend(ids[index : index + budget + 4 - len(window)])
        taken, characters = first_tokens(window, budget)
        cut = position + characters
        exact = array("I", source.encode(source.text[position:cut]))
        if len(exact) > budget:
            cut, exact = _fit_prefix(source, position, cut, exact, budget)
        from_head = min(taken, len(head))
        head = head[from_head:]
        index += taken - from_head
        if cut < position + characters:
            head[:0] = source.encode(source.text[cut : position + characters])
        atoms.append(Atom(position, cut, exact, HARD))
        position = cut
    atoms[-1].level = WORD
    return atoms


_LEVELS = ((PARAGRAPH, _PARAGRAPH_END), (SENTENCE, _SENTENCE_END), (WORD, _WORD_START))


def _level_atoms(
    source: Source, spans: list[tuple[int, int]], level: int, budget: int, depth: int
) -> list[Atom]:
    """Atoms of `spans`, pieces ending at boundaries of `level` (found at `_LEVELS[depth]`): one
    atom for each piece that fits in `budget`, the atoms of the next levels for the others."""
    atoms: list[Atom] = []
    encoded, exactness = source.encode_spans(spans, budget)
    for (start, end), ids, exact in zip(spans, encoded, exactness, strict=True):
        if ids is not None and len(ids) <= budget:
            atoms.append(Atom(start, end, ids, level, exact))
            continue
        inner = _split(source, start, end, budget, depth + 1, ids)
        inner[-1].level = max(inner[-1].level, level)
        atoms.extend(inner)
    return atoms


def _split(
    source: Source, start: int, end: int, budget: int, depth: int, ids: array[int] | None
) -> list[Atom]:
    """Atoms of text[start:end], over `budget`, split at the first level from `depth` on with a
    boundary inside it (`ids`: its token ids when known)."""
    for d in range(depth, len(_LEVELS)):
        level, pattern = _LEVELS[d]
        spans = _pieces(source.text, start, end, pattern)
        if len(spans) > 1:
            return _level_atoms(source, spans, level, budget, d)
    return _hard_split(source, start, end, budget, ids)


def split_into_atoms(text: str, budget: int, boundaries: Sequence[tuple[int, int]] = ()) -> list[Atom]:
    """Pieces of `text` no larger than `budget`, split as coarsely as possible. `boundaries`:
    (offset, level) where a section starts (a heading, a page; levels above PARAGRAPH), sorted:
    the text is cut there first, and the atom before each gets that level."""
    source = Source(text)
    atoms: list[Atom] = []
    start = 0
    for offset, level in [*boundaries, (len(text), PARAGRAPH)]:
        if not start < offset <= len(text):
            continue
        section = _level_atoms(source, _pieces(text, start, offset, _PARAGRAPH_END), PARAGRAPH, budget, 0)
        if offset < len(text):
            section[-1].level = max(section[-1].level, level)
        atoms.extend(section)
        start = offset
    return atoms

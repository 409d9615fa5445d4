"""Chunking: never over the limit, nothing lost, order kept, the best boundary chosen."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.text.tokenizer
from shared.text import atoms, chunking
from shared.text.chunking import split_text
from shared.text.tokenizer import CL100K_SHA256, count_tokens, get_encoding

PARAGRAPH = "The dock contacts must be cleaned every week. Inspect the copper for pitting and heat marks."

texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=0,
    max_size=3000,
)
prose = st.lists(
    st.sampled_from(
        [
            "Lidar scanners need a clean lens. ",
            "Ünïcödé — “quotes” and €uros. ",
            "汉字和日本語のテキスト。",
            "emoji 🚀🔥 in text! ",
            "\n\n",
            "\n",
            "A verylongwordwithoutanyspacesthatgoesonandonandon" * 3 + " ",
            "1234567890" * 5,
            "    indented code\n",
        ]
    ),
    max_size=200,
).map("".join)


def test_tokenizer_is_the_official_cl100k_loaded_offline() -> None:
    encoding = get_encoding()
    assert encoding.name == "cl100k_base"
    assert encoding.encode_ordinary("hello world") == [15339, 1917]
    assert CL100K_SHA256.startswith("223921b7") and CL100K_SHA256.endswith("65b2a7")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(texts, prose), max_tokens=st.integers(min_value=8, max_value=400))
def test_chunks_cover_the_text_in_order_within_the_limit(text: str, max_tokens: int) -> None:
    chunks = split_text(text, max_tokens)
    assert "".join(c.text for c in chunks) == text
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.text == text[chunk.char_start : chunk.char_end]
        assert chunk.token_count == count_tokens(chunk.text) <= max_tokens
        assert list(chunk.token_ids) == get_encoding().encode_ordinary(chunk.text)
        assert chunk.text
    assert [c.char_start for c in chunks] == sorted(c.char_start for c in chunks)


# Characters where cl100k's pre-tokenising pattern behaves differently: line breaks, other
# whitespace (incl. Unicode spaces), letters, digits, apostrophes, punctuation and symbols.
_junction_chars = st.sampled_from(list("\n\r \t\u00a0\u2028\u3000aZé漢'sdtl1234567890.,!?-_()[]\"“€🚀"))
_junction_side = st.lists(_junction_chars, max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    before=_junction_side,
    line_break=st.sampled_from(["\n", "\r", "\r\n", "\n\n"]),
    first=_junction_chars.filter(lambda c: not c.isspace()),
    after=_junction_side,
)
def test_tokens_add_up_across_a_line_break_followed_by_a_non_space(
    before: str, line_break: str, first: str, after: str
) -> None:
    # The chunker sums its atoms' counts across such junctions instead of encoding the chunk.
    encode = get_encoding().encode_ordinary
    head, tail = before + line_break, first + after
    assert encode(head + tail) == encode(head) + encode(tail)


@settings(max_examples=80, deadline=None)
@given(text=prose, max_tokens=st.integers(min_value=20, max_value=300), data=st.data())
def test_overlap_repeats_the_previous_tail_and_still_covers_everything(
    text: str, max_tokens: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(min_value=1, max_value=max_tokens // 2))
    chunks = split_text(text, max_tokens, overlap)
    if not text:
        assert chunks == []
        return
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    for previous, chunk in pairwise(chunks):
        assert chunk.char_start <= previous.char_end  # contiguous or overlapping: nothing skipped
        assert chunk.char_end > previous.char_end  # always moving forward
    assert all(c.token_count <= max_tokens for c in chunks)
    assert all(list(c.token_ids) == get_encoding().encode_ordinary(c.text) for c in chunks)


def test_paragraph_boundaries_are_preferred() -> None:
    paragraphs = [f"Paragraph {i}. " + PARAGRAPH * 3 for i in range(12)]
    text = "\n\n".join(paragraphs)
    chunks = split_text(text, 200)
    assert len(chunks) > 1
    for chunk in chunks[:-1]:
        assert chunk.text.endswith("\n\n"), repr(chunk.text[-40:])


def test_a_long_paragraph_splits_at_sentence_ends() -> None:
    text = " ".join(f"Sentence number {i} talks about charging docks and lidar." for i in range(200))
    chunks = split_text(text, 100)
    assert len(chunks) > 5
    for chunk in chunks[:-1]:
        assert chunk.text.rstrip().endswith("."), repr(chunk.text[-30:])


def test_a_giant_word_is_cut_without_exceeding_the_limit() -> None:
    text = "x" * 5000 + " tail"
    chunks = split_text(text, 50)
    assert "".join(c.text for c in chunks) == text
    assert max(c.token_count for c in chunks) <= 50


def test_invalid_overlap_is_rejected() -> None:
    with pytest.raises(ValueError, match="overlap"):
        split_text("text", 10, 10)


# --- every kind of text: limits, order, coverage and exact ids, in linear work ---------------------

_CJK = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可"
    "日本語のテキストですカタカナ"
)
_THAI = "".join(chr(c) for c in range(0x0E01, 0x0E5C) if chr(c).isprintable())
# Emoji with ZWJ sequences, skin tones, flags (and a lone regional indicator) and variation selectors.
_EMOJI = ["🚀", "🔥", "👨‍👩‍👧‍👦", "🧑🏽‍💻", "🇯🇵", "🇫🇷", "🏳️‍🌈", "❤️", "👍🏿", "\u200d", "\ufe0f", "🇺", " ", "a"]
_CRLF = ["Lidar scanners need a clean lens.", " ", "\r\n", "\r\n\r\n", "\r", "Next!", "  \r\n", "x" * 300]
_MIXED = [
    "汉字",
    "テキスト。",
    "ไทย",
    "русский ",
    "العربية",
    "١٢٣",
    "🚀",
    "👨‍👩‍👧",
    "word ",
    "3.14",
    "\r\n",
    "\t",
    "。",
    "!!",
]


def _repeated(alphabet: str, max_unit: int = 40, max_times: int = 300) -> st.SearchStrategy[str]:
    """A unit of `alphabet` repeated: long runs without a break, more often than plain text gives."""
    unit = st.text(alphabet=alphabet, min_size=1, max_size=max_unit)
    return st.builds(lambda u, n: u * n, unit, st.integers(min_value=1, max_value=max_times))


def _seeded(make: Any, max_size: int = 8000) -> st.SearchStrategy[str]:
    """Long texts of one kind for sure: `make(rng, size)` with a drawn seed and size."""
    return st.builds(
        lambda seed, size: make(random.Random(seed), size), st.integers(), st.integers(0, max_size)
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=10), children, max_size=8)
    ),
    max_leaves=150,
)

KINDS: dict[str, st.SearchStrategy[str]] = {
    "cjk sentences": st.lists(
        st.tuples(
            st.text(alphabet=_CJK, min_size=1, max_size=60),
            st.sampled_from(["。", "！", "？", "，", "」。", "", "。\n", "。」"]),
        ),
        max_size=120,
    ).map(lambda parts: "".join(a + b for a, b in parts)),
    "cjk without punctuation": st.one_of(
        st.text(alphabet=_CJK, max_size=3000),
        _repeated(_CJK),
        _seeded(lambda rng, size: "".join(rng.choices(_CJK, k=size))),
    ),
    "thai": st.one_of(
        st.text(alphabet=_THAI + " ", max_size=3000),
        _repeated(_THAI),
        _seeded(lambda rng, size: "".join(rng.choices(_THAI + "     ", k=size))),
    ),
    "base64": st.one_of(
        st.binary(max_size=6000).map(lambda data: base64.b64encode(data).decode()),
        _seeded(lambda rng, size: base64.b64encode(rng.randbytes(size)).decode()),
    ),
    "minified json": st.one_of(
        st.tuples(_json_values, st.booleans()).map(
            lambda v: json.dumps(v[0], separators=(",", ":"), ensure_ascii=v[1])
        ),
        _seeded(
            lambda rng, size: json.dumps(
                [{"id": rng.randrange(10**9), "name": rng.choice(_MIXED), "ok": rng.random() < 0.5}]
                * (size // 40),
                separators=(",", ":"),
                ensure_ascii=rng.random() < 0.5,
            )
        ),
    ),
    "punctuation runs": st.lists(
        st.tuples(st.sampled_from(list(".!?…。！？\"'-=*#~)]”’ \n\r\t\u3000")), st.integers(1, 2500)),
        min_size=1,
        max_size=6,
    ).map(lambda runs: "".join(char * times for char, times in runs)),
    "emoji": st.one_of(
        st.lists(st.sampled_from(_EMOJI), max_size=1500).map("".join),
        _seeded(lambda rng, size: "".join(rng.choices(_EMOJI, k=size // 2))),
    ),
    "mixed scripts": st.one_of(
        st.lists(st.sampled_from(_MIXED), max_size=600).map("".join),
        _repeated("".join(_MIXED)),
        _seeded(lambda rng, size: "".join(rng.choices(_MIXED, k=size // 3))),
    ),
    "crlf": st.one_of(
        st.lists(st.sampled_from(_CRLF), max_size=400).map("".join),
        _seeded(lambda rng, size: "".join(rng.choices(_CRLF, k=size // 8))),
    ),
}


def assert_chunks_cover(text: str, chunks: list[chunking.Chunk], max_tokens: int) -> None:
    """In order, exact slices, nothing lost, within the limit, ids exactly encode_ordinary's."""
    encode = get_encoding().encode_ordinary
    assert "".join(chunk.text for chunk in chunks) == text
    position = 0
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.char_start == position < chunk.char_end
        assert chunk.text == text[chunk.char_start : chunk.char_end]
        ids = encode(chunk.text)
        assert list(chunk.token_ids) == ids
        assert chunk.token_count == len(ids) <= max_tokens
        position = chunk.char_end


@pytest.mark.parametrize("kind", list(KINDS))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data(), max_tokens=st.integers(min_value=8, max_value=400))
def test_every_kind_of_text_chunks_in_order_within_the_limit(
    kind: str, data: st.DataObject, max_tokens: int
) -> None:
    text = data.draw(KINDS[kind], label=kind)
    assert_chunks_cover(text, split_text(text, max_tokens), max_tokens)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(text=st.one_of(*KINDS.values()), max_tokens=st.integers(min_value=20, max_value=300), data=st.data())
def test_overlap_on_every_kind_of_text(text: str, max_tokens: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(min_value=1, max_value=max_tokens // 2))
    chunks = split_text(text, max_tokens, overlap)
    encode = get_encoding().encode_ordinary
    if not text:
        assert chunks == []
        return
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    for previous, chunk in pairwise(chunks):
        assert chunk.char_start <= previous.char_end < chunk.char_end
    for chunk in chunks:
        assert chunk.text == text[chunk.char_start : chunk.char_end]
        assert list(chunk.token_ids) == encode(chunk.text) and chunk.token_count <= max_tokens


def test_chinese_and_japanese_sentences_end_without_a_following_space() -> None:
    sentences = [
        f"第{i}句话讲的是充电桩和激光雷达的维护" + ["。", "！", "？", "。」", "です。"][i % 5]
        for i in range(120)
    ]
    text = "".join(sentences)
    chunks = split_text(text, 60)
    assert len(chunks) > 5
    assert_chunks_cover(text, chunks, 60)
    for chunk in chunks[:-1]:
        assert chunk.text.endswith(("。", "！", "？", "。」")), chunk.text[-10:]


def test_latin_sentence_ends_still_need_a_following_space() -> None:
    text = "Version 3.14 is out. See e.g.the notes!Really? Yes.\u3002Done。Next"
    ends = [match.end() for match in atoms._SENTENCE_END.finditer(text)]
    assert ends == [
        text.index("out.") + 4,
        text.index("Really?") + 7,
        text.index("Yes.\u3002") + 5,
        text.index("Done。") + 5,
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", " ", "\n", "ab ", "漢", "\x1c", "\u3000", "é"]), st.integers(1, 1300)
        ),
        max_size=8,
    ).map(lambda runs: "".join(unit * times for unit, times in runs))
)
def test_long_runs_are_found_by_their_blocks_as_by_the_full_search(text: str) -> None:
    assert atoms._long_runs(text) == [match.span() for match in atoms._LONG_RUN.finditer(text)]


def test_no_token_is_longer_than_the_chunker_assumes() -> None:
    encoding = get_encoding()
    longest = 0
    for token in range(encoding.n_vocab):
        try:
            longest = max(longest, len(encoding.decode_single_token_bytes(token)))
        except KeyError:  # ids between the ranks and the special tokens
            continue
    assert longest <= atoms._MAX_TOKEN_BYTES


class CountingEncoding:
    """The encoding, counting the characters handed to `encode_ordinary` and the longest call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.characters = 0
        self.longest = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.characters += len(text)
        self.longest = max(self.longest, len(text))
        return self.inner.encode_ordinary(text)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingEncoding]:
    proxy = CountingEncoding(get_encoding())
    monkeypatch.setattr(shared.text.tokenizer, "_encoding", proxy)
    yield proxy


def _megabyte(kind: str) -> str:
    """About 1 MB (UTF-8) of one kind of text, the same every run."""
    rng = random.Random(kind)
    size = 1_000_000
    if kind == "english":
        return "\n\n".join(f"Section {i}. " + PARAGRAPH * (1 + i % 7) for i in range(1700))
    if kind == "cjk sentences":
        return "".join("".join(rng.choices(_CJK, k=rng.randint(8, 40))) + "。" for _ in range(11_000))
    if kind == "cjk run":
        return "".join(rng.choices(_CJK, k=size // 3))
    if kind == "thai":
        return "".join(rng.choices(_THAI, k=size // 3))
    if kind == "base64":
        return base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
    if kind == "minified json":
        records = [{"id": rng.randrange(10**9), "name": f"n{i}", "tags": ["a", "b"]} for i in range(22_000)]
        return json.dumps(records, separators=(",", ":"))
    if kind == "emoji":
        return "".join(rng.choices(_EMOJI, k=size // 5))
    if kind == "mixed crlf":
        return "".join(rng.choices([*_MIXED, "\r\n", "Lidar lens. "], k=size // 6))
    return {"dots": ".", "bangs": "!", "quotes": '"', "spaces": " "}[kind] * size


@pytest.mark.parametrize(
    "kind",
    [
        *("english", "cjk sentences", "cjk run", "thai", "base64", "minified json", "emoji", "mixed crlf"),
        *("dots", "bangs", "quotes", "spaces"),
    ],
)
def test_a_megabyte_of_any_kind_is_tokenised_a_bounded_number_of_times(
    kind: str, counting: CountingEncoding
) -> None:
    # Work is counted, not timed: every character is handed to the tokenizer at most a few times,
    # and never in a call longer than a chunk can be (the longest token × the limit).
    text = _megabyte(kind)
    chunks = split_text(text, 350)
    assert counting.characters <= 3 * len(text), counting.characters / len(text)
    assert counting.longest <= 350 * atoms._MAX_TOKEN_BYTES
    assert "".join(chunk.text for chunk in chunks) == text
    assert all(chunk.token_count <= 350 for chunk in chunks)
    encode = get_encoding().encode_ordinary
    for chunk in chunks[:: max(1, len(chunks) // 20)]:
        assert list(chunk.token_ids) == encode(chunk.text)


def test_ten_megabytes_are_tokenised_a_bounded_number_of_times(counting: CountingEncoding) -> None:
    unit = "\n\n".join(
        f"Section {i}. " + PARAGRAPH * (1 + i % 7) + " Ünïcödé and 漢字 too." for i in range(50)
    )
    text = unit * 1000
    assert len(text) >= 10_000_000
    chunks = split_text(text)
    assert "".join(c.text for c in chunks) == text
    assert counting.characters <= 2 * len(text), counting.characters / len(text)


@pytest.mark.parametrize(
    ("text", "max_tokens", "overlap", "module", "path"),
    [
        (" " + "x" * 800 + "." * 400 + "ไ" * 2, 8, 3, atoms, "_fit_prefix"),
        (" " * 10 + "x" * 1500, 9, 0, atoms, "_fit_prefix"),
        (
            "ab" * 400 + "!" * 400 + "漢" * 50 + " " * 400 + "ไ" * 400 + "👨‍👩‍👧" * 51,
            8,
            3,
            chunking,
            "_shrink",
        ),
    ],
)
def test_a_cut_whose_exact_ids_run_over_is_shortened_to_fit(
    text: str, max_tokens: int, overlap: int, module: Any, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Encoded alone, the text before a cut can take more tokens than it did inside the longer
    # text (the seam changes BPE); such a cut is shortened by its own ids.
    calls = []
    original = getattr(module, path)
    monkeypatch.setattr(module, path, lambda *args: calls.append(args) or original(*args))
    chunks = split_text(text, max_tokens, overlap)
    assert calls, f"{path} was not exercised"
    if overlap == 0:
        assert_chunks_cover(text, chunks, max_tokens)
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    encode = get_encoding().encode_ordinary
    for previous, chunk in pairwise(chunks):
        assert chunk.char_start <= previous.char_end < chunk.char_end
    for chunk in chunks:
        assert list(chunk.token_ids) == encode(chunk.text) and chunk.token_count <= max_tokens


@pytest.mark.parametrize("max_tokens", [1, 2, 3])
def test_a_limit_below_one_character_keeps_each_character_whole(max_tokens: int) -> None:
    # " 漢" is three tokens, the first holding the space and a byte of 漢: no token boundary
    # fits a limit of one, so the cut falls between the characters instead.
    text = "\u0301👨\u200d👩\u200d👧🚀" + "\r\n" * 50 + " " * 300 + " 漢" + "ไ" * 300 + "'s"
    chunks = split_text(text, max_tokens)
    assert "".join(chunk.text for chunk in chunks) == text
    encode = get_encoding().encode_ordinary
    for chunk in chunks:
        assert list(chunk.token_ids) == encode(chunk.text)
        assert chunk.token_count <= max_tokens or len(chunk.text) == 1

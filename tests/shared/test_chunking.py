"""Chunking: never over the limit, nothing lost, order kept, the best boundary chosen."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.chunking import split_text
from shared.tokens import CL100K_SHA256, count_tokens, get_encoding

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


def test_ten_megabytes_chunk_in_linear_time() -> None:
    unit = "\n\n".join(
        f"Section {i}. " + PARAGRAPH * (1 + i % 7) + " Ünïcödé and 漢字 too." for i in range(50)
    )
    small = unit * 20  # ~200 KB
    big = unit * 500  # ~5 MB, then doubled below
    big = big + big
    started = time.perf_counter()
    small_chunks = split_text(small)
    small_s = time.perf_counter() - started
    started = time.perf_counter()
    big_chunks = split_text(big)
    big_s = time.perf_counter() - started
    assert len(big) >= 10_000_000
    assert "".join(c.text for c in big_chunks) == big
    ratio = len(big) / len(small)
    # Linear: 50× the input may cost at most ~2.5× proportionally more (generous for a shared CI box).
    assert big_s <= small_s * ratio * 2.5 + 1.0, (small_s, big_s)
    assert "".join(c.text for c in small_chunks) == small

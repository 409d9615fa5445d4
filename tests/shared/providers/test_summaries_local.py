"""The local extractive summariser: which sentences it sees (markdown removed, headings and table
rows dropped, fragments skipped) and which it picks."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.providers.summaries import _clean_sentences, extract_summary

DOCUMENT = """# Dock maintenance

The dock contacts must be cleaned every week by the night shift.
They carry **full charging current** for the `lidar` scanners.

| part | interval |
|------|----------|
| contacts | weekly |

- Inspect the copper for pitting and heat marks before cleaning.
- [x] Replace any contact plate that shows deep pitting or burns.
1. Record every replaced plate in the maintenance log of the dock.
> Never clean the contacts while a robot is docked and charging.

Short line. Too short.
He said "Unplug the dock first." Then the contacts can be wiped with alcohol safely.
"""


def sentences(text: str) -> list[str]:
    return [sentence for sentence, _ in _clean_sentences(text)]


def test_markdown_is_removed_and_headings_tables_and_fragments_are_dropped() -> None:
    assert sentences(DOCUMENT) == [
        "The dock contacts must be cleaned every week by the night shift.",
        "They carry full charging current for the lidar scanners.",
        "Inspect the copper for pitting and heat marks before cleaning.",
        "Replace any contact plate that shows deep pitting or burns.",
        "Record every replaced plate in the maintenance log of the dock.",
        "Never clean the contacts while a robot is docked and charging.",
        'He said "Unplug the dock first.',  # the closing quote goes with the sentence break
        "Then the contacts can be wiped with alcohol safely.",
    ]


def test_windows_line_endings_read_the_same() -> None:
    assert sentences(DOCUMENT.replace("\n", "\r\n")) == sentences(DOCUMENT)


def test_a_dropped_line_inside_a_paragraph_keeps_the_paragraph_whole() -> None:
    text = "The first half of this sentence\n| a table row |\ncontinues on the third line here."
    assert sentences(text) == ["The first half of this sentence continues on the third line here."]


def test_the_summary_keeps_the_most_representative_sentences_in_order() -> None:
    text = (
        "Charging docks need clean contacts for charging. "
        "The weather was pleasant on the day of the audit. "
        "Dirty contacts slow charging and heat the docks. "
        "Lunch was served in the canteen at noon that day."
    )
    summary = extract_summary(text, max_words=18)
    assert summary == (
        "Charging docks need clean contacts for charging. Dirty contacts slow charging and heat the docks."
    )


# -- the one-pass cleaner against the definition, paragraph by paragraph and line by line ----------

_MARKUP = re.compile(
    r"^[^\S\n]{0,3}(#{1,6}[^\S\n]+|[-*+][^\S\n]+(\[[ xX]\][^\S\n]+)?|\d+[.)][^\S\n]+|>[^\S\n]?)"
    r"|[*_`]{1,3}",
    re.M,
)
_BREAK = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)]?\s+(?=[\"'\u201c(]?[A-Z0-9])")


def defined_sentences(text: str) -> list[str]:
    """Each paragraph (split at blank lines): its lines, without table rows and headings, joined;
    markdown marks removed; whitespace collapsed; split after . ! ? before a capital or digit;
    sentences that end in . ! ? with at least six words kept."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [
            line
            for line in paragraph.splitlines()
            if line.strip() and "|" not in line and not line.lstrip().startswith("#")
        ]
        prose = " ".join(_MARKUP.sub("", "\n".join(lines)).split())
        for sentence in _BREAK.split(prose):
            if sentence[-1:] in ".!?" and len(re.findall(r"\w+", sentence.lower())) >= 6:
                found.append(sentence)
    return found


_PIECES = [
    "The dock contacts must be cleaned every single week. ",
    "Is the copper pitted or burnt by the charging current? ",
    "Robots dock 24 times a day! ",
    'He said "stop the line." ',
    "(Replace the plate.) ",
    "**Bold words** and _emphasis_ and `code` inside a sentence here. ",
    "1. ",
    "- ",
    "* [x] ",
    "> ",
    "## Heading ",
    "| a | b | ",
    "e.g. version 1.2.3 of the tool ",
    "\n",
    "\n\n",
    "\r\n",
    "   ",
    "\t",
    "Ünïcödé “quotes” continue the sentence here. ",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))
# A line left empty by its list marker is not a paragraph break (found by this test).
@example("The dock contacts must be cleaned every single week. \n1. \nÜnïcödé “quotes” continue here. ")
def test_the_one_pass_cleaner_finds_the_sentences_the_definition_finds(text: str) -> None:
    assert sentences(text) == defined_sentences(text)


def test_text_without_spaced_sentences_gets_a_bounded_summary() -> None:
    chinese = "这是一个没有空格的很长的句子" * 20_000
    base64_run = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" * 10_000
    for text in (chinese, base64_run, "word " * 10_000):
        summary = extract_summary(text)
        assert 0 < len(summary) <= 120 * 8
        assert text.startswith(summary.split()[0])

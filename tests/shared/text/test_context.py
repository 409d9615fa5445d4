"""Chunks led by their heading path (`shared.text.context`): the path fits the reserve, a chunk
that begins with its own heading does not repeat it, the token ids stay exact, and nothing of the
document is lost."""

from __future__ import annotations

from shared.text.context import HEADING_RESERVE, chunk_document
from shared.text.documents import text_document
from shared.text.html import html_document
from shared.text.tokenizer import get_encoding

GUIDE = (
    "# Operations guide\n\nHow the fleet is run.\n\n"
    "## Backups\n\n" + "Backups run nightly and are kept for thirty days. " * 30 + "\n\n"
    "### Restores\n\n" + "A restore starts from the latest base backup and replays the log. " * 30
)


def test_each_chunk_is_led_by_its_heading_path() -> None:
    document = text_document(GUIDE)
    chunks = chunk_document(document, 120)
    encode = get_encoding().encode_ordinary
    assert all(c.token_count <= 120 and list(c.token_ids) == encode(c.text) for c in chunks)
    middle = [c for c in chunks if "replays the log" in c.text and "### Restores" not in c.text]
    assert middle and all(c.text.startswith("Operations guide › Backups › Restores\n\n") for c in middle)
    # a chunk that begins with its own heading keeps the outer path only
    short = "# Operations guide\n\n## Backups\n\n" + "Backups run nightly. " * 8 + "\n\n### Restores\n\n"
    short += "A restore replays the log. " * 8
    opening = [c for c in chunk_document(text_document(short), 80) if "### Restores" in c.text]
    assert [c.text.split("\n\n", 2)[:2] for c in opening] == [["Operations guide › Backups", "### Restores"]]
    # the chunks' own text still covers the document, in order, and locates it
    for chunk in chunks:
        own = document.text[chunk.char_start : chunk.char_end]
        assert chunk.text.endswith(own)
    assert "".join(document.text[c.char_start : c.char_end] for c in chunks) == document.text


def test_a_long_path_keeps_its_innermost_headings_within_the_reserve() -> None:
    long = "A very long chapter title about the many ways of configuring replication slots"
    text = f"# {long}\n\n## {long} again\n\n### Slots\n\n" + "Slots keep WAL until consumers read it. " * 80
    chunks = chunk_document(text_document(text), 100)
    led = [c for c in chunks if "consumers read it" in c.text and not c.text.startswith("###")]
    lead = led[-1].text.split("\n\n", 1)[0]
    assert lead.endswith("Slots") and len(get_encoding().encode_ordinary(lead + "\n\n")) <= HEADING_RESERVE


def test_headings_off_or_a_document_without_headings_chunks_as_before() -> None:
    plain = text_document("No headings here. " * 200)
    assert [c.text for c in chunk_document(plain, 100)] == [
        c.text for c in chunk_document(plain, 100, headings=False)
    ]
    document = html_document("<h1>Title</h1><p>" + "Body text. " * 200 + "</p>")
    unled = chunk_document(document, 100, headings=False)
    assert "".join(c.text for c in unled) == document.text
    assert all(not c.text.startswith("Title\n\n") for c in unled[1:])  # only the first: the page starts so

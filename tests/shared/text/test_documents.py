"""Documents: PDF, DOCX, HTML and Markdown turned into text with their structure, and the chunker
cutting at their sections. Real files, built by tests/support/documents.py."""

from __future__ import annotations

import pytest

from shared.text.chunking import split_text
from shared.text.documents import (
    DOCX,
    HEADING,
    PAGE,
    PDF,
    DocumentError,
    data_url,
    locate,
    parse_data_url,
    text_document,
)
from shared.text.extract import check_file, document_of
from shared.text.html import html_document, html_to_markdown_text, html_to_text
from tests.support.documents import corrupt_pdf_bytes, docx_bytes, handbook, pdf_bytes, scanned_pdf_bytes


def _where(document, phrase: str):
    """The section the phrase's first occurrence falls in."""
    at = document.text.index(phrase)
    return locate(document.sections, [at])[0]


def test_a_pdf_gives_its_text_pages_and_bookmarks_as_headings() -> None:
    document = document_of(data_url(PDF, pdf_bytes(handbook())))
    assert document.pages == 3
    assert "Code ZX-4471 means the lidar lost sync." in document.text
    for cell in ("QP-0093", "motor overheat", "let it cool"):  # the table's cells
        assert cell in document.text
    safety = _where(document, "Always isolate the battery")
    assert (safety.page, safety.headings) == (1, ("Field Service Handbook", "Safety first"))
    codes = _where(document, "QP-0093")
    assert (codes.page, codes.headings) == (2, ("Field Service Handbook", "Error codes"))
    monthly = _where(document, "FC-221")
    assert (monthly.page, monthly.headings) == (3, ("Maintenance", "Monthly checks"))


def test_a_pdf_without_bookmarks_still_has_a_section_per_page() -> None:
    document = document_of(data_url(PDF, pdf_bytes(handbook(), bookmarks=False)))
    assert [(s.page, s.headings, s.level) for s in document.sections] == [
        (1, (), PAGE),
        (2, (), PAGE),
        (3, (), PAGE),
    ]
    assert _where(document, "FC-221").page == 3


def test_a_docx_gives_paragraphs_tables_heading_styles_and_pages() -> None:
    document = document_of(data_url(DOCX, docx_bytes(handbook())))
    assert "ZX-4471 | lidar sync lost | reseat cable" in document.text  # a table row, cells kept apart
    assert _where(document, "Always isolate").headings == ("Field Service Handbook", "Safety first")
    codes = _where(document, "motor overheat")
    assert (codes.page, codes.headings) == (2, ("Field Service Handbook", "Error codes"))
    assert _where(document, "FC-221").page == 3
    assert all(s.level == HEADING for s in document.sections)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (pdf_bytes(handbook(), password="s3cret"), "encrypted with a password"),
        (corrupt_pdf_bytes(), "cannot be read"),
        (b"plain text, not a pdf", "not a PDF"),
    ],
    ids=["encrypted", "corrupt", "not-a-pdf"],
)
def test_unreadable_pdfs_are_refused_in_one_sentence(data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError) as raised:
        check_file(PDF, data)
    message = str(raised.value)
    assert reason in message and message.endswith(".") and "\n" not in message


def test_a_pdf_locked_only_against_editing_is_read() -> None:
    # an empty user password: anyone may open it (an owner password guards editing only)
    locked = pdf_bytes(handbook(), password="")
    assert check_file(PDF, locked) == 3


def test_docx_checks_refuse_what_is_not_a_word_document() -> None:
    with pytest.raises(DocumentError, match="not a valid zip"):
        check_file(DOCX, b"PK\x03\x04 truncated")
    with pytest.raises(DocumentError, match="encrypted or legacy"):
        check_file(DOCX, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100))


def test_a_scanned_pdf_has_pages_but_no_text() -> None:
    document = document_of(data_url(PDF, scanned_pdf_bytes(3)))
    assert document.text.strip() == ""
    assert document.pages_without_text == (1, 2, 3)


def test_html_headings_become_sections_and_no_tag_survives() -> None:
    markup = (
        "<html><head><style>h1{}</style></head><body><h1>Portal</h1><p>Log in &amp; reset.</p>"
        "<h2> Billing </h2><p>Invoices monthly.</p><h3>Refunds</h3><p>Within 30 days.</p>"
        "<h2>Support</h2><p>Call us.</p></body></html>"
    )
    document = html_document(markup)
    assert document.text == html_to_text(markup)
    assert "<" not in document.text and "&amp;" not in document.text
    assert _where(document, "Within 30 days").headings == ("Portal", "Billing", "Refunds")
    assert _where(document, "Call us").headings == ("Portal", "Support")
    # what `nexus ingest` keeps: the same text with the headings marked for Markdown
    marked = html_to_markdown_text(markup)
    assert marked.startswith("# Portal\n") and "\n### Refunds\n" in marked
    assert [s.headings for s in text_document(marked).sections] == [s.headings for s in document.sections]


def test_an_unclosed_heading_ends_with_the_page() -> None:
    document = html_document("<p>intro</p><h2>Broken heading<p>after")
    assert document.sections[-1].headings == ("Broken heading after",)


def test_markdown_headings_outside_code_fences() -> None:
    text = "# Guide\n\nIntro.\n\n```sh\n# not a heading\n```\n\n## Install\n\nRun it.\n"
    document = text_document(text)
    assert [s.headings for s in document.sections] == [("Guide",), ("Guide", "Install")]


def test_chunks_prefer_to_start_at_a_heading() -> None:
    text = "# A\n\n" + ("alpha words here. " * 60 + "\n\n") * 2 + "## B\n\n" + "beta words there. " * 40
    document = text_document(text)
    plain = split_text(document.text, 350)
    structured = split_text(document.text, 350, 0, document.boundaries())
    assert not any(c.text.startswith("## B") for c in plain)  # a paragraph cut elsewhere
    assert any(c.text.startswith("## B") for c in structured)
    assert "".join(c.text for c in structured) == document.text  # nothing lost
    assert all(c.token_count <= 350 for c in structured)


def test_data_urls_round_trip_and_reject_bad_base64() -> None:
    assert parse_data_url(data_url(PDF, b"%PDF-1.7 x")) == (PDF, b"%PDF-1.7 x")
    assert parse_data_url("data:text/plain;base64,aGk=") is None  # text stays text
    assert parse_data_url("just text") is None
    with pytest.raises(DocumentError, match="not valid base64"):
        parse_data_url("data:application/pdf;base64,***")

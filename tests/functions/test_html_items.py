"""HTML that arrives over HTTP is chunked and embedded as its visible text, never with its tags;
text that only quotes a tag (Markdown with an HTML example) is kept as written."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.text.html import is_html
from tests.functions.test_ingest import call, url_event

PAGE = """<!DOCTYPE html>
<html><head><title>Pump manual</title><style>p { color: red }</style>
<script>var secret = "not text";</script></head>
<body><h1>Pump P-200</h1><p>Check the <b>seal</b> every 200&nbsp;hours &amp; log it.</p>
<table><tr><td>Fault E-17</td><td>Seal worn</td></tr></table>
<p>季度检查：更换密封圈。</p></body></html>"""
MARKDOWN = '# Embedding widgets\n\nPaste `<div class="w">` into your page, then call `init()`.\n'
TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def test_html_over_http_is_embedded_as_its_visible_text(
    ingest: Any, store: Any, admin: Any, client_id: uuid.UUID
) -> None:
    ids = []
    for source, content in (("web/pump.html", PAGE), ("docs/widgets.md", MARKDOWN)):
        status, _, body = call(
            ingest, url_event({"client_id": str(client_id), "source": source, "content": content})
        )
        assert status == 201
        ids.append(body["id"])
    report = Processor(store, LocalEmbedder(), LocalSummarizer(), chunk_tokens=40).process_ids(ids, 60.0)
    assert report.done == 2
    page = [
        r["content"]
        for r in admin.execute(
            "select content from knowledge_chunks where knowledge_item_id = %s order by chunk_index",
            (ids[0],),
        ).fetchall()
    ]
    text = "\n".join(page)
    assert not any(TAG.search(chunk) for chunk in page), page
    assert "Check the seal every 200 hours & log it." in text and "Fault E-17" in text
    assert "季度检查" in text
    assert "secret" not in text and "color: red" not in text  # scripts and styles are not text
    # the summary is made from the same text
    summary = admin.execute("select summary from knowledge_items where id = %s", (ids[0],)).fetchone()[
        "summary"
    ]
    assert not TAG.search(summary)
    # the stored item keeps what was sent
    assert (
        admin.execute("select content from knowledge_items where id = %s", (ids[0],)).fetchone()["content"]
        == PAGE
    )
    markdown = admin.execute(
        "select string_agg(content, '') as text from knowledge_chunks where knowledge_item_id = %s", (ids[1],)
    ).fetchone()["text"]
    assert '<div class="w">' in markdown


@pytest.mark.parametrize(
    ("text", "markup"),
    [
        ("<!doctype html><p>x</p>", True),
        ("  \n<!-- saved page -->\n<html><body>x</body></html>", True),
        ("<p>A fragment</p><p>of a page</p>", True),
        ("<DIV>upper case</DIV>", True),
        ("Plain text with a <b> in it", False),
        ("# Title\n\n<div>an example</div>", False),
        ("a < b and c > d", False),
        ("<not-a-tag> at the start", False),
        ("", False),
    ],
)
def test_what_counts_as_html(text: str, markup: bool) -> None:
    assert is_html(text) is markup

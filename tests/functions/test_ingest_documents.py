"""Files over HTTP: PDF, DOCX, HTML, Markdown and text sent as `content_base64` + `content_type`
through the ingest Lambda handler (single and batch), processed, and found by search with their
page and heading path; unreadable files refused with 422 and nothing stored."""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

import pytest

from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.search.service import search
from shared.text.documents import DOCX, PDF
from tests.conftest import count_items, load_function
from tests.functions.test_ingest import call, url_event
from tests.support.documents import (
    cjk_pdf_bytes,
    corrupt_pdf_bytes,
    docx_bytes,
    handbook,
    pdf_bytes,
    scanned_pdf_bytes,
)

TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def file_item(
    client_id: uuid.UUID, source: str, content_type: str, data: bytes, **fields: Any
) -> dict[str, Any]:
    return {
        "client_id": str(client_id),
        "source": source,
        "content_type": content_type,
        "content_base64": base64.b64encode(data).decode(),
        **fields,
    }


def chunks_of(admin: Any, item_id: str) -> list[dict[str, Any]]:
    return admin.execute(
        "select id, chunk_index, content from knowledge_chunks"
        " where knowledge_item_id = %s order by chunk_index",
        (item_id,),
    ).fetchall()


def process(store: Any, ids: list[str]) -> Any:
    return Processor(store, LocalEmbedder(), LocalSummarizer(), chunk_tokens=40).process_ids(ids, 120.0)


def test_a_pdf_and_a_docx_over_http_are_searchable_with_pages_and_headings(
    ingest: Any, store: Any, admin: Any, client_id: uuid.UUID, function_env: pytest.MonkeyPatch
) -> None:
    status, _, body = call(
        ingest, url_event(file_item(client_id, "manuals/handbook.pdf", PDF, pdf_bytes(handbook())))
    )
    assert status == 201, body
    pdf_id = body["id"]
    status, _, batch = call(
        ingest,
        url_event(
            {
                "items": [
                    file_item(client_id, "manuals/handbook.docx", DOCX, docx_bytes(handbook())),
                    file_item(client_id, "notes/plain.txt", "text/plain", b"Gate code 4471.\n"),
                ]
            }
        ),
    )
    assert status == 200, batch
    docx_id, text_id = (entry["id"] for entry in batch["items"])
    facts = admin.execute(
        "select id, content_type, token_estimate, content from knowledge_items where id = any(%s)",
        ([uuid.UUID(pdf_id), uuid.UUID(docx_id), uuid.UUID(text_id)],),
    ).fetchall()
    by_id = {str(row["id"]): row for row in facts}
    assert by_id[pdf_id]["content_type"] == PDF and by_id[pdf_id]["token_estimate"] == 3 * 500
    assert by_id[pdf_id]["content"].startswith("data:application/pdf;base64,JVBERi")
    assert by_id[docx_id]["content_type"] == DOCX
    assert by_id[text_id]["content"] == "Gate code 4471.\n"  # text files are kept as text

    report = process(store, [pdf_id, docx_id, text_id])
    assert report.done == 3, report
    for item_id in (pdf_id, docx_id):
        text = "\n".join(row["content"] for row in chunks_of(admin, item_id))
        assert "Code ZX-4471 means the lidar lost sync." in text
        assert "QP-0093" in text and "motor overheat" in text  # the table
        assert "FC-221" in text

    hits = search(store, function_env, "air filter cartridge FC-221", k=10, client_id=client_id, mode="text")
    found = {(hit.knowledge_item_id, hit.page, hit.headings) for hit in hits if "FC-221" in hit.content}
    assert (uuid.UUID(pdf_id), 3, ("Maintenance", "Monthly checks")) in found
    assert (uuid.UUID(docx_id), 3, ("Maintenance", "Monthly checks")) in found
    hits = search(store, function_env, "lidar lost sync", k=10, client_id=client_id, mode="text")
    codes = next(hit for hit in hits if hit.knowledge_item_id == uuid.UUID(pdf_id))
    # a chunk records where it starts: here, at page 2's heading
    assert codes.page == 2 and codes.headings == ("Field Service Handbook", "Error codes")
    assert codes.as_dict()["headings"] == ["Field Service Handbook", "Error codes"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (pdf_bytes(handbook(), password="s3cret"), "encrypted with a password"),
        (corrupt_pdf_bytes(), "cannot be read"),
    ],
    ids=["encrypted", "corrupt"],
)
def test_an_unreadable_pdf_is_422_and_nothing_is_stored(
    ingest: Any, admin: Any, client_id: uuid.UUID, data: bytes, reason: str
) -> None:
    before = count_items(admin, client_id)
    good = file_item(client_id, "ok.docx", DOCX, docx_bytes(handbook()))
    bad = file_item(client_id, "bad.pdf", PDF, data)
    status, headers, body = call(ingest, url_event({"items": [good, bad]}))
    assert status == 422
    assert headers["content-type"] == "application/problem+json"
    (error,) = body["errors"]
    assert error["field"] == "items.1.content_base64"
    assert reason in error["detail"] and "Traceback" not in error["detail"]
    status, _, body = call(ingest, url_event(bad))
    assert status == 422 and body["errors"][0]["field"] == "content_base64"
    assert count_items(admin, client_id) == before  # the good file of the batch neither


@pytest.mark.parametrize(
    ("fields", "field", "status"),
    [
        ({"content_type": "application/zip", "content_base64": "UEsDBA=="}, "content_type", 422),
        ({"content_base64": "aGVsbG8="}, "content_type", 422),
        ({"content_type": "text/plain", "content_base64": "not base64!"}, "content_base64", 422),
        (
            {"content_type": "text/plain", "content_base64": base64.b64encode(b"\xff\xfe bad").decode()},
            "content_base64",
            422,
        ),
        ({"content_type": "text/plain", "content_base64": "aGk=", "content": "hi"}, "content_base64", 422),
        ({"content_type": PDF, "content": "%PDF-1.7 as text"}, "content_type", 422),
        ({"content": "data:application/pdf;base64,JVBERi0xLjcK"}, "content", 422),
        ({}, "content", 422),
        (
            {"content_type": "text/plain", "content_base64": base64.b64encode(b"x" * 2048).decode()},
            "content_base64",
            413,
        ),
    ],
    ids=[
        "unknown-type",
        "no-type",
        "bad-base64",
        "not-utf8",
        "both",
        "pdf-as-content",
        "bad-data-url",
        "nothing",
        "too-large",
    ],
)
def test_file_fields_are_checked_one_sentence_each(
    ingest: Any,
    admin: Any,
    client_id: uuid.UUID,
    function_env: pytest.MonkeyPatch,
    fields: dict[str, Any],
    field: str,
    status: int,
) -> None:
    function_env.setenv("NEXUS_MAX_FILE_BYTES", "1024")
    before = count_items(admin, client_id)
    got, _, body = call(ingest, url_event({"client_id": str(client_id), "source": "f", **fields}))
    assert got == status, body
    assert [e["field"] for e in body["errors"]] == [field]
    assert body["errors"][0]["detail"].startswith(field + " ")
    assert count_items(admin, client_id) == before


def test_html_over_http_reaches_no_chunk_with_its_tags(
    ingest: Any, store: Any, admin: Any, client_id: uuid.UUID
) -> None:
    # a page that does not start with a tag: declared as HTML, it is still read as HTML
    page = "Welcome! <h2>Opening hours</h2><p>Mon&ndash;Fri <b>9&ndash;5</b>.</p><script>x=1</script>"
    items = [
        file_item(client_id, "site/hours.html", "text/html", page.encode()),
        {"client_id": str(client_id), "source": "site/hours2", "content": page, "content_type": "text/html"},
        file_item(client_id, "docs/readme.md", "text/markdown", b"# Readme\n\nUse `<br>` for breaks.\n"),
    ]
    status, _, batch = call(ingest, url_event({"items": items}))
    assert status == 200, batch
    ids = [entry["id"] for entry in batch["items"]]
    assert process(store, ids).done == 3
    for item_id in ids[:2]:
        chunks = [row["content"] for row in chunks_of(admin, item_id)]
        assert chunks and not any(TAG.search(chunk) for chunk in chunks), chunks
        assert "Mon–Fri 9–5." in "\n".join(chunks) and "x=1" not in "\n".join(chunks)
    markdown = "\n".join(row["content"] for row in chunks_of(admin, ids[2]))
    assert "`<br>`" in markdown  # Markdown quoting a tag is kept as written


def test_a_scanned_pdf_is_reported_not_guessed(
    ingest: Any, store: Any, admin: Any, client_id: uuid.UUID
) -> None:
    status, _, body = call(ingest, url_event(file_item(client_id, "scan.pdf", PDF, scanned_pdf_bytes(2))))
    assert status == 201
    report = process(store, [body["id"]])
    assert report.failed == 1
    row = admin.execute(
        "select status, attempts, last_error from knowledge_items where id = %s", (body["id"],)
    ).fetchone()
    assert row["status"] == "failed"
    assert "no text layer on any of its 2 page(s)" in row["last_error"]
    assert chunks_of(admin, body["id"]) == []
    # not retried: a scan stays a scan (the sweep does not claim it again)
    again = Processor(store, LocalEmbedder(), LocalSummarizer()).process_ids([body["id"]], 60.0)
    assert again.claimed == 0


def test_the_search_function_answers_where_a_document_hit_sits(
    ingest: Any, store: Any, client_id: uuid.UUID, function_env: pytest.MonkeyPatch
) -> None:
    from tests.functions import test_search

    function_env.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    status, _, body = call(
        ingest, url_event(file_item(client_id, "manuals/hb.docx", DOCX, docx_bytes(handbook())))
    )
    assert status == 201
    assert process(store, [body["id"]]).done == 1
    module = load_function("search")  # as test_search's fixture loads it
    try:
        event = test_search.url_event(
            {"query": "QP-0093 motor overheat", "client_id": str(client_id), "mode": "text"}
        )
        status, _, answer = test_search.call(module, event)
    finally:
        if module.endpoint.store is not None:
            module.endpoint.store.close()
    assert status == 200
    hit = next(
        h for h in answer["hits"] if h["knowledge_item_id"] == body["id"] and "QP-0093" in h["content"]
    )
    assert hit["page"] == 2 and hit["headings"] == ["Field Service Handbook", "Error codes"]


def test_chinese_and_emoji_survive_a_pdf_and_a_docx(
    ingest: Any, store: Any, admin: Any, client_id: uuid.UUID
) -> None:
    lines = ["季度检查：更换密封圈。", "错误代码 E-17 表示密封圈磨损 🙂", "日本語のテキストも読めます。"]
    items = [
        file_item(client_id, "cn/check.pdf", PDF, cjk_pdf_bytes(lines)),
        file_item(
            client_id,
            "cn/check.docx",
            DOCX,
            docx_bytes([[("h1", "季度检查"), *(("p", line) for line in lines)]]),
        ),
    ]
    status, _, batch = call(ingest, url_event({"items": items}))
    assert status == 200, batch
    ids = [entry["id"] for entry in batch["items"]]
    assert process(store, ids).done == 2
    for item_id in ids:
        text = "\n".join(row["content"] for row in chunks_of(admin, item_id))
        assert all(line in text for line in lines), text

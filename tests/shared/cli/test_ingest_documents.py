"""`nexus ingest` on a folder of PDF, DOCX and HTML files, then `nexus process --all` and
`nexus search --json`, as a user runs them: the files' text is found with its page and headings,
unreadable files are skipped with their reason, and ingesting again stores nothing new."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.cli.main import main
from shared.config import reset_settings
from tests.support.documents import corrupt_pdf_bytes, docx_bytes, handbook, pdf_bytes, scanned_pdf_bytes

GUIDE = """<!doctype html><html><body><h1>Portal guide</h1><p>Sign in with your badge. The portal
lists your shifts, your training record and the rooms you may enter; it logs you out after ten
minutes without a click, and keeps your preferences between visits.</p>
<h2>Resetting</h2><p>Reset a locked account with code RX-77 at the front desk.</p></body></html>"""


def nexus(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    monkeypatch.setenv("NEXUS_SUMMARY_PROVIDER", "local")
    monkeypatch.setenv("NEXUS_CHUNK_TOKENS", "40")
    reset_settings()
    yield
    reset_settings()


def test_nexus_ingest_takes_pdf_and_docx_files(
    cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "handbook.pdf").write_bytes(pdf_bytes(handbook()))
    (folder / "handbook.docx").write_bytes(docx_bytes(handbook()))
    (folder / "guide.html").write_text(GUIDE, encoding="utf-8")
    (folder / "locked.pdf").write_bytes(pdf_bytes(handbook(), password="pw"))
    (folder / "broken.pdf").write_bytes(corrupt_pdf_bytes())
    (folder / "scan.pdf").write_bytes(scanned_pdf_bytes())
    monkeypatch.chdir(tmp_path)
    client = str(uuid.uuid4())

    code, out, err = nexus(capsys, "ingest", "docs", "--client-id", client, "--create-client")
    assert code == 0, err
    assert "4 item(s) ingested" in out
    for name in ("handbook.pdf", "handbook.docx", "guide.html", "scan.pdf"):
        assert f"new        docs/{name}" in out
    assert "skipped docs/locked.pdf: is not readable: the PDF is encrypted with a password" in err
    assert "skipped docs/broken.pdf: is not readable: the PDF cannot be read" in err

    code, out, err = nexus(capsys, "process", "--all")
    assert code == 1  # an item failed: the scan, which has no text layer (reported, not guessed)
    assert "3 done, 1 failed" in out

    code, out, err = nexus(
        capsys, "search", "air filter cartridge FC-221", "--client-id", client, "--mode", "text", "--json"
    )
    hits: list[dict[str, Any]] = json.loads(out)
    located = {
        (hit["source"], hit["page"], tuple(hit["headings"])) for hit in hits if "FC-221" in hit["content"]
    }
    assert ("docs/handbook.pdf", 3, ("Maintenance", "Monthly checks")) in located
    assert ("docs/handbook.docx", 3, ("Maintenance", "Monthly checks")) in located

    code, out, _ = nexus(capsys, "search", "RX-77 locked account", "--client-id", client, "--mode", "text")
    assert "docs/guide.html" in out and "Portal guide › Resetting" in out

    code, out, _ = nexus(capsys, "ingest", "docs", "--client-id", client)
    assert out.count("duplicate") == 4  # unchanged files store nothing new

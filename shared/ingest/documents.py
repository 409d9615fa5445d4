"""Files at the door: an item's `content_base64` + `content_type` checked and turned into the
`content` it is stored as.

- PDF and DOCX are checked (readable, not locked: `shared.text.extract.check_file`, which reads
  a PDF's page tree but no text) and kept as a data URL; their text is extracted while processing.
- HTML, Markdown and plain text are decoded (UTF-8) and kept as text. HTML that does not start
  with a tag gets a `<!doctype html>` line, so processing knows it for HTML and never embeds
  its tags.

A `content` that is itself a PDF or DOCX data URL is checked the same way. Any failure is a 422
(413 for a file over NEXUS_MAX_FILE_BYTES) naming the field, and nothing of the request is stored.
"""

from __future__ import annotations

import base64
import binascii
import re

from shared.http.problems import FieldError, ProblemError
from shared.ingest.items import IngestItem
from shared.text.documents import BINARY_TYPES, FILE_TYPES, PDF, DocumentError, data_url, parse_data_url
from shared.text.html import is_html

__all__ = ["FileRejected", "decode_file", "resolve_files"]

_WHITESPACE = re.compile(rb"\s+")
# A type as docs/openapi.yaml writes it: exactly one of FILE_TYPES, then printable parameters.
_CONTENT_TYPE = re.compile(f"({'|'.join(re.escape(t) for t in FILE_TYPES)})(;[ -~]*)?")
# Token estimates before any text is extracted: per PDF page, and per byte of a DOCX's XML.
TOKENS_PER_PDF_PAGE = 500
DOCX_XML_BYTES_PER_TOKEN = 16


class FileRejected(ValueError):
    """A file that cannot be stored: the message says why, as the end of a sentence naming the
    field (`content_base64 is not valid base64.`)."""

    def __init__(self, detail: str, status: int = 422, field: str = "content_base64") -> None:
        super().__init__(detail.rstrip("."))
        self.status, self.field, self.detail = status, field, detail


def _problem(status: int, field: str, detail: str) -> FileRejected:
    return FileRejected(detail, status, field)


def resolve_files(items: list[IngestItem], is_batch: bool, max_file_bytes: int | None) -> list[IngestItem]:
    """The items with each one's content set from its file; raises a ProblemError listing every
    item's bad file field (413 when the only problems are sizes)."""
    prefix = "items.{}." if is_batch else ""
    resolved, problems = [], []
    for index, item in enumerate(items):
        try:
            resolved.append(_resolve(item, max_file_bytes))
        except FileRejected as problem:
            field = prefix.format(index) + problem.field
            problems.append((problem.status, FieldError(field, f"{field} {problem.detail}")))
    if problems:
        status = 413 if all(status == 413 for status, _ in problems) else 422
        title = "A file is too large" if status == 413 else "A file cannot be read"
        title += "; nothing was stored."
        raise ProblemError(status, title, errors=[error for _, error in problems], slug="invalid-fields")
    return resolved


def _declared_type(content_type: str | None) -> str | None:
    """The type named by `content_type` (parameters after `;` dropped); 422 for any other."""
    if content_type is None:
        return None
    match = _CONTENT_TYPE.fullmatch(content_type)
    if match is None:
        raise _problem(422, "content_type", f"must be one of {', '.join(FILE_TYPES)}.")
    return match.group(1)


def _resolve(item: IngestItem, max_file_bytes: int | None) -> IngestItem:
    declared = _declared_type(item.content_type)
    if item.content_base64 is not None:
        if item.content is not None:
            raise _problem(422, "content_base64", "cannot be sent with content; send one of them.")
        if declared is None:
            raise _problem(422, "content_type", "is required with content_base64.")
        data = _decode_base64(item.content_base64, max_file_bytes)
        content, estimate = decode_file(declared, data)
    elif item.content is None:
        raise _problem(422, "content", "is required (or content_base64 with content_type).")
    else:
        content, estimate = _checked_content(item.content, declared)
    resolved = item.model_copy(update={"content": content, "content_base64": None, "content_type": declared})
    resolved._token_estimate = estimate
    return resolved


def _decode_base64(value: str, max_file_bytes: int | None) -> bytes:
    """The file's bytes; a file over `max_file_bytes` is refused before it is decoded when its
    base64 is clearly too long, and after it is, at the exact size."""
    raw = _WHITESPACE.sub(b"", value.encode("ascii", "replace"))  # line-wrapped base64 is common
    too_large = _problem(
        413,
        "content_base64",
        f"is a file larger than the {max_file_bytes}-byte limit (NEXUS_MAX_FILE_BYTES).",
    )
    if max_file_bytes is not None and len(raw) // 4 * 3 > max_file_bytes + 3:
        raise too_large
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _problem(422, "content_base64", "is not valid base64.") from None
    if not data:
        raise _problem(422, "content_base64", "must not be empty.")
    if max_file_bytes is not None and len(data) > max_file_bytes:
        raise too_large
    return data


def decode_file(content_type: str, data: bytes) -> tuple[str, int | None]:
    """A file's bytes as the content stored for it, and its token estimate (None: estimate the
    text). Raises FileRejected naming `content_base64` or `content_type`."""
    if content_type not in FILE_TYPES:
        raise _problem(422, "content_type", f"must be one of {', '.join(FILE_TYPES)}.")
    if content_type in BINARY_TYPES:
        return data_url(content_type, data), _file_estimate(content_type, data, "content_base64")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise _problem(422, "content_base64", f"is not UTF-8 text, as {content_type} must be.") from None
    if "\x00" in text:
        raise _problem(422, "content_base64", "must not contain NUL characters.")
    if not text.strip():
        raise _problem(422, "content_base64", "holds no text.")
    if content_type == "text/html" and not is_html(text):
        text = "<!doctype html>\n" + text
    return text, None


def _checked_content(content: str, declared: str | None) -> tuple[str, int | None]:
    """A `content` as sent: a file's data URL is checked like a file; a declared type must be a
    text one (files go in content_base64), and HTML is marked as such."""
    try:
        file = parse_data_url(content)
    except DocumentError as exc:
        raise _problem(422, "content", _lower_first(str(exc))) from None
    if file is not None:
        return content, _file_estimate(file[0], file[1], "content")
    if declared is None:
        return content, None
    if declared in BINARY_TYPES:
        raise _problem(422, "content_type", f"{declared} files go in content_base64, not content.")
    if declared == "text/html" and not is_html(content):
        return "<!doctype html>\n" + content, None
    return content, None


def _file_estimate(content_type: str, data: bytes, field: str) -> int:
    """Check a PDF or DOCX (DocumentError → 422 on `field`) and estimate its tokens."""
    from shared.text.extract import check_file

    try:
        pages = check_file(content_type, data)
    except DocumentError as exc:
        raise _problem(422, field, _lower_first(str(exc))) from None
    if content_type == PDF:
        return (pages or 1) * TOKENS_PER_PDF_PAGE
    from shared.text.docx import check_docx

    return max(1, check_docx(data) // DOCX_XML_BYTES_PER_TOKEN)


def _lower_first(sentence: str) -> str:
    """'The PDF is …' → 'is not readable: the PDF is …', for '<field> <detail>' messages."""
    return "is not readable: " + sentence[:1].lower() + sentence[1:]

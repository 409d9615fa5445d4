"""Property-based tests of the ingest Lambda handler (real mangum path, real embedded Postgres).

- Any JSON body, and any item-shaped body with mutated fields: never a 5xx; a rejected request
  stores nothing; an accepted one stores exactly the items it names; every answer matches the
  response documented in docs/openapi.yaml for its status.
- Any bytes with any Content-Type: never a 5xx, nothing stored unless accepted.
- Any valid item, whatever its Unicode: content, source, external_id and metadata come back exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from shared.http.problems import ProblemError
from tests.conftest import ROOT
from tests.functions.test_ingest import call, url_event

OPENAPI = ROOT / "docs" / "openapi.yaml"


def examples(n: int) -> settings:
    """`n` examples, no per-example deadline (real DB round trips), and function-scoped fixtures
    shared by all examples of a test, as a warm Lambda instance shares its connection."""
    return settings(
        max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )


# --- the OpenAPI document as the oracle for response shapes ---------------------------------


@cache
def _openapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
    return document


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = _openapi()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def assert_documented(status: int, headers: dict[str, str], body: Any) -> None:
    """The answer is one the document lists for POST, with the documented media type and schema."""
    responses = _openapi()["paths"]["/api/knowledge/ingest"]["post"]["responses"]
    assert str(status) in responses, f"status {status} is not documented"
    content = _resolve(responses[str(status)])["content"]
    media = headers["content-type"].split(";")[0].strip()
    assert media in content, f"{status} answered {media}, documented {list(content)}"
    schema = {**content[media]["schema"], "components": _openapi()["components"]}
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(body)


def test_openapi_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate

    assert _openapi()["openapi"].startswith("3.1")
    validate(_openapi())


PROBLEM_STATUSES = (400, 401, 403, 404, 405, 413, 415, 422, 500, 503)
RENDER_PROBLEMS = (
    "import json; from shared.http.problems import ProblemError; "
    f"print(json.dumps({{s: ProblemError(s, 'x').to_response().payload() for s in {PROBLEM_STATUSES}}}))"
)


def _newer_pythons() -> list[str]:
    """CPython >= 3.13 interpreters on this machine (PATH, or pyenv's versions)."""
    found = [path for name in ("python3.13", "python3.14") if (path := shutil.which(name))]
    pyenv_root = os.environ.get("PYENV_ROOT")
    if pyenv_root:
        found += sorted(str(p) for p in Path(pyenv_root).glob("versions/3.1[3-9]*/bin/python3"))
    return found


def _problems_rendered_by(python: str) -> dict[str, Any] | None:
    completed = subprocess.run(
        [python, "-c", RENDER_PROBLEMS],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if completed.returncode != 0:
        return None  # e.g. a pyenv shim for a version that is not installed
    rendered: dict[str, Any] = json.loads(completed.stdout)
    return rendered


def test_problem_type_and_title_do_not_depend_on_the_python_version() -> None:
    """A problem's `type` is its machine-readable identity (RFC 9457): clients switch on it, so it
    must be the same on every runtime the function is deployed to."""
    here = json.loads(json.dumps({s: ProblemError(s, "x").to_response().payload() for s in PROBLEM_STATUSES}))
    others = {}
    for python in _newer_pythons():
        rendered = _problems_rendered_by(python)
        if rendered is not None:
            others[python] = rendered
    if not others:
        pytest.skip("no Python >= 3.13 on PATH to compare with")
    for name, rendered in others.items():
        for status, problem in here.items():
            assert (rendered[status]["type"], rendered[status]["title"]) == (
                problem["type"],
                problem["title"],
            ), f"{status} differs on {name}"


# --- strategies --------------------------------------------------------------------------------

# Every code point, surrogates (Cs) and NUL included, plus the ones that break naive code.
ANY_CHAR = st.characters(exclude_categories=())
NASTY = st.sampled_from(
    ["\x00", "\ud800", "\udfff", "😀", "👩\u200d💻", "\u202e", "\ufeff", "\r\n", " ", "\\", '"']
)
ANY_TEXT = st.one_of(st.text(ANY_CHAR, max_size=40), NASTY, st.lists(NASTY, max_size=5).map("".join))
HUGE_INTS = st.integers(min_value=-(10**1000), max_value=10**1000)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(), ANY_TEXT)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4),
    max_leaves=20,
)


def _client_id_forms(client_id: uuid.UUID) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(str(client_id)),
        st.sampled_from([str(client_id).upper(), f"urn:uuid:{client_id}", f"{{{client_id}}}", client_id.hex]),
        st.just(client_id.int),
        st.uuids().map(str),  # an unknown client
        ANY_JSON,
    )


def _item_like(client_id: uuid.UUID) -> st.SearchStrategy[dict[str, Any]]:
    """A valid item with some fields dropped, retyped or replaced by hostile values."""
    valid = {
        "client_id": st.just(str(client_id)),
        "source": st.just("notes/p.md"),
        "content": st.just("Some content."),
        "metadata": st.just({"k": "v"}),
        "external_id": st.uuids().map(str),
    }
    mutated = {
        "client_id": _client_id_forms(client_id),
        "source": ANY_JSON | st.text(max_size=3000),
        "content": ANY_JSON | ANY_TEXT,
        "metadata": ANY_JSON | st.dictionaries(ANY_TEXT, ANY_JSON, max_size=4),
        "external_id": ANY_JSON | ANY_TEXT | st.text(min_size=500, max_size=600),
    }

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name in valid:
            choice = draw(st.sampled_from(["valid", "valid", "mutated", "absent"]))
            if choice != "absent":
                body[name] = draw(valid[name] if choice == "valid" else mutated[name])
        body.update(draw(st.dictionaries(ANY_TEXT, ANY_JSON, max_size=2)))  # unknown fields
        return body

    return build()


def _bodies(client_id: uuid.UUID) -> st.SearchStrategy[Any]:
    one = _item_like(client_id)
    return st.one_of(
        ANY_JSON,
        one,
        st.lists(one, max_size=4).map(lambda items: {"items": items}),
        st.builds(
            lambda items, extra: {"items": items, **extra}, ANY_JSON, st.dictionaries(ANY_TEXT, ANY_JSON)
        ),
    )


# --- helpers -----------------------------------------------------------------------------------


def item_ids(admin: psycopg.Connection[Any], client_id: uuid.UUID) -> set[str]:
    rows = admin.execute("select id from knowledge_items where client_id = %s", (client_id,)).fetchall()
    return {str(row["id"]) for row in rows}


def check_outcome(status: int, headers: dict[str, str], body: Any, before: set[str], after: set[str]) -> None:
    assert status < 500, body
    assert_documented(status, headers, body)
    if status in (200, 201):
        results = body.get("items", [body])
        returned = {r["id"] for r in results}
        assert returned <= after, "an accepted item is missing from the client's rows"
        assert after - before <= returned, "rows were stored that the answer does not name"
        assert after >= before
    else:
        assert headers["content-type"] == "application/problem+json"
        assert after == before, f"a {status} stored {len(after - before)} row(s)"


# --- (a) arbitrary JSON --------------------------------------------------------------------------


@examples(300)
@given(data=st.data())
def test_any_json_body_gets_no_5xx_and_rejections_store_nothing(
    ingest: Any, admin: psycopg.Connection[Any], client_id: uuid.UUID, data: st.DataObject
) -> None:
    payload = data.draw(_bodies(client_id), label="body")
    key = data.draw(st.none() | st.text(st.characters(exclude_categories=("Cs",)), max_size=20), label="key")
    headers = {} if key is None else {"idempotency-key": key}
    base64 = data.draw(st.booleans(), label="base64")
    before = item_ids(admin, client_id)
    status, out_headers, body = call(ingest, url_event(payload, headers=headers, encode_base64=base64))
    event(f"status {status}")
    check_outcome(status, out_headers, body, before, item_ids(admin, client_id))


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"d": value}
    return value


RAW_BODIES = [
    b"[" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"metadata": {"n": ' + b"9" * 5000 + b"}}",
    b'{"metadata": {"n": 1e400}}',
    b'{"metadata": {"n": -Infinity}}',
    b'{"content": "\\ud800"}',
    b"\xef\xbb\xbf{}",
    b"",
    b"null",
    b'"just a string"',
]


@pytest.mark.parametrize("raw", RAW_BODIES, ids=range(len(RAW_BODIES)))
def test_hostile_raw_json_is_a_client_error(
    ingest: Any, admin: psycopg.Connection[Any], client_id: uuid.UUID, raw: bytes
) -> None:
    before = item_ids(admin, client_id)
    status, headers, body = call(ingest, url_event(raw, raw=True))
    assert 400 <= status < 500
    check_outcome(status, headers, body, before, item_ids(admin, client_id))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("metadata", _nested(64), 201),
        ("metadata", _nested(65), 422),
        ("metadata", _nested(500), 422),
        ("unknown", _nested(500), 201),  # ignored fields are never stored
        ("metadata", {"n": 10**4000}, 201),
        ("metadata", {"n": 1e308, "m": -5e-324}, 201),
        ("metadata", {"\x00": 1}, 422),
        ("metadata", {"k": ["\ud83d"]}, 422),
        ("source", "s" * 2049, 422),
        ("external_id", "😀" * 512, 201),
        ("external_id", "😀" * 513, 422),
    ],
)
def test_edge_values(
    ingest: Any, admin: psycopg.Connection[Any], client_id: uuid.UUID, field: str, value: Any, expected: int
) -> None:
    payload = {"client_id": str(client_id), "source": "s", "content": "edge", field: value}
    before = item_ids(admin, client_id)
    status, headers, body = call(ingest, url_event(payload))
    assert status == expected, body
    check_outcome(status, headers, body, before, item_ids(admin, client_id))


# --- (b) arbitrary bytes and Content-Type ----------------------------------------------------------

JSON_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON ; charset=latin-1",
        "application/problem+json",
        "application/vnd.api+json",
    ]
)
OTHER_TYPES = st.sampled_from(
    [
        "application/json-patch",
        "text/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "",
        ";",
        "application/",
        "+json",
    ]
)
# Weighted towards the JSON types, so the parser and validator see most of the bodies.
CONTENT_TYPES = st.one_of(
    JSON_TYPES,
    JSON_TYPES,
    st.none(),
    OTHER_TYPES,
    st.text(st.characters(exclude_categories=("Cs",)), max_size=60),  # any header text a URL event can carry
)


@examples(200)
@given(
    raw=st.binary(max_size=300),
    splice=st.none() | st.tuples(st.integers(0, 80), st.binary(max_size=8)),
    content_type=CONTENT_TYPES,
)
@example(raw=b"", splice=(0, b""), content_type="application/json")
def test_any_bytes_with_any_content_type_gets_no_5xx(
    ingest: Any,
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    raw: bytes,
    splice: tuple[int, bytes] | None,
    content_type: str | None,
) -> None:
    if splice is not None:  # a valid body with a few bytes spliced in: near-valid JSON
        good = json.dumps({"client_id": str(client_id), "source": "b", "content": "bytes"}).encode()
        cut, junk = splice
        raw = good[:cut] + junk + good[cut:]
    before = item_ids(admin, client_id)
    status, headers, body = call(ingest, url_event(raw, raw=True, headers={"content-type": content_type}))
    event(f"status {status}")
    check_outcome(status, headers, body, before, item_ids(admin, client_id))


# --- (c) valid items round-trip exactly -----------------------------------------------------------

# Storable text: any Unicode scalar value except NUL (Postgres text and jsonb cannot hold it).
STORABLE_CHAR = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
STORABLE_TEXT = st.text(STORABLE_CHAR, max_size=30)
METADATA_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        HUGE_INTS,
        st.floats(allow_nan=False, allow_infinity=False),
        STORABLE_TEXT,
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(STORABLE_TEXT, children, max_size=4),
    max_leaves=25,
)


def _as_decimals(value: Any) -> Any:
    """JSON numbers compared by value: jsonb keeps `1.5e300` as the exact decimal it denotes."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


@examples(150)
@given(
    content=st.text(STORABLE_CHAR, min_size=1, max_size=300).filter(lambda s: s.strip() != ""),
    source=st.text(STORABLE_CHAR, min_size=1, max_size=60),
    external_id=st.none() | st.text(STORABLE_CHAR, min_size=1, max_size=60),
    metadata=st.none() | st.dictionaries(STORABLE_TEXT, METADATA_VALUES, max_size=6),
    utf8_body=st.booleans(),
    base64=st.booleans(),
)
def test_valid_items_round_trip_exactly(
    ingest: Any,
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    content: str,
    source: str,
    external_id: str | None,
    metadata: dict[str, Any] | None,
    utf8_body: bool,
    base64: bool,
) -> None:
    payload: dict[str, Any] = {"client_id": str(client_id), "source": source, "content": content}
    if metadata is not None:
        payload["metadata"] = metadata
    if external_id is not None:
        payload["external_id"] = f"{external_id}-{uuid.uuid4()}"  # fresh, so it is always a create
    raw = json.dumps(payload, ensure_ascii=not utf8_body).encode()
    status, headers, body = call(ingest, url_event(raw, raw=True, encode_base64=base64))
    assert status == 201, body
    assert_documented(status, headers, body)
    row = admin.execute(
        "select client_id, source, content, external_id, metadata, metadata::text as metadata_text,"
        " content_sha256, char_count from knowledge_items where id = %s",
        (body["id"],),
    ).fetchone()
    assert row is not None
    assert row["client_id"] == client_id
    assert row["content"] == content
    assert row["source"] == source
    assert row["external_id"] == payload.get("external_id")
    sent_metadata = metadata if metadata is not None else {}
    assert json.loads(row["metadata_text"], parse_float=Decimal, parse_int=Decimal) == _as_decimals(
        sent_metadata
    )
    if not _has_float(sent_metadata):
        assert row["metadata"] == sent_metadata
    assert row["content_sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert row["char_count"] == len(content)

"""`IngestWorker().ingest(data)`, the seed's ingest call, on the real database: it stores what the
HTTP API stores for the same body, and refuses what the API refuses, storing nothing."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from shared.http import ProblemError
from shared.ingest import IngestWorker
from tests.conftest import count_items


def test_an_item_is_stored_once(
    function_env: pytest.MonkeyPatch, client_id: uuid.UUID, admin: psycopg.Connection[Any]
) -> None:
    data = {
        "client_id": str(client_id),
        "source": "seed",
        "content": "注意：季度报告。",
        "external_id": "r-1",
    }
    first = IngestWorker().ingest(data)
    assert first["status"] == "pending" and first["duplicate"] is False
    again = IngestWorker().ingest(data)
    assert again["id"] == first["id"] and again["duplicate"] is True
    row = admin.execute(
        "select content, source from knowledge_items where id = %s", (first["id"],)
    ).fetchone()
    assert row == {"content": "注意：季度报告。", "source": "seed"}
    assert count_items(admin, client_id) == 1


def test_a_batch_answers_one_result_per_item(function_env: pytest.MonkeyPatch, client_id: uuid.UUID) -> None:
    items = [{"client_id": str(client_id), "source": "seed", "content": f"note {i} 🙂"} for i in range(3)]
    answer = IngestWorker().ingest({"items": items})
    assert [r["duplicate"] for r in answer["items"]] == [False, False, False]
    assert len({r["id"] for r in answer["items"]}) == 3


def test_bad_input_names_the_field_and_stores_nothing(
    function_env: pytest.MonkeyPatch, client_id: uuid.UUID, admin: psycopg.Connection[Any]
) -> None:
    with pytest.raises(ProblemError) as refused:
        IngestWorker().ingest({"client_id": str(client_id), "source": "seed", "content": "   "})
    assert refused.value.status == 422
    assert [e.field for e in refused.value.errors] == ["content"]
    with pytest.raises(ProblemError) as unknown:
        IngestWorker().ingest({"client_id": str(uuid.uuid4()), "source": "seed", "content": "x"})
    assert unknown.value.status == 422
    assert count_items(admin, client_id) == 0

"""`shared.runtime.events`: the shapes of the events that trigger processing, told apart without a
database. `is_process_message` says whether a body is shaped like what the process function takes;
`item_to_process` then reads it (both agree on the webhook types)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.runtime.events import WEBHOOK_TYPES, EventError, is_process_message, item_to_process
from tests.conftest import load_event

ITEM_ID = "0b8e4b4e-9a3c-4c1e-8f5e-2f6d7a1b9c0d"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"knowledge_item_id": ITEM_ID}, True),
        ({"type": "INSERT", "table": "knowledge_items"}, True),
        ({"type": "UPDATE", "table": "other_table"}, True),  # the shape; item_to_process refuses the table
        ({"type": "DELETE", "table": "knowledge_items", "old_record": {}}, True),
        ({"knowledge_item_id": ITEM_ID, "note": "x"}, False),  # an item message is that key alone
        ({"type": "TRUNCATE", "table": "knowledge_items"}, False),
        ({"type": "insert", "table": "knowledge_items"}, False),
        ({"type": "INSERT"}, False),
        ({"table": "knowledge_items"}, False),
        ({}, False),
        ([{"knowledge_item_id": ITEM_ID}], False),
        ("knowledge_item_id", False),
        (None, False),
    ],
)
def test_is_process_message_tells_the_shape(body: Any, expected: bool) -> None:
    assert is_process_message(body) is expected


@pytest.mark.parametrize(
    "name", ["supabase_webhook_insert.json", "supabase_webhook_update.json", "supabase_webhook_delete.json"]
)
def test_recorded_webhook_bodies_are_process_messages(name: str) -> None:
    assert is_process_message(load_event(name))


def test_the_bodies_an_sqs_batch_carries_are_process_messages() -> None:
    for record in load_event("sqs_batch.json")["Records"]:
        assert is_process_message(json.loads(record["body"]))


@pytest.mark.parametrize("kind", sorted(WEBHOOK_TYPES))
def test_item_to_process_takes_every_webhook_type(kind: str) -> None:
    body = {"type": kind, "table": "knowledge_items", "record": {"id": ITEM_ID}, "old_record": None}
    assert str(item_to_process(body)) == (ITEM_ID if kind != "DELETE" else "None")


def test_item_to_process_refuses_another_type_in_one_sentence() -> None:
    with pytest.raises(EventError, match=r"^type must be INSERT, UPDATE or DELETE"):
        item_to_process({"type": "TRUNCATE", "table": "knowledge_items"})


@pytest.mark.parametrize("kind", [["INSERT"], {"a": 1}, 3, None])
def test_a_webhook_type_that_is_not_a_string_is_refused_in_one_sentence(kind: object) -> None:
    body = {"type": kind, "table": "knowledge_items", "schema": "public", "record": {}}
    assert not is_process_message(body)
    with pytest.raises(EventError, match="type must be INSERT, UPDATE or DELETE"):
        item_to_process(body)

"""Metrics from every function, as CloudWatch reads them: the embedded-metric (EMF) JSON lines each
handler prints, under namespace NexusWorkers with its service as the dimension. serverless.yml's
alarms read these names (tests/packaging checks the alarms)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import load_event, load_function
from tests.functions.test_ingest import call, close_function, url_event
from tests.functions.test_process import SECRET, new_item


def emitted(stdout: str) -> list[dict[str, Any]]:
    """Each EMF record printed: its namespace, dimensions and metric values."""
    records = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            record = json.loads(line)
            directive = record["_aws"]["CloudWatchMetrics"][0]
            raw = {m["Name"]: record[m["Name"]] for m in directive["Metrics"]}
            values = {name: sum(v) if isinstance(v, list) else v for name, v in raw.items()}
            units = {m["Name"]: m.get("Unit") for m in directive["Metrics"]}
            records.append(
                {
                    "namespace": directive["Namespace"],
                    "service": record.get("service"),
                    "values": values,
                    "units": units,
                }
            )
    return records


@pytest.fixture
def process(function_env: pytest.MonkeyPatch) -> Iterator[Any]:
    function_env.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    function_env.setenv("NEXUS_SUMMARY_PROVIDER", "local")
    function_env.setenv("NEXUS_WEBHOOK_SECRET", SECRET)
    function_env.setenv("POWERTOOLS_SERVICE_NAME", "nexus-process")
    module = load_function("process")
    yield module
    if module.service.processor is not None:
        module.service.processor.store.close()


class Context:
    aws_request_id = "req-metrics"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def test_the_sweep_reports_its_work_and_the_backlog_the_alarms_watch(
    process: Any, admin: Any, client_id: uuid.UUID, capsys: Any
) -> None:
    for i in range(3):
        new_item(admin, client_id, f"Metrics item {i}. The dock contacts need cleaning every week.")
    capsys.readouterr()
    result = process.handler(load_event("eventbridge_scheduled.json"), Context())
    assert result["status"] == "ok" and result["done"] >= 3
    (record,) = emitted(capsys.readouterr().out)
    assert record["namespace"] == "NexusWorkers" and record["service"] == "nexus-process"
    values = record["values"]
    assert values["ItemsDone"] == result["done"] and values["ChunksStored"] == result["chunks"]
    assert values["ItemsFailed"] == 0 and values["ProviderBackedOff"] == 0
    assert values["FailedItems"] >= 0 and values["OldestPendingAgeSeconds"] >= 0
    assert record["units"]["OldestPendingAgeSeconds"] == "Seconds"
    assert values["IngestToDoneP95Seconds"] >= 0


def test_a_webhook_run_reports_its_item(process: Any, admin: Any, client_id: uuid.UUID, capsys: Any) -> None:
    item = new_item(admin, client_id, "One webhook item about the lidar lens.")
    body = {"type": "INSERT", "table": "knowledge_items", "schema": "public", "record": {"id": str(item)}}
    event = url_event(body, headers={"authorization": f"Bearer {SECRET}"}, path="/")
    capsys.readouterr()
    assert process.handler(event, Context())["statusCode"] == 200
    (record,) = emitted(capsys.readouterr().out)
    assert record["values"]["ItemsDone"] == 1 and "FailedItems" not in record["values"]


def test_ingest_and_search_count_their_work(
    function_env: pytest.MonkeyPatch, client_id: uuid.UUID, capsys: Any
) -> None:
    function_env.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    ingest = load_function("ingest")
    search = load_function("search")
    try:
        item = {
            "client_id": str(client_id),
            "source": "m.md",
            "content": "Metrics note.",
            "external_id": "m-1",
        }
        capsys.readouterr()
        assert call(ingest, url_event(item))[0] == 201
        assert call(ingest, url_event(item))[0] == 200  # the same external_id and content: a duplicate
        records = emitted(capsys.readouterr().out)
        assert [r["values"] for r in records] == [
            {"ItemsIngested": 1, "DuplicateItems": 0},
            {"ItemsIngested": 0, "DuplicateItems": 1},
        ]
        query = url_event({"query": "metrics", "client_id": str(client_id)}, path="/api/knowledge/search")
        assert call(search, query)[0] == 200
        (record,) = emitted(capsys.readouterr().out)
        assert record["values"] == {"Searches": 1, "SearchHits": 0}  # nothing processed for it yet
    finally:
        close_function(ingest)
        if search.endpoint.store is not None:
            search.endpoint.store.close()

"""The process function's service: one object that answers every trigger.

Each entry point (Lambda: function URL webhook, SQS batch, EventBridge schedule;
functions-framework: webhook HTTP, Pub/Sub CloudEvent) parses its event and calls a method
here, which claims the items and runs the pipeline.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.config import Settings, get_settings
from shared.errors import ConfigError, NexusError
from shared.http.auth import bearer_token, matches_any_secret
from shared.http.messages import HttpRequest, HttpResponse
from shared.http.problems import ProblemError
from shared.logs import get_logger
from shared.process.pipeline import Processor, processor_from_settings
from shared.process.report import ProcessingReport, new_worker_id
from shared.runtime.context import invocation_id, remaining_time
from shared.runtime.events import EventError, item_to_process, parse_json
from shared.runtime.metrics import emit_metrics

__all__ = ["ProcessService", "item_result"]


@dataclass
class ProcessService:
    """Wiring for processing; `None` collaborators are built from settings on first use."""

    settings: Settings | None = None
    processor: Processor | None = None

    def _settings(self) -> Settings:
        if self.settings is None:
            self.settings = get_settings()
        return self.settings

    def _processor(self, context: Any) -> Processor:
        """A processor for this invocation: shared clients, its own worker id (threaded servers
        run invocations concurrently, and a lease must name the invocation that holds it)."""
        if self.processor is None:
            self.processor = processor_from_settings(self._settings())
        return self.processor.for_worker(new_worker_id(invocation_id(context)))

    def process_item(self, item_id: uuid.UUID, context: Any = None) -> ProcessingReport:
        """Process one item now (if it still needs it) within the invocation's time."""
        remaining = remaining_time(context)
        report = self._processor(context).process_ids([item_id], remaining)
        emit_run_metrics(report)
        return report

    # -- the webhook (HTTP) ---------------------------------------------------------------------

    def handle_webhook(self, request: HttpRequest) -> HttpResponse:
        """A Supabase database webhook delivery. Never raises."""
        try:
            return self._webhook(request, request.context)
        except ProblemError as problem:
            return problem.to_response()
        except NexusError as exc:
            get_logger().error("webhook could not run", extra={"error": str(exc)})
            return ProblemError(exc.status, str(exc)).to_response()
        except Exception as exc:
            get_logger().exception("webhook failed", extra={"error": type(exc).__name__})
            return ProblemError(
                500, "An internal error occurred; the sweep will retry the item."
            ).to_response()

    def _webhook(self, request: HttpRequest, context: Any) -> HttpResponse:
        if request.method.upper() != "POST":
            raise ProblemError(405, "Use POST to deliver a webhook.", headers={"allow": "POST"})
        secret = self._settings().webhook_secret
        if not secret:
            raise ConfigError("NEXUS_WEBHOOK_SECRET is not set.")
        token = bearer_token(request.header("authorization"))
        if not matches_any_secret(token, (secret,)):
            raise ProblemError(
                401, "The webhook secret is not valid.", headers={"www-authenticate": "Bearer"}
            )
        try:
            item_id = item_to_process(parse_json(request.body))
        except EventError as exc:
            raise ProblemError(422 if request.body.strip() else 400, str(exc)) from None
        if item_id is None:
            return HttpResponse.json(200, {"status": "ignored"})
        report = self.process_item(item_id, context)
        return _item_response(item_id, report)

    # -- queue, schedule, pub/sub ---------------------------------------------------------------

    def handle_sqs(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """An SQS batch: returns the partial batch response naming only the failed messages."""
        by_item: dict[uuid.UUID, list[str]] = {}
        failures: list[str] = []
        for record in event["Records"]:
            message_id = str(record.get("messageId", ""))
            try:
                item_id = item_to_process(parse_json(record.get("body") or ""))
            except EventError as exc:
                get_logger().warning(
                    "unreadable queue message", extra={"message_id": message_id, "error": str(exc)}
                )
                failures.append(message_id)
                continue
            if item_id is not None:
                by_item.setdefault(item_id, []).append(message_id)
        if by_item:
            try:
                remaining = remaining_time(context)
                report = self._processor(context).process_ids(list(by_item), remaining)
                emit_run_metrics(report)
                failed_items = report.failed_ids
            except NexusError as exc:
                get_logger().error("queue batch could not be processed", extra={"error": str(exc)})
                failed_items = set(by_item)
            failures += [m for item_id in failed_items for m in by_item.get(item_id, [])]
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}

    def handle_schedule(self, context: Any = None) -> dict[str, Any]:
        """The scheduled sweep: process whatever is claimable within the remaining time."""
        processor = self._processor(context)
        report = processor.sweep(remaining_time(context), wait_for_probe=True)
        get_logger().info("sweep finished", extra=report.as_dict())
        emit_run_metrics(report, processor.store)
        return {"status": "ok", **report.as_dict()}

    def handle_message(self, body: Any, context: Any = None) -> dict[str, Any]:
        """A Pub/Sub message body (webhook body or {"knowledge_item_id"})."""
        item_id = item_to_process(body)
        if item_id is None:
            return {"status": "ignored"}
        report = self.process_item(item_id, context)
        if item_id in report.failed_ids:
            # Raising makes Pub/Sub redeliver with its own backoff.
            raise NexusError(f"Processing knowledge item {item_id} failed; it will be retried.")
        return {"status": _item_status(item_id, report), **report.as_dict()}


def emit_run_metrics(report: ProcessingReport, store: Any = None) -> None:
    """What a run did, as metrics; with `store` (the sweep, every few minutes), also the state of
    the whole backlog the alarms watch: failed items, the oldest pending item's age, freshness."""
    values: dict[str, float | tuple[float, str]] = {
        "ItemsDone": report.done,
        "ItemsFailed": report.failed,
        "ItemsDeferred": report.deferred,
        "ItemsReleased": report.released,
        "ChunksStored": report.chunks,
        "EmbeddedTokens": report.embedded_tokens,
        "ProviderBackedOff": 1 if report.backed_off is not None else 0,
    }
    if store is not None:
        try:
            status = store.status()
        except NexusError as exc:
            get_logger().warning("backlog metrics not read", extra={"error": str(exc)})
        else:
            values["FailedItems"] = int((status.get("counts") or {}).get("failed", 0))
            values["OldestPendingAgeSeconds"] = (
                float(status.get("oldest_pending_age_seconds") or 0),
                "Seconds",
            )
            fresh = status.get("freshness") or {}
            if fresh.get("done_in_window"):
                values["IngestToDoneP95Seconds"] = (float(fresh["ingest_to_done_p95_seconds"]), "Seconds")
            if fresh.get("indexed_in_window"):
                values["IngestToIndexedP95Seconds"] = (
                    float(fresh["ingest_to_indexed_p95_seconds"]),
                    "Seconds",
                )
    emit_metrics(values, "process")


def _item_response(item_id: uuid.UUID, report: ProcessingReport) -> HttpResponse:
    if item_id in report.failed_ids:
        return ProblemError(
            502, f"Processing knowledge item {item_id} failed; it is recorded and the sweep will retry it."
        ).to_response()
    return HttpResponse.json(200, item_result(item_id, report))


def item_result(item_id: uuid.UUID, report: ProcessingReport) -> dict[str, Any]:
    """What became of one item asked for by id, with the run's counts: `{"knowledge_item_id",
    "status", "claimed", "done", ...}`. The status is "failed" (this attempt failed; it is
    recorded and retried until NEXUS_MAX_ATTEMPTS), or as `_item_status` says."""
    status = "failed" if item_id in report.failed_ids else _item_status(item_id, report)
    return {"knowledge_item_id": str(item_id), "status": status, **report.as_dict()}


def _item_status(item_id: uuid.UUID, report: ProcessingReport) -> str:
    """done; released (time ran out before its summary: back in the queue for the sweep);
    deferred (the provider failed, or the fleet is backed off from it: the sweep takes it once
    the provider answers, no attempt counted); or skipped (already done, or leased by another
    worker)."""
    if item_id in report.done_ids:
        return "done"
    if item_id in report.released_ids:
        return "released"
    if item_id in report.deferred_ids or report.backed_off is not None:
        return "deferred"
    return "skipped"

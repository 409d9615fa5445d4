"""Telling the process function about new items: an SQS message per item when `NEXUS_QUEUE_URL` is set.

Sending is best effort by design: the item is already stored as `pending`, and the scheduled
sweep processes anything whose message was lost, so a queue outage never fails an ingest.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from shared.logs import get_logger

SQS_BATCH_LIMIT = 10


class ItemQueue(Protocol):
    def send_item_ids(self, item_ids: Sequence[uuid.UUID]) -> int:
        """Queue one message per item; return how many were accepted."""
        ...


class NoQueue:
    """No queue configured: the webhook or the sweep picks items up."""

    def send_item_ids(self, item_ids: Sequence[uuid.UUID]) -> int:
        return 0


class SqsQueue:
    """Sends `{"knowledge_item_id": …}` messages with SendMessageBatch (10 per call)."""

    def __init__(self, queue_url: str, client: Any = None) -> None:
        self.queue_url = queue_url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Tight timeouts: a stalled queue must not hold up the ingest answer (the sweep
            # catches up on anything whose message is lost).
            config = Config(
                connect_timeout=1, read_timeout=2, retries={"mode": "standard", "max_attempts": 2}
            )
            self._client = boto3.client("sqs", config=config)
        return self._client

    def send_item_ids(self, item_ids: Sequence[uuid.UUID]) -> int:
        sent = 0
        for start in range(0, len(item_ids), SQS_BATCH_LIMIT):
            batch = item_ids[start : start + SQS_BATCH_LIMIT]
            entries = [
                {"Id": str(i), "MessageBody": json.dumps({"knowledge_item_id": str(item_id)})}
                for i, item_id in enumerate(batch)
            ]
            try:
                result = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as exc:  # any transport or AWS error: the sweep will catch up
                get_logger().warning(
                    "queue send failed; the sweep will process these items",
                    extra={
                        "error": type(exc).__name__,
                        "knowledge_item_ids": [str(i) for i in item_ids[start:]],
                    },
                )
                break  # the queue is down: don't wait on it again for the rest
            failed = result.get("Failed", [])
            if failed:
                get_logger().warning(
                    "queue rejected messages; the sweep will process these items",
                    extra={"failed": len(failed)},
                )
            sent += len(result.get("Successful", []))
        return sent

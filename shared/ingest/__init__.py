"""Ingest: validate knowledge items, store each once, queue the new ones.

`api` is the HTTP endpoint (any runtime), `items` an item as sent, `service` the rules,
`documents` files sent as base64, `files` local files for `nexus ingest`, `queue` the SQS notice,
`metadata` what ingest extracts, `worker` the seed's `IngestWorker().ingest(data)`."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "IngestEndpoint": "api",
    "IngestItem": "items",
    "IngestResult": "service",
    "ingest_items": "service",
    "parse_items": "service",
    "ingest_files": "files",
    "ItemQueue": "queue",
    "NoQueue": "queue",
    "SqsQueue": "queue",
    "extract_metadata": "metadata",
    "IngestWorker": "worker",
}
__all__ = [
    "IngestEndpoint",
    "IngestItem",
    "IngestResult",
    "IngestWorker",
    "ItemQueue",
    "NoQueue",
    "SqsQueue",
    "extract_metadata",
    "ingest_files",
    "ingest_items",
    "parse_items",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.ingest.api import IngestEndpoint
    from shared.ingest.files import ingest_files
    from shared.ingest.items import IngestItem
    from shared.ingest.metadata import extract_metadata
    from shared.ingest.queue import ItemQueue, NoQueue, SqsQueue
    from shared.ingest.service import IngestResult, ingest_items, parse_items
    from shared.ingest.worker import IngestWorker

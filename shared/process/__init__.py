"""Processing: claimed items → chunks → embeddings → summaries → stored, for every trigger.

`service` answers the function's triggers (`ProcessService`); `pipeline` is the orchestration
(`Processor`), running a claim through `stages` (chunk, embed, summarise, with `feed` sending the
embedding requests while chunking goes on) and recording what became of each item in `outcomes`
(judged by `troubles`); `budgets` shares out the invocation's time; `summaries` keeps summaries
in the store (the memo, the client fold); `report` says what a run did; `batch` runs on demand
(`nexus process`, `nexus demo`); `seed` keeps the seed's `process_knowledge_item` and
`process_message`."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "ProcessService": "service",
    "Processor": "pipeline",
    "processor_from_settings": "pipeline",
    "ProcessingReport": "report",
    "fold_client_summary": "summaries",
    "items_to_process": "batch",
    "process_all": "batch",
    "process_knowledge_item": "seed",
    "process_message": "seed",
}
__all__ = [
    "ProcessService",
    "ProcessingReport",
    "Processor",
    "fold_client_summary",
    "items_to_process",
    "process_all",
    "process_knowledge_item",
    "process_message",
    "processor_from_settings",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.process.batch import items_to_process, process_all
    from shared.process.pipeline import Processor, processor_from_settings
    from shared.process.report import ProcessingReport
    from shared.process.seed import process_knowledge_item, process_message
    from shared.process.service import ProcessService
    from shared.process.summaries import fold_client_summary

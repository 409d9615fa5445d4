"""Nexus Workers' shared package: the services behind the functions and the `nexus` command.

Sub-packages by concept, each with its public names in `__all__` (layers, top to bottom; a layer
imports only from those below it, checked by import-linter):

- `cli` — the `nexus` command; `local` — embedded Postgres, `nexus dev`, replay, demo
- `ingest`, `process`, `search`, `gcal` — the services the functions call
- `providers` (embeddings, summaries, the OpenAI HTTP client), `runtime` (event shapes, Lambda
  and functions-framework adapters, the list of functions)
- `store` (Postgres through psycopg or PostgREST, migrations), `http` (messages, problems, auth)
- `text` (tokenizer, chunking, hashing, HTML to text)
- `config`, then `errors`, `logs`, `lazy`

The seed's functions keep a public home here with their names and signatures. Importing this
package imports nothing else: each function's cold start pays only for what it uses."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "chunk_text": "text",
    "embed_text": "providers",
    "generate_summary": "providers",
    "process_knowledge_item": "process",
    "process_message": "process",
    "IngestWorker": "ingest",
    "load_credentials_from_supabase": "gcal",
    "save_credentials_to_supabase": "gcal",
    "refresh_token_if_needed": "gcal",
    "run_initial_oauth_flow": "gcal",
}
__all__ = [
    "IngestWorker",
    "chunk_text",
    "embed_text",
    "generate_summary",
    "load_credentials_from_supabase",
    "process_knowledge_item",
    "process_message",
    "refresh_token_if_needed",
    "run_initial_oauth_flow",
    "save_credentials_to_supabase",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.gcal import (
        load_credentials_from_supabase,
        refresh_token_if_needed,
        run_initial_oauth_flow,
        save_credentials_to_supabase,
    )
    from shared.ingest import IngestWorker
    from shared.process import process_knowledge_item, process_message
    from shared.providers import embed_text, generate_summary
    from shared.text import chunk_text

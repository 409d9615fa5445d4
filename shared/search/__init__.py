"""Search: embed the query with the active embedder, then `match_knowledge_chunks` (HNSW, cosine)."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "search": "service",
    "MAX_K": "service",
}
__all__ = [
    "MAX_K",
    "search",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.search.service import MAX_K, search

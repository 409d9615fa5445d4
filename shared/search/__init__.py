"""Search: hybrid (full-text and vector, fused), vector or text; `api` is the HTTP door
(`POST /api/knowledge/search`)."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "search": "service",
    "MAX_K": "service",
    "SEARCH_MODES": "service",
    "SearchEndpoint": "api",
}
__all__ = [
    "MAX_K",
    "SEARCH_MODES",
    "SearchEndpoint",
    "search",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.search.api import SearchEndpoint
    from shared.search.service import MAX_K, SEARCH_MODES, search

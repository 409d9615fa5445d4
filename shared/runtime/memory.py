"""Keeping a long, threaded run's memory bounded by its work rather than by its threads.

glibc gives each thread that allocates under contention an arena of its own (up to eight per
core) and keeps what is freed there for that arena. A claim's chunks, requests and vectors are
allocated by the chunking, embedding and summarising threads, so its peak was held several times
over: `nexus process --all` over the whole PostgreSQL manual peaked at 188–212 MiB, and with two
arenas at 162–168 MiB (bench/README.md). `MALLOC_ARENA_MAX=2` does the same for a process whose
environment sets it (the deployed functions' configuration).
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["limit_malloc_arenas"]

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before starting threads); whether it took effect. A no-op
    off Linux or with another C library."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False

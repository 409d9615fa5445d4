"""Peak resident memory of the current process, for the benchmarks' worker subprocesses."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: `VmHWM` from /proc/self/status on Linux, else ru_maxrss.

    On Linux `ru_maxrss` is not this image's own peak: exec keeps the high-water mark of the
    image it replaced, so a child of a large parent (a bench's parent holds psycopg and the
    embedded server's wrapper) would report the parent's RSS. VmHWM belongs to the new image.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """`getrusage(RUSAGE_SELF).ru_maxrss` in MiB (KiB on Linux, bytes on macOS)."""
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale

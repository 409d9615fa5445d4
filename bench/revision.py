"""Which code a benchmark measured: the commit, and the tracked files changed since (the product
may change under a bench that runs for minutes)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_revision(tree: Path) -> str:
    """`<short commit>` of the checkout at `tree`, with ` + uncommitted <files>` when tracked files
    differ from it; the tree's path when it is not a checkout (e.g. a `git archive` of a commit)."""
    if not (tree / ".git").exists():
        return str(tree)
    try:
        head = _git(tree, "rev-parse", "--short", "HEAD").strip()
        changed = _git(tree, "status", "--porcelain", "--untracked-files=no").split("\n")
    except (OSError, subprocess.CalledProcessError):
        return str(tree)
    dirty = sorted(line[3:] for line in changed if line.strip())
    return f"{head} + uncommitted {', '.join(dirty)}" if dirty else head


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True, check=True).stdout

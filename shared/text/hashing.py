"""Content hashes: what stored chunks, reused embeddings and cached summaries are keyed by.

The same text always hashes the same way (UTF-8, sha256, lower-case hex), in Python here and in
SQL (`encode(sha256(convert_to(text, 'UTF8')), 'hex')`), so a hash written by one backend is found
by the other.
"""

from __future__ import annotations

import hashlib

__all__ = ["sha256_hex", "sha256_of_parts"]


def sha256_hex(text: str) -> str:
    """The sha256 of `text` encoded as UTF-8, as 64 lower-case hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_of_parts(*parts: str) -> str:
    """One sha256 over several texts, each followed by a NUL byte, so ("ab", "c") and ("a", "bc")
    differ."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()

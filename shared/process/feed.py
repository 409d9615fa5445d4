"""The embedding feed: a claim's chunks → packed embedding requests, sent while chunking goes on.

Its own module because it is the one stateful piece of the claim's stages: it owns the look-ups
of stored embeddings, the packing of what is missing into requests, and the background requests
in flight; the pipeline only adds chunked items and collects the vectors at the end.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shared.process.budgets import is_local
from shared.process.report import ProcessingReport
from shared.process.usage import ClaimUsage
from shared.providers.deadlines import submit
from shared.providers.embeddings import Embedder, EmbeddingError
from shared.providers.usage import UsageMeter, metered
from shared.store import Store
from shared.text.chunking import Chunk

__all__ = ["FIND_BATCH", "EmbeddingFeed", "requests_needed"]

FIND_BATCH = 1000  # chunk hashes looked up in the store per query


def requests_needed(tokens: float, inputs: float, max_tokens: int, max_inputs: int) -> int:
    """The fewest requests that can carry `inputs` inputs of `tokens` tokens in all."""
    return max(math.ceil(tokens / max_tokens), math.ceil(inputs / max_inputs))


class EmbeddingFeed:
    """Embedding requests sent while a claim is still being chunked.

    Chunk hashes are looked up (stored embeddings are reused) in batches as items are chunked;
    the texts still missing fill requests in order, and each request goes out on a background
    thread (up to the embedder's concurrency) as soon as it is filled, so the server works while
    the worker chunks. A request is filled to its even share of the claim, not to the limit:
    the whole claim's tokens to embed are extrapolated from the part chunked so far, and a
    request goes out at that share when the rest, even ESTIMATE_MARGIN times larger than
    estimated, still fits in the requests left. The count stays the fewest the limits allow (as
    `pack_requests` would give for the whole claim), and what is left to send when chunking ends,
    the part nothing can overlap, is one share instead of a full request plus the remainder. A
    claim much less uniform than the part seen can cost one request more; never a token more.

    After a failed request nothing more is sent: the texts left are the pipeline's to embed or
    fail. A local embedder (CPU-bound, in this process) gets no background requests: it runs at
    the end.
    """

    LOOKUP_BATCH = 256
    ESTIMATE_MARGIN = 1.25  # how much larger than estimated the rest of a claim may turn out

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        report: ProcessingReport,
        claim_chars: int,
        usage: ClaimUsage | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.report = report
        self.usage = usage
        self.texts: dict[str, Chunk] = {}  # a chunk of every distinct text, by its hash
        self.vectors: dict[str, Any] = {}
        self.error: EmbeddingError | None = None
        self.max_tokens = embedder.max_request_tokens
        self.max_inputs = embedder.max_request_inputs
        self._claim_chars = claim_chars
        self._chars_added = 0
        self._chars_looked_up = 0
        self._unlooked: list[str] = []
        self._pack: list[str] = []
        self._pack_tokens = 0
        self._wanted_tokens = self._wanted_inputs = 0  # of the chunks looked up and found missing
        self._sent_tokens = self._sent_inputs = 0  # of those, already sent
        self._sent: list[tuple[list[str], Future[tuple[list[Any], UsageMeter]]]] = []
        self._pool = (
            None if is_local(embedder) else ThreadPoolExecutor(max_workers=max(1, embedder.concurrency))
        )

    def __enter__(self) -> EmbeddingFeed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, chunks: list[Chunk], hashes: list[str], content_chars: int) -> None:
        """An item chunked: its chunks, their hashes, and its content's length."""
        for chunk, digest in zip(chunks, hashes, strict=True):
            if digest not in self.texts:
                self.texts[digest] = chunk
                self._unlooked.append(digest)
        self._chars_added += content_chars
        if len(self._unlooked) >= self.LOOKUP_BATCH:
            self._look_up()

    def finish(self) -> tuple[dict[str, Any], EmbeddingError | None]:
        """Send what is left, wait for every request; the vectors known, and the first error."""
        self._look_up()
        if self._pack:
            self._send(len(self._pack))
        for hashes, future in self._sent:
            try:
                vectors, meter = future.result()
            except EmbeddingError as exc:
                self.error = self.error or exc
                continue
            self.vectors.update(zip(hashes, vectors, strict=True))
            if self.usage is not None:
                self.usage.embedded(hashes, [self.texts[h].token_count for h in hashes], meter)
            self.report.embedded_chunks += len(hashes)
            self.report.embedded_tokens += sum(self.texts[h].token_count for h in hashes)
        self._sent = []
        return self.vectors, self.error

    def _look_up(self) -> None:
        """Find stored embeddings for the chunks added since the last look-up; queue the rest."""
        hashes, self._unlooked = self._unlooked, []
        for start in range(0, len(hashes), FIND_BATCH):
            found = self.store.find_embeddings(
                hashes[start : start + FIND_BATCH], self.embedder.model, self.embedder.dimensions
            )
            self.vectors.update(found)
            self.report.reused_chunks += len(found)
        missing = [h for h in hashes if h not in self.vectors]
        self._chars_looked_up = self._chars_added
        self._wanted_tokens += sum(self.texts[h].token_count for h in missing)
        self._wanted_inputs += len(missing)
        for digest in missing:
            tokens = self.texts[digest].token_count
            if self._overflows(tokens):
                self._send_shares()
                if self._overflows(tokens):
                    self._send(len(self._pack))
            self._pack.append(digest)
            self._pack_tokens += tokens
        self._send_shares()

    def _overflows(self, tokens: int) -> bool:
        """Whether one more input of `tokens` would break a request limit."""
        if not self._pack:
            return False
        return len(self._pack) >= self.max_inputs or self._pack_tokens + tokens > self.max_tokens

    def _send_shares(self) -> None:
        """Send the front of the pack while it holds an even share of the requests left."""
        if self._pool is None or not self._chars_looked_up:
            return
        scale = max(1.0, self._claim_chars / self._chars_looked_up)
        while self._pack:
            tokens_left = self._wanted_tokens * scale - self._sent_tokens
            inputs_left = self._wanted_inputs * scale - self._sent_inputs
            requests_left = self._requests_for(tokens_left, inputs_left)
            if requests_left < 2:
                return
            token_share, input_share = tokens_left / requests_left, inputs_left / requests_left
            count, taken = 0, 0
            while count < len(self._pack) and taken < token_share and count < input_share:
                taken += self.texts[self._pack[count]].token_count
                count += 1
            if taken < token_share and count < input_share:
                return  # not a share yet
            margin = self.ESTIMATE_MARGIN if scale > 1 else 1.0  # once all is looked up, it is exact
            if (
                self._requests_for(margin * (tokens_left - taken), margin * (inputs_left - count))
                >= requests_left
            ):
                return  # the rest might not fit in the requests left: fill this one further
            self._send(count)

    def _requests_for(self, tokens: float, inputs: float) -> int:
        return requests_needed(tokens, inputs, self.max_tokens, self.max_inputs)

    def _send(self, count: int) -> None:
        pack, self._pack = self._pack[:count], self._pack[count:]
        tokens = [self.texts[h].token_count for h in pack]
        self._pack_tokens -= sum(tokens)
        self._sent_tokens += sum(tokens)
        self._sent_inputs += len(pack)
        if self._pool is None or any(f.done() and f.exception() for _, f in self._sent):
            return  # embedded (or failed) by the pipeline afterwards
        texts = [self.texts[h].text for h in pack]
        ids = [self.texts[h].token_ids for h in pack]
        self._sent.append((pack, submit(self._pool, self._embed, texts, tokens, ids)))

    def _embed(self, texts: list[str], tokens: list[int], ids: list[Any]) -> tuple[list[Any], UsageMeter]:
        """One request's vectors, and what the API said it cost."""
        with metered() as meter:
            return self.embedder.embed(texts, tokens, ids), meter

"""Summarisers: a summary per item and a running summary per client.

The OpenAI summariser map-reduces long items: groups of chunks up to a bounded input size are
summarised, then the partial summaries are combined, so any item fits the model's context and
cost grows linearly. A client's summary is folded incrementally: previous client summary plus
the new item summaries in, new client summary out; items are never re-read.

The local summariser is extractive and offline: it picks the most representative sentences.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Any, Protocol, TypeGuard

from shared.errors import ConfigError, NexusError
from shared.providers.cache import ProviderCache
from shared.providers.deadlines import submit
from shared.providers.limits import current_limiter
from shared.providers.openai_http import (
    DEFAULT_BASE_URL,
    QUOTA_MESSAGE,
    Call,
    RetryPolicy,
    error_of,
    failure_kind,
    post_with_retries,
    provider_key,
    retry_after_s,
)
from shared.providers.usage import report_usage
from shared.text.hashing import sha256_of_parts
from shared.text.tokenizer import count_tokens

MAP_INPUT_TOKENS = 12_000  # bounded input per call, well inside gpt-4o-mini's context
SUMMARY_WORDS = 120
MAX_CHARS_PER_WORD = 8  # bounds an extractive summary's length where words are not spaced
CLIENT_SUMMARY_WORDS = 150
ANSWER_TOKENS = 400  # what a rate limit reserves for an answer of CLIENT_SUMMARY_WORDS or fewer


class SummaryError(NexusError):
    """Summarising failed. `retryable` says whether a later attempt may succeed."""

    def __init__(
        self, message: str, *, retryable: bool, code: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code
        self.retry_after_s = retry_after_s  # what the provider asked for, when it did


class SummaryMemo(Protocol):
    """Summaries already paid for, by `summary_key` (the pipeline keeps them in the store)."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, summary: str) -> None: ...


def summary_key(model: str, instruction: str, text: str) -> str:
    """What a chat summary is bound to: the model, the instruction and the input text (the keys
    the store already holds: changing how they are made would pay for every summary again)."""
    return sha256_of_parts(model, instruction, text)


class Summarizer(Protocol):
    """Summarises items and folds item summaries into a client's running summary."""

    model: str
    fold_batch: int  # item summaries folded into the client summary per call

    @property
    def provider_key(self) -> str | None:
        """The API whose back-off it shares with the fleet (None offline: it has none)."""
        ...

    def summarize_item(self, chunks: Sequence[str], source: str = "") -> str:
        """A short summary of one item given its chunks in order."""
        ...

    def fold_client(self, previous: str, item_summaries: Sequence[str]) -> str:
        """The client's new summary from its previous one and the summaries of new items."""
        ...


class MemoizingSummarizer(Summarizer, Protocol):
    """A summariser whose calls cost money, so a memo may answer them: it names the keys of an
    item's first round of calls (for the pipeline to fetch from the store at once), and answers
    what the memo knows without calling."""

    def first_keys(
        self, chunks: Sequence[str], source: str = "", token_counts: Sequence[int] | None = None
    ) -> list[str]: ...

    def summarize_item(
        self,
        chunks: Sequence[str],
        source: str = "",
        memo: SummaryMemo | None = None,
        token_counts: Sequence[int] | None = None,
    ) -> str: ...


def memoizes(summarizer: Summarizer) -> TypeGuard[MemoizingSummarizer]:
    """Whether the summariser's calls can be memoised (it names its calls' keys)."""
    return hasattr(summarizer, "first_keys")


# Within a paragraph's prose (whitespace already collapsed to single spaces) a sentence ends at
# . ! or ? before a space and a capital or a digit (a closing quote or bracket after the mark is
# dropped with the space); paragraphs are joined by "\n", which also ends a sentence.
_SENTENCE_END = re.compile(r"[.!?](?:[\"'\u201d\u2019)]? (?=[\"'\u201c(]?[A-Z0-9])|(?=\n))|\n")
# Markdown marks at the start of a line (lists, quotes, headings); emphasis marks (* _ `) are
# deleted anywhere afterwards.
_LINE_MARKUP = re.compile(
    r"^[^\S\n]{0,3}(?:#{1,6}[^\S\n]+|[-*+][^\S\n]+(?:\[[ xX]\][^\S\n]+)?|\d+[.)][^\S\n]+|>[^\S\n]?)",
    re.M,
)
# A line that is dropped: a table row (any "|") or a heading. Its line break goes with it, so the
# lines around it stay one paragraph.
_DROPPED_LINE = re.compile(r"^(?:[^\S\n]*#[^\n]*|[^\n]*\|[^\n]*)(?:\n|\Z)", re.M)
_WORD = re.compile(r"\w+", re.UNICODE)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_PARAGRAPH_MARK = "\n\x1e\n"  # str.splitlines() breaks lines at \x1e, so no text line holds one
_STOP = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will "
    "with we you your our not no can may must should if then than their there they them these those "
    "which who what when where how all any each per into out up so do does".split()
)


def _clean_sentences(text: str) -> list[tuple[str, list[str]]]:
    """Whole sentences of prose, each with its words lowercased: markdown marks removed, lines of
    a paragraph joined, headings, table rows and fragments dropped. Each step is one pass over
    the whole text in C (regex or str method), not a Python loop per paragraph or line."""
    text = "\n".join(text.splitlines())  # every line break as "\n"; none of them is left a \x1e
    paragraphs = _PARAGRAPH_BREAK.split(text)
    # Paragraphs are kept apart by a line of their own, so a line emptied below (a list marker
    # alone) cannot make a new paragraph break.
    text = _PARAGRAPH_MARK.join(p for p in paragraphs if p.strip())
    text = _LINE_MARKUP.sub("", _DROPPED_LINE.sub("", text))
    text = text.replace("*", "").replace("_", "").replace("`", "")  # faster than str.translate
    prose = "\n".join(" ".join(p.split()) for p in text.split(_PARAGRAPH_MARK))
    # (end of a sentence, start of the next): the mark is kept, what follows it dropped
    cuts = [(m.start() + (m.group() != "\n"), m.end()) for m in _SENTENCE_END.finditer(prose)]
    cuts.append((len(prose), len(prose)))
    sentences = []
    start = 0
    for end, next_start in cuts:
        if end > start and prose[end - 1] in ".!?":
            words = _WORD.findall(prose[start:end].lower())
            if len(words) >= 6:
                sentences.append((prose[start:end], words))
        start = next_start
    return sentences


def extract_summary(text: str, max_words: int = SUMMARY_WORDS) -> str:
    """The highest-scoring sentences (by frequency of their content words), in original order."""
    sentences = _clean_sentences(text)
    if not sentences:
        # No prose sentences (a table, code, base64, text written without spaces): the opening
        # words, at most MAX_CHARS_PER_WORD characters a word, so one unspaced run cannot make the
        # "summary" the whole document.
        return " ".join(text[: max_words * MAX_CHARS_PER_WORD * 2].split()[:max_words])[
            : max_words * MAX_CHARS_PER_WORD
        ]
    # Each sentence's words are found once; counting (stop words too: they are never looked up)
    # and scoring reuse them.
    frequency = Counter(chain.from_iterable(words for _, words in sentences))
    scores = [
        sum(map(frequency.__getitem__, set(words) - _STOP)) / (len(words) ** 0.5) for _, words in sentences
    ]
    ranked = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    total = 0
    for i in ranked:
        length = len(sentences[i][0].split())
        if chosen and total + length > max_words:
            continue
        chosen.append(i)
        total += length
        if total >= max_words * 0.8:
            break
    return " ".join(sentences[i][0] for i in sorted(chosen))


class LocalSummarizer:
    """Extractive, offline, deterministic."""

    model = "local-extractive-v1"
    fold_batch = 1000  # no prompt to fit: a large backlog folds in one pass
    provider_key = None  # offline: nothing to back off from

    def summarize_item(self, chunks: Sequence[str], source: str = "") -> str:
        return extract_summary("".join(chunks))

    def fold_client(self, previous: str, item_summaries: Sequence[str]) -> str:
        return extract_summary("\n".join([previous, *item_summaries]), CLIENT_SUMMARY_WORDS)


class OpenAISummarizer:
    """gpt-4o-mini (or any chat model) through `/chat/completions` (`shared.providers.openai_http`'s retries).

    A long item is map-reduced: its parts are summarised `map_concurrency` at a time, then the
    partial summaries combined. With a memo, every call's answer is kept by `summary_key`, and
    a call whose key the memo knows is not made again: an unchanged item reuses its summary, and
    an item given back half-way resumes from the parts already summarised.
    """

    def __init__(
        self,
        api_key: str,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        timeout_s: float = 90.0,
        retry: RetryPolicy | None = None,
        map_concurrency: int = 4,
    ) -> None:
        import httpx

        self.model = model
        self.fold_batch = 50  # keeps each fold prompt well inside the model's context
        self.retry = retry or RetryPolicy()
        self.map_concurrency = max(1, map_concurrency)
        self.provider_key = provider_key(base_url)
        self._api_key = api_key  # only to mask it out of upstream error messages
        self._timeout_s = timeout_s
        self._client = httpx.Client(
            base_url=(base_url or DEFAULT_BASE_URL).rstrip("/") + "/",
            headers={"authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )

    def close(self) -> None:
        self._client.close()

    def _item_instruction(self, source: str) -> str:
        return (
            f"Summarise this document{f' ({source})' if source else ''} in at most {SUMMARY_WORDS} words. "
            "Keep names, numbers and decisions; no preamble."
        )

    def first_calls(
        self, chunks: Sequence[str], source: str = "", token_counts: Sequence[int] | None = None
    ) -> list[tuple[str, str, str]]:
        """An item's first round of calls as (memo key, instruction, text): for an item of one
        part, its summary. `token_counts`: the chunks' exact cl100k counts, when known."""
        instruction = self._item_instruction(source)
        groups = _group_chunks(chunks, MAP_INPUT_TOKENS, token_counts)
        return [(summary_key(self.model, instruction, group), instruction, group) for group in groups]

    def first_keys(
        self, chunks: Sequence[str], source: str = "", token_counts: Sequence[int] | None = None
    ) -> list[str]:
        """The memo keys of an item's first round of calls (`first_calls`)."""
        return [key for key, _, _ in self.first_calls(chunks, source, token_counts)]

    def summarize_item(
        self,
        chunks: Sequence[str],
        source: str = "",
        memo: SummaryMemo | None = None,
        token_counts: Sequence[int] | None = None,
    ) -> str:
        instruction = self._item_instruction(source)
        partials = self._map(instruction, _group_chunks(chunks, MAP_INPUT_TOKENS, token_counts), memo)
        while len(partials) > 1:  # reduce until one summary remains
            partials = self._map(
                instruction + " These are summaries of consecutive parts.",
                _group_chunks(partials, MAP_INPUT_TOKENS),
                memo,
            )
        return partials[0]

    def _map(self, instruction: str, texts: list[str], memo: SummaryMemo | None) -> list[str]:
        if len(texts) == 1 or self.map_concurrency == 1:
            return [self._complete(instruction, text, memo) for text in texts]
        with ThreadPoolExecutor(max_workers=min(self.map_concurrency, len(texts))) as pool:
            futures = [submit(pool, self._complete, instruction, text, memo) for text in texts]
            try:
                return [future.result() for future in futures]
            finally:
                for future in futures:
                    future.cancel()

    def fold_client(self, previous: str, item_summaries: Sequence[str]) -> str:
        instruction = (
            f"You maintain a running summary, at most {CLIENT_SUMMARY_WORDS} words, of everything one "
            "client has shared. Update the current summary with the new document summaries; keep what "
            "still matters, add what is new, no preamble."
        )
        parts = [f"Current summary:\n{previous or '(none yet)'}"]
        parts += [f"New document summary:\n{s}" for s in item_summaries]
        return self._complete(instruction, "\n\n".join(parts))

    def _complete(self, instruction: str, text: str, memo: SummaryMemo | None = None) -> str:
        key = summary_key(self.model, instruction, text) if memo is not None else ""
        if memo is not None:
            known = memo.get(key)
            if known is not None:
                return known
        answer = self._call(instruction, text)
        if memo is not None:
            memo.put(key, answer)
        return answer

    def _call(self, instruction: str, text: str) -> str:
        body = {
            "model": self.model,
            "temperature": 0.2,
            "messages": [{"role": "system", "content": instruction}, {"role": "user", "content": text}],
        }
        call = Call(
            "chat/completions",
            "the chat request",
            "the chat endpoint",
            "Summarising failed",
            SummaryError,
            _chat_answer,
            self._classify,
            self.model,
            # for the fleet's rate limit: the prompt, and an answer at its longest
            count_tokens(instruction) + count_tokens(text) + ANSWER_TOKENS if current_limiter() else 0,
        )
        answer: tuple[str, tuple[int, int] | None]
        answer, _ = post_with_retries(
            self._client, call, json.dumps(body).encode(), self._timeout_s, self.retry
        )
        text, reported = answer
        prompt, completion = reported or (count_tokens(instruction) + count_tokens(text), count_tokens(text))
        report_usage("chat", self.model, prompt, completion)
        return text

    def _classify(self, response: Any) -> tuple[str, float | None]:
        """Raise for answers that retrying cannot fix; else describe the transient problem."""
        code, message = error_of(response.content, self._api_key)
        status = response.status_code
        kind = failure_kind(status, code)
        if kind == "quota":
            raise SummaryError(QUOTA_MESSAGE, retryable=False, code="insufficient_quota")
        if kind == "refused":
            raise SummaryError(
                f"The chat endpoint rejected the request (HTTP {status} {code}): {message}",
                retryable=False,
                code=code or str(status),
            )
        # transient, or an unexpected status: retried, and the provider's doing if it persists
        return f"HTTP {status} {code}".strip(), retry_after_s(response.headers)


def _chat_answer(content: bytes) -> tuple[str, tuple[int, int] | None]:
    """The answer's text and its reported (prompt, completion) tokens (None: no `usage`); a
    retryable SummaryError for a malformed answer."""
    try:
        answer = json.loads(content)
        text = str(answer["choices"][0]["message"]["content"]).strip()
    except (ValueError, KeyError, IndexError, TypeError):
        raise SummaryError("malformed chat response", retryable=True) from None
    usage = answer.get("usage")
    try:
        return text, (int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0))
    except (KeyError, TypeError, ValueError, AttributeError):
        return text, None


def _group_chunks(
    chunks: Sequence[str], max_tokens: int, token_counts: Sequence[int] | None = None
) -> list[str]:
    """Consecutive chunks joined into groups of at most `max_tokens` (a longer chunk alone)."""
    groups: list[str] = []
    current: list[str] = []
    tokens = 0
    counts = token_counts if token_counts is not None else [count_tokens(chunk) for chunk in chunks]
    for chunk, count in zip(chunks, counts, strict=True):
        if current and tokens + count > max_tokens:
            groups.append("".join(current))
            current, tokens = [], 0
        current.append(chunk)
        tokens += count
    if current:
        groups.append("".join(current))
    return groups or [""]


_summarizers: ProviderCache[Summarizer] = ProviderCache()


def summarizer_from_settings(settings: Any) -> Summarizer:
    """The configured summariser, created once per process."""
    key = (
        settings.summary_provider,
        settings.summary_model,
        settings.openai_base_url,
        settings.openai_api_key,
    )
    return _summarizers.get(key, lambda: _build_summarizer(settings))


def _build_summarizer(settings: Any) -> Summarizer:
    if settings.summary_provider == "local":
        return LocalSummarizer()
    if not settings.openai_api_key:
        raise ConfigError("OPENAI_API_KEY is not set (or set NEXUS_SUMMARY_PROVIDER=local for offline use).")
    return OpenAISummarizer(settings.openai_api_key, settings.summary_model, settings.openai_base_url)

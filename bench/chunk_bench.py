#!/usr/bin/env python3
"""Chunking benchmark: `split_text` throughput on every kind of text, and whether it stays linear.

For each class of text (English prose, Chinese, Chinese without punctuation, Thai, base64,
minified JSON, a run of dots, emoji) it builds 1 MB and 8 MB (UTF-8 bytes) deterministically and
splits each with `split_text(text, 350)` on one core, reporting MB/s in CPU time: the best of
`--repeats` rounds (one fewer above 1 MB), the sizes alternating within each round so that a busy
moment of a shared machine does not fall on one size only. English prose is the PostgreSQL
manual (`/usr/share/doc/postgresql-doc-*/html` through `shared.text.html.html_to_text`, the
process bench's corpus) when installed, else the documents in `examples/`, repeated. Every run is
checked: the chunks cover the text in order, within the limit.

Fails (exit 1) when a class chunks at under 1 MB/s or 8 MB takes more than 9× the time of 1 MB.
Prints a Markdown table and writes `bench/results/chunk.json`.

    python bench/chunk_bench.py [--repeats 5] [--classes english,cjk,...] [--sizes 1,8]
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "chunk.json"
DOC_ROOT = Path("/usr/share/doc")
MB = 1_000_000
MAX_TOKENS = 350
MIN_MB_PER_S = 1.0
MAX_GROWTH = 9.0  # 8 MB may take at most this many times the 1 MB time


# --- the texts: deterministic, sized in UTF-8 bytes -----------------------------------------------


def _fit(text: str, size: int) -> str:
    """`text` repeated and cut to `size` UTF-8 bytes (at a character boundary)."""
    data = text.encode()
    data = data * (size // len(data) + 1)
    return data[:size].decode("utf-8", "ignore")


@cache
def english_source() -> tuple[str, str]:
    """(where it comes from, English prose of a few MB)."""
    sys.path.insert(0, str(ROOT))
    from shared.text.html import html_to_text

    folders = sorted(DOC_ROOT.glob("postgresql-doc-*/html"))
    if folders:
        pages = [html_to_text(p.read_text("utf-8", "replace")) for p in sorted(folders[-1].glob("*.html"))]
        return f"{folders[-1]} ({len(pages)} pages as text)", "\n\n".join(p for p in pages if p.strip())
    documents = sorted(p for p in (ROOT / "examples").rglob("*") if p.suffix in (".md", ".html"))
    texts = [html_to_text(p.read_text()) if p.suffix == ".html" else p.read_text() for p in documents]
    return f"examples/ ({len(texts)} documents, repeated)", "\n\n".join(texts)


_CJK_COMMON = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心"
    "多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但"
)


def cjk(size: int, seed: int, punctuation: bool = True) -> str:
    """Chinese without spaces or line breaks: sentences ending in 。！？ (or one unbroken run)."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < size:
        sentence = "".join(rng.choices(_CJK_COMMON, k=rng.randint(8, 40)))
        if punctuation:
            middle = rng.randint(1, len(sentence) - 1)
            sentence = sentence[:middle] + "，" + sentence[middle:] + rng.choice("。。。！？")
        parts.append(sentence)
        total += len(sentence) * 3
    return _fit("".join(parts), size)


def thai(size: int, seed: int) -> str:
    """Thai words without spaces between them, a space between sentences."""
    rng = random.Random(seed)
    words = ("สวัสดี", "ครับ", "ภาษา", "ไทย", "เขียน", "โดย", "ไม่มี", "ช่องว่าง", "ระหว่าง", "คำ", "ประโยค", "ยาว")
    sentences = ["".join(rng.choices(words, k=rng.randint(5, 30))) for _ in range(2000)]
    return _fit(" ".join(sentences), size)


def base64_text(size: int, seed: int) -> str:
    """One base64 line, no line breaks."""
    return base64.b64encode(random.Random(seed).randbytes(size * 3 // 4 + 3)).decode()[:size]


def minified_json(size: int, seed: int) -> str:
    """One line of JSON with no spaces: a list of records."""
    rng = random.Random(seed)
    records: list[str] = []
    total = 0
    while total < size:
        record = {
            "id": rng.randrange(10**9),
            "name": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 12))),
            "score": round(rng.random() * 100, 3),
            "tags": rng.sample(["red", "green", "blue", "lidar", "dock", "battery"], 3),
            "ok": rng.random() < 0.5,
        }
        records.append(json.dumps(record, separators=(",", ":")))
        total += len(records[-1]) + 1
    return _fit("[" + ",".join(records) + "]", size)


def dots(size: int, seed: int) -> str:
    """A run of full stops."""
    return "." * size


def emoji(size: int, seed: int) -> str:
    """Emoji with ZWJ sequences, flags and skin tones, a space now and then."""
    rng = random.Random(seed)
    pool = ("🚀", "🔥", "👨‍👩‍👧‍👦", "🇯🇵", "🇫🇷", "👍🏽", "❤️", "🧑‍💻", " ")
    return _fit("".join(rng.choices(pool, k=size // 4)), size)


def english(size: int, seed: int) -> str:
    """English prose (see `english_source`), repeated to `size`."""
    return _fit(english_source()[1], size)


CLASSES: dict[str, Callable[[int, int], str]] = {
    "english": english,
    "cjk": cjk,
    "cjk-run": lambda size, seed: cjk(size, seed, punctuation=False),
    "thai": thai,
    "base64": base64_text,
    "json": minified_json,
    "dots": dots,
    "emoji": emoji,
}


# --- measuring ------------------------------------------------------------------------------------


def check(text: str, chunks: list[Any]) -> None:
    assert "".join(c.text for c in chunks) == text, "chunks do not cover the text"
    assert all(c.token_count <= MAX_TOKENS for c in chunks), "a chunk is over the limit"


def measure_once(split: Callable[..., list[Any]], text: str) -> tuple[float, int]:
    """(CPU seconds, chunk count) of one `split(text, MAX_TOKENS)`, checked."""
    started = time.process_time()
    chunks = split(text, MAX_TOKENS)
    seconds = time.process_time() - started
    check(text, chunks)
    return seconds, len(chunks)


def run(classes: list[str], sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Each class at each size, the sizes interleaved round by round (so a busy moment of a
    shared machine hits both), best of `repeats` rounds (one fewer for sizes over 1 MB)."""
    sys.path.insert(0, str(ROOT))
    from shared.text.chunking import split_text

    split_text("warm the tokenizer up. " * 20)
    rows = []
    for name in classes:
        texts = {size: CLASSES[name](size * MB, 7) for size in sizes}
        best = {size: float("inf") for size in sizes}
        counts = dict.fromkeys(sizes, 0)
        for round_ in range(repeats):
            for size in sizes:
                if size > 1 and round_ >= max(1, repeats - 1):
                    continue
                seconds, counts[size] = measure_once(split_text, texts[size])
                best[size] = min(best[size], seconds)
        for size in sizes:
            text = texts[size]
            rows.append(
                {
                    "class": name,
                    "mb": size,
                    "chars": len(text),
                    "chunks": counts[size],
                    "cpu_s": best[size],
                    "mb_per_s": len(text.encode()) / MB / best[size],
                }
            )
            print(f"  {name} {size} MB: {best[size]:.3f} s, {counts[size]} chunks", flush=True)
    return rows


def growth(rows: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(class, size) → its time over the same class's smallest size's time, for the larger sizes."""
    smallest: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["class"] not in smallest or r["mb"] < smallest[r["class"]]["mb"]:
            smallest[r["class"]] = r
    return {
        (r["class"], r["mb"]): r["cpu_s"] / smallest[r["class"]]["cpu_s"]
        for r in rows
        if r["mb"] > smallest[r["class"]]["mb"]
    }


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The failures: a class under MIN_MB_PER_S, or 8× the input taking over MAX_GROWTH× the time
    (in proportion for other sizes)."""
    failures = [
        f"{r['class']} {r['mb']} MB: {r['mb_per_s']:.2f} MB/s < {MIN_MB_PER_S}"
        for r in rows
        if r["mb_per_s"] < MIN_MB_PER_S
    ]
    small = {r["class"]: min(q["mb"] for q in rows if q["class"] == r["class"]) for r in rows}
    for (name, size), ratio in growth(rows).items():
        if ratio > MAX_GROWTH / 8 * size / small[name]:
            failures.append(f"{name}: {size} MB took {ratio:.1f}× the time of {small[name]} MB")
    return failures


def table(rows: list[dict[str, Any]]) -> str:
    ratios = growth(rows)
    lines = ["| class | size | chunks | CPU s | MB/s | × time of the smallest |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = ratios.get((r["class"], r["mb"]))
        lines.append(
            f"| {r['class']} | {r['mb']} MB | {r['chunks']:,} | {r['cpu_s']:.3f} | {r['mb_per_s']:.2f} | "
            + (f"{ratio:.1f}× |" if ratio else "|")
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", default=",".join(CLASSES))
    parser.add_argument("--sizes", default="1,8", help="MB, comma-separated")
    args = parser.parse_args()
    classes = [c for c in args.classes.split(",") if c]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        parser.error(f"unknown classes {unknown}; known: {', '.join(CLASSES)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"english prose from {english_source()[0] if 'english' in classes else '-'}", flush=True)
    rows = run(classes, sizes, args.repeats)
    print(table(rows))
    failures = verdicts(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    facts = {"python": platform.python_version(), "machine": platform.machine(), "max_tokens": MAX_TOKENS}
    RESULTS.write_text(json.dumps({"facts": facts, "rows": rows, "failures": failures}, indent=2))
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The fleet's rate limit as a user meets it: N `nexus process --all` commands at once (separate
processes, one embedded database) against a local OpenAI-compatible server that enforces a
tokens-per-minute limit, with `NEXUS_RATE_LIMITS` set to that limit; then the same without it.

    .venv/bin/python bench/rate_limit_bench.py /tmp/corpus500 [--tpm 1000000] [--sweepers 4]

Prints, for each run: wall time of the processing phase, embedding tokens per minute achieved
(all of them, and past the first burst the server allows), as a share of the limit, and how many
requests were answered 429. Summaries are local (only embeddings count against the limit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
sys.path.insert(0, str(ROOT))

from tests.support.openai_server import RemoteOpenAIServer  # noqa: E402


def run(args: argparse.Namespace, limited: bool) -> dict[str, float]:
    server = subprocess.Popen(
        [
            PY,
            "-m",
            "tests.support.openai_server",
            "--latency-ms",
            str(args.latency_ms),
            "--tpm",
            str(args.tpm),
            "--burst-s",
            str(args.burst_s),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    work = Path(tempfile.mkdtemp(prefix="nexus-limits-"))
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        env = {
            **os.environ,
            "NEXUS_HOME": str(work / ".nexus"),
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": base_url,
            "NEXUS_EMBEDDING_PROVIDER": "openai",
            "NEXUS_SUMMARY_PROVIDER": "local",
            # claims of a few requests each, so every sweeper has work throughout
            "NEXUS_BATCH_TOKENS": str(args.batch_tokens),
        }
        env.pop("DATABASE_URL", None)
        if limited:
            limits = {"text-embedding-3-small": {"tpm": args.tpm, "rpm": 3000, "burst_s": args.burst_s}}
            env["NEXUS_RATE_LIMITS"] = json.dumps(limits)
        client = str(uuid.uuid4())
        nexus = [PY, "-m", "shared.cli"]
        subprocess.run([*nexus, "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
        subprocess.run(
            [*nexus, "ingest", args.corpus, "--client-id", client, "--create-client"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        remote = RemoteOpenAIServer(base_url)
        remote.reset()
        started = time.monotonic()
        sweepers = [
            subprocess.Popen(
                [*nexus, "process", "--all"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(args.sweepers)
        ]
        for sweeper in sweepers:
            sweeper.wait()
        elapsed = time.monotonic() - started
        stats = remote.stats
        status = json.loads(
            subprocess.run(
                [*nexus, "status", "--json"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
            ).stdout
        )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    refused = sum(1 for _, status_code, _ in stats.rejected if status_code == 429)
    burst = args.tpm * args.burst_s / 60
    return {
        "seconds": elapsed,
        "tokens": stats.embedding_tokens,
        "tokens_per_min": stats.embedding_tokens / elapsed * 60,
        "steady_share": (stats.embedding_tokens - burst) / elapsed * 60 / args.tpm,
        "requests": stats.embedding_attempts,
        "refused_429": refused,
        "done": status["counts"].get("done", 0),
        "pending": status["counts"].get("pending", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus")
    parser.add_argument("--tpm", type=float, default=1_000_000)
    parser.add_argument("--burst-s", type=float, default=10.0)
    parser.add_argument("--sweepers", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument("--batch-tokens", type=int, default=40_000)
    args = parser.parse_args()
    for limited in (True, False):
        result = run(args, limited)
        label = "NEXUS_RATE_LIMITS set" if limited else "no shared limit   "
        share = result["tokens_per_min"] / args.tpm
        print(
            f"{label}: {result['seconds']:.1f} s, {result['tokens']:.0f} tokens, "
            f"{result['tokens_per_min']:.0f} tokens/min ({share:.0%} of the limit; "
            f"{result['steady_share']:.0%} past the first burst), "
            f"{result['refused_429']} of {result['requests']} requests answered 429; "
            f"items done {result['done']}, pending {result['pending']}",
            flush=True,
        )


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The user's number: `nexus ingest DIR` then `nexus process --all`, as whole commands, on a fresh
# embedded database (its cluster created and migrated first, timed apart), against a running
# OpenAI-compatible server. Prints the wall time and peak RSS of each command and the final state.
#
#   .venv/bin/python -m tests.support.openai_server --port 18089 --latency-ms 80 &
#   bench/whole_command.sh CORPUS_DIR http://127.0.0.1:18089/v1 [TREE]
#
# CORPUS_DIR: e.g. the first 500 pages of /usr/share/doc/postgresql-doc-15/html by file name.
# TREE: the checkout whose code runs (default: this one), with this checkout's .venv.
# GENERATION=512: afterwards, `nexus embeddings start` at 512 dimensions, then time the backfill
# (`nexus process --all`: fill and index) and the cutover, as whole commands.
set -euo pipefail
CORPUS=$1
BASE_URL=$2
HERE=$(cd "$(dirname "$0")/.." && pwd)
TREE=${3:-$HERE}
PY=$HERE/.venv/bin/python
WORK=$(mktemp -d /tmp/nexus-whole-XXXX)
# KEEP=1 keeps the database (its NEXUS_HOME is printed), e.g. for bench/index_recall.py.
if [ "${KEEP:-}" = 1 ]; then echo "NEXUS_HOME=$WORK/.nexus"; else trap 'rm -rf "$WORK"' EXIT; fi
CLIENT=$("$PY" -c "import uuid; print(uuid.uuid4())")
export NEXUS_HOME=$WORK/.nexus OPENAI_API_KEY=sk-bench OPENAI_BASE_URL=$BASE_URL
export NEXUS_EMBEDDING_PROVIDER=openai NEXUS_SUMMARY_PROVIDER=local
unset DATABASE_URL SUPABASE_URL
cd "$TREE"
now() { "$PY" -c "import time; print(time.monotonic())"; }
elapsed() { "$PY" -c "print(f'{$2 - $1:.2f}')"; }
t0=$(now)
"$PY" -m shared.cli migrate > "$WORK/migrate.out" 2>&1
t1=$(now)
/usr/bin/time -f "%M" -o "$WORK/ingest.rss" "$PY" -m shared.cli ingest "$CORPUS" --client-id "$CLIENT" \
  --create-client > "$WORK/ingest.out" 2>&1
t2=$(now)
/usr/bin/time -f "%M" -o "$WORK/process.rss" "$PY" -m shared.cli process --all > "$WORK/process.out" 2>&1
t3=$(now)
state=$("$PY" -m shared.cli status --json | "$PY" -c \
  "import json, sys; d = json.load(sys.stdin); print(d['counts'], d['chunks'], 'chunks,', d['chunks_awaiting_index'], 'awaiting the index')")
if [ -n "${GENERATION:-}" ]; then  # GENERATION=512: then move the database to that many dimensions
  "$PY" -m shared.cli embeddings start --model text-embedding-3-small --dimensions "$GENERATION" > "$WORK/start.out"
  t4=$(now)
  /usr/bin/time -f "%M" -o "$WORK/fill.rss" "$PY" -m shared.cli process --all > "$WORK/fill.out" 2>&1
  t5=$(now)
  "$PY" -m shared.cli embeddings cutover > "$WORK/cutover.out"
  t6=$(now)
  echo "backfill to $GENERATION dimensions: nexus process --all $(elapsed "$t4" "$t5") s, peak RSS $(( $(cat "$WORK/fill.rss") / 1024 )) MiB; cutover $(elapsed "$t5" "$t6") s; $(tail -1 "$WORK/fill.out")"
fi
echo "first use (cluster + migrations) $(elapsed "$t0" "$t1") s"
echo "nexus ingest $(elapsed "$t1" "$t2") s, peak RSS $(( $(cat "$WORK/ingest.rss") / 1024 )) MiB"
echo "nexus process --all $(elapsed "$t2" "$t3") s, peak RSS $(( $(cat "$WORK/process.rss") / 1024 )) MiB"
echo "both commands $(elapsed "$t1" "$t3") s; $state"

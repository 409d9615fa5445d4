#!/usr/bin/env bash
# Deploy Nexus Workers as Cloud Functions (gen2) with functions-framework targets, plus the
# Pub/Sub topic and Cloud Scheduler jobs around them. Read infra/gcp/README.md first: it lists
# the secrets to create and what each function does.
#
#   PROJECT=my-project REGION=europe-west1 infra/gcp/deploy.sh            # deploy
#   PROJECT=my-project REGION=europe-west1 DRY_RUN=1 infra/gcp/deploy.sh  # print the commands only
#
# Re-running is safe: every step creates what is missing or updates what exists.
set -euo pipefail

: "${PROJECT:?set PROJECT to the Google Cloud project id}"
: "${REGION:?set REGION, e.g. europe-west1}"
DRY_RUN="${DRY_RUN:-0}"
PREFIX="${PREFIX:-nexus}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STAGE_DIR="${STAGE_DIR:-$ROOT/build/gcp}"
RUNTIME=python312

run() {  # print the command (copy-pasteable), then run it unless DRY_RUN=1
  local arg line="+"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_,=:@/.+-]+$ ]]; then line+=" $arg"; else line+=" $(printf '%q' "$arg")"; fi
  done
  echo "$line"
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

# query PLACEHOLDER COMMAND…: the output of a read-only gcloud query; PLACEHOLDER in a dry run.
query() {
  local placeholder="$1"
  shift
  if [[ "$DRY_RUN" == 1 ]]; then echo "$placeholder"; else "$@"; fi
}

exists() {
  [[ "$DRY_RUN" != 1 ]] && "$@" >/dev/null 2>&1
}

sa() { echo "$PREFIX-$1@$PROJECT.iam.gserviceaccount.com"; }

function_url() {
  query "<url of $1>" gcloud functions describe "$1" --gen2 --project "$PROJECT" --region "$REGION" \
    --format='value(serviceConfig.uri)'
}

# 1. Source folders: main.py + shared/ + requirements.txt written from pyproject.toml.
python3 "$ROOT/infra/gcp/stage.py" --out "$STAGE_DIR"

# 2. One runtime service account per function, each reading only its own secrets (its own
#    DATABASE_URL too: each logs in as its function's database role,
#    nexus_ingest/process/gcal/search).
for account in ingest process gcal search scheduler; do
  exists gcloud iam service-accounts describe "$(sa "$account")" --project "$PROJECT" ||
    run gcloud iam service-accounts create "$PREFIX-$account" --project "$PROJECT" \
      --display-name "Nexus Workers: $account"
done

grant_secret() {  # grant_secret SECRET ACCOUNT
  run gcloud secrets add-iam-policy-binding "$PREFIX-$1" --project "$PROJECT" \
    --member "serviceAccount:$(sa "$2")" --role roles/secretmanager.secretAccessor --condition=None
}
grant_secret database-url-ingest ingest
grant_secret ingest-api-keys ingest
grant_secret database-url-process process
grant_secret openai-api-key process
grant_secret webhook-secret process
grant_secret database-url-gcal gcal
grant_secret token-encryption-key gcal
# search: authenticated like ingest (the same bearer keys), embeds the query like process.
grant_secret database-url-search search
grant_secret ingest-api-keys search
grant_secret openai-api-key search

INGEST_SECRETS="DATABASE_URL=$PREFIX-database-url-ingest:latest,NEXUS_INGEST_API_KEYS=$PREFIX-ingest-api-keys:latest"
SEARCH_SECRETS="DATABASE_URL=$PREFIX-database-url-search:latest,NEXUS_INGEST_API_KEYS=$PREFIX-ingest-api-keys:latest"
SEARCH_SECRETS="$SEARCH_SECRETS,OPENAI_API_KEY=$PREFIX-openai-api-key:latest"
if exists gcloud secrets describe "$PREFIX-supabase-jwt-secret" --project "$PROJECT"; then
  grant_secret supabase-jwt-secret ingest
  INGEST_SECRETS="$INGEST_SECRETS,SUPABASE_JWT_SECRET=$PREFIX-supabase-jwt-secret:latest"
  grant_secret supabase-jwt-secret search
  SEARCH_SECRETS="$SEARCH_SECRETS,SUPABASE_JWT_SECRET=$PREFIX-supabase-jwt-secret:latest"
fi
PROCESS_SECRETS="DATABASE_URL=$PREFIX-database-url-process:latest,OPENAI_API_KEY=$PREFIX-openai-api-key:latest"
PROCESS_SECRETS="$PROCESS_SECRETS,NEXUS_WEBHOOK_SECRET=$PREFIX-webhook-secret:latest"
GCAL_SECRETS="DATABASE_URL=$PREFIX-database-url-gcal:latest"
GCAL_SECRETS="$GCAL_SECRETS,NEXUS_TOKEN_ENCRYPTION_KEY=$PREFIX-token-encryption-key:latest"
PROCESS_ENV="POWERTOOLS_SERVICE_NAME=nexus-process,POWERTOOLS_METRICS_NAMESPACE=NexusWorkers,LOG_LEVEL=INFO"

deploy() {  # deploy NAME SOURCE ENTRY_POINT ACCOUNT [gcloud flags…]
  local name="$1" source="$2" entry="$3" account="$4"
  shift 4
  run gcloud functions deploy "$name" --gen2 --project "$PROJECT" --region "$REGION" \
    --runtime "$RUNTIME" --source "$STAGE_DIR/$source" --entry-point "$entry" \
    --service-account "$(sa "$account")" "$@"
}

# 3. The functions. HTTP ones that check their own bearer secret are public; the rest are
#    invoked only by Cloud Scheduler (OIDC) or Eventarc.
deploy "$PREFIX-ingest" ingest ingest ingest \
  --trigger-http --allow-unauthenticated --memory 512Mi --timeout 30s \
  --set-secrets "$INGEST_SECRETS" \
  --set-env-vars "POWERTOOLS_SERVICE_NAME=nexus-ingest,POWERTOOLS_METRICS_NAMESPACE=NexusWorkers,LOG_LEVEL=INFO"

deploy "$PREFIX-search" search search search \
  --trigger-http --allow-unauthenticated --memory 512Mi --timeout 30s \
  --set-secrets "$SEARCH_SECRETS" \
  --set-env-vars "POWERTOOLS_SERVICE_NAME=nexus-search,POWERTOOLS_METRICS_NAMESPACE=NexusWorkers,LOG_LEVEL=INFO"

deploy "$PREFIX-process-webhook" process webhook process \
  --trigger-http --allow-unauthenticated --memory 1Gi --timeout 300s \
  --set-secrets "$PROCESS_SECRETS" --set-env-vars "$PROCESS_ENV"

exists gcloud pubsub topics describe "$PREFIX-process" --project "$PROJECT" ||
  run gcloud pubsub topics create "$PREFIX-process" --project "$PROJECT"
exists gcloud pubsub topics describe "$PREFIX-process-dlq" --project "$PROJECT" ||
  run gcloud pubsub topics create "$PREFIX-process-dlq" --project "$PROJECT"

# --retry: a failed item raises, so Pub/Sub redelivers it with backoff (then the dead-letter topic).
deploy "$PREFIX-process-pubsub" process pubsub process \
  --trigger-topic "$PREFIX-process" --retry --memory 1Gi --timeout 300s \
  --set-secrets "$PROCESS_SECRETS" --set-env-vars "$PROCESS_ENV"

# Dead-lettering on the subscription Eventarc made for the trigger: after 5 deliveries.
SUBSCRIPTION="$(query "<subscription of $PREFIX-process>" gcloud pubsub subscriptions list --project "$PROJECT" \
  --filter "topic:projects/$PROJECT/topics/$PREFIX-process" --format 'value(name)' | head -n 1)"
PROJECT_NUMBER="$(query "<project number>" gcloud projects describe "$PROJECT" --format 'value(projectNumber)')"
PUBSUB_AGENT="service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
run gcloud pubsub subscriptions update "$SUBSCRIPTION" --project "$PROJECT" \
  --dead-letter-topic "$PREFIX-process-dlq" --max-delivery-attempts 5
run gcloud pubsub topics add-iam-policy-binding "$PREFIX-process-dlq" --project "$PROJECT" \
  --member "serviceAccount:$PUBSUB_AGENT" --role roles/pubsub.publisher
run gcloud pubsub subscriptions add-iam-policy-binding "$SUBSCRIPTION" --project "$PROJECT" \
  --member "serviceAccount:$PUBSUB_AGENT" --role roles/pubsub.subscriber

deploy "$PREFIX-gcal-refresh" gcal_refresh refresh gcal \
  --trigger-http --no-allow-unauthenticated --memory 256Mi --timeout 180s \
  --set-secrets "$GCAL_SECRETS" \
  --set-env-vars "POWERTOOLS_SERVICE_NAME=nexus-gcal-refresh,POWERTOOLS_METRICS_NAMESPACE=NexusWorkers,LOG_LEVEL=INFO"

# 4. Cloud Scheduler, calling with an OIDC token of the scheduler account (the only invoker).
schedule() {  # schedule JOB FUNCTION CRON
  local job="$1" fn="$2" cron="$3" url
  url="$(function_url "$fn")"
  run gcloud functions add-invoker-policy-binding "$fn" --project "$PROJECT" --region "$REGION" \
    --member "serviceAccount:$(sa scheduler)"
  local verb=create
  exists gcloud scheduler jobs describe "$job" --project "$PROJECT" --location "$REGION" && verb=update
  run gcloud scheduler jobs "$verb" http "$job" --project "$PROJECT" --location "$REGION" \
    --schedule "$cron" --http-method POST --uri "$url" \
    --oidc-service-account-email "$(sa scheduler)" --oidc-token-audience "$url" \
    --attempt-deadline 320s
}

# Tokens are refreshed when under 20 minutes are left; every 10 minutes sees each one twice.
schedule "$PREFIX-gcal-refresh" "$PREFIX-gcal-refresh" "*/10 * * * *"

# The sweep (pending, retryable and lease-expired items): the process function's HTTP `sweep`
# target, called by Cloud Scheduler.
deploy "$PREFIX-process-sweep" process sweep process \
  --trigger-http --no-allow-unauthenticated --memory 1Gi --timeout 300s \
  --set-secrets "$PROCESS_SECRETS" --set-env-vars "$PROCESS_ENV"
schedule "$PREFIX-process-sweep" "$PREFIX-process-sweep" "*/5 * * * *"

echo
echo "Ingest URL:   $(function_url "$PREFIX-ingest")"
echo "Search URL:   $(function_url "$PREFIX-search")"
echo "Webhook URL:  $(function_url "$PREFIX-process-webhook")  (Supabase: Vault secret nexus_process_url)"

-- One rate limit for the fleet: a token bucket per (provider, model), kept beside the provider's
-- back-off and shared by every invocation and trigger, so concurrent functions together stay
-- under the account's tokens and requests per minute.
--
-- Before each request a worker takes its tokens and one request from the bucket
-- (take_provider_capacity), which says when the request may go. The buckets refill continuously
-- at the configured rates times `scale`, up to burst_seconds of them. Live work queues;
-- generation backfills only take what leaves a quarter of a bucket, so they never starve ingest. A 429 (provider_throttled) drains the bucket, pauses it
-- for the Retry-After the provider asked for, and shrinks `scale` by a fifth (never under 0.1)
-- for everyone; `scale` grows back by 0.2 a minute without 429s. The back-off of
-- provider_backoff stays what it was: when retries run out, the fleet stops claiming.

create table public.provider_rate_buckets (
  provider         text not null,
  model            text not null,
  tokens_per_min   double precision not null check (tokens_per_min > 0),
  requests_per_min double precision not null check (requests_per_min > 0),
  burst_seconds    double precision not null default 10 check (burst_seconds > 0),
  tokens           double precision not null,  -- may go below 0: a request larger than the bucket
  requests         double precision not null,
  scale            double precision not null default 1 check (scale > 0 and scale <= 1),
  paused_until     timestamptz,
  throttled        integer not null default 0,  -- 429s reported
  refilled_at      timestamptz not null default clock_timestamp(),
  primary key (provider, model)
);
alter table public.provider_rate_buckets enable row level security;
revoke all on public.provider_rate_buckets from anon, authenticated;
grant all on public.provider_rate_buckets to service_role;
grant select, insert, update on public.provider_rate_buckets to nexus_process;

-- The bucket's row, locked and refilled to now (created full with these limits when missing;
-- limits that changed in settings take effect here).
create or replace function nexus.refilled_bucket(
  provider_name text, model_name text, tokens_per_minute double precision,
  requests_per_minute double precision, burst double precision)
returns public.provider_rate_buckets
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  b provider_rate_buckets;
  elapsed double precision;
begin
  insert into provider_rate_buckets (provider, model, tokens_per_min, requests_per_min, burst_seconds,
                                     tokens, requests)
  values (provider_name, model_name, tokens_per_minute, requests_per_minute, burst,
          tokens_per_minute * burst / 60, requests_per_minute * burst / 60)
  on conflict (provider, model) do nothing;
  select * into b from provider_rate_buckets r
   where r.provider = provider_name and r.model = model_name for update;
  elapsed := greatest(extract(epoch from clock_timestamp() - b.refilled_at), 0);
  b.tokens_per_min := tokens_per_minute;
  b.requests_per_min := requests_per_minute;
  b.burst_seconds := burst;
  if b.paused_until is null or b.paused_until <= clock_timestamp() then
    b.tokens := least(b.tokens + elapsed * tokens_per_minute * b.scale / 60, tokens_per_minute * burst / 60);
    b.requests := least(b.requests + elapsed * requests_per_minute * b.scale / 60, requests_per_minute * burst / 60);
    b.scale := least(1.0, b.scale + elapsed * 0.2 / 60);
    b.paused_until := null;
  end if;
  b.refilled_at := clock_timestamp();
  return b;
end
$$;

-- Take `tokens` and `requests` from the bucket. Live work reserves its place at once: the
-- answer's wait_s is when its request may go (the bucket may go into debt for those queued
-- behind), so waiting workers need not ask again and go out exactly paced. A generation backfill
-- (`backfill`) never queues: it takes only what leaves a quarter of the bucket to live work, and
-- otherwise is told how long to wait before asking again (taken: false). Nothing is taken when
-- the wait would pass max_wait_seconds (the caller's deadline). A request larger than the bucket
-- counts as a full bucket. Answers {"taken": bool, "wait_s": seconds}.
create or replace function public.take_provider_capacity(
  provider_name text, model_name text, tokens double precision, requests double precision,
  tokens_per_minute double precision, requests_per_minute double precision,
  burst_seconds double precision default 10, backfill boolean default false,
  max_wait_seconds double precision default null)
returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  b provider_rate_buckets;
  token_capacity double precision := tokens_per_minute * burst_seconds / 60;
  request_capacity double precision := requests_per_minute * burst_seconds / 60;
  reserve double precision := case when backfill then 0.25 else 0 end;
  token_need double precision;
  request_need double precision;
  paused_s double precision;
  wait double precision;
  taken boolean;
begin
  b := nexus.refilled_bucket(provider_name, model_name, tokens_per_minute, requests_per_minute, burst_seconds);
  token_need := least(tokens, token_capacity * (1 - reserve)) + token_capacity * reserve;
  request_need := least(requests, request_capacity * (1 - reserve)) + request_capacity * reserve;
  paused_s := greatest(coalesce(extract(epoch from b.paused_until - clock_timestamp()), 0), 0);
  wait := paused_s + greatest((token_need - b.tokens) * 60 / (tokens_per_minute * b.scale),
                              (request_need - b.requests) * 60 / (requests_per_minute * b.scale), 0);
  taken := (not backfill or wait <= 0) and (max_wait_seconds is null or wait <= max_wait_seconds);
  if taken then
    b.tokens := b.tokens - least(tokens, token_capacity);
    b.requests := b.requests - least(requests, request_capacity);
  end if;
  update provider_rate_buckets r
     set tokens_per_min = b.tokens_per_min, requests_per_min = b.requests_per_min,
         burst_seconds = b.burst_seconds, tokens = b.tokens, requests = b.requests, scale = b.scale,
         paused_until = b.paused_until, refilled_at = b.refilled_at
   where r.provider = provider_name and r.model = model_name;
  return jsonb_build_object('taken', taken, 'wait_s', wait);
end
$$;

-- The provider answered 429: everyone pauses for its Retry-After (a second when it gave none) and
-- goes on at a smaller share of the limits. Returns the new scale.
create or replace function public.provider_throttled(
  provider_name text, model_name text, retry_after_seconds double precision default null)
returns double precision
language sql
set search_path = public, pg_catalog
as $$
  update provider_rate_buckets r
     set tokens = least(r.tokens, 0),
         requests = least(r.requests, 0),
         scale = greatest(0.1, r.scale * 0.8),
         paused_until = greatest(coalesce(r.paused_until, clock_timestamp()),
                                 clock_timestamp() + make_interval(secs => greatest(coalesce(retry_after_seconds, 1), 0))),
         throttled = r.throttled + 1,
         refilled_at = clock_timestamp()
   where r.provider = provider_name and r.model = model_name
  returning r.scale
$$;

-- `nexus status`: each bucket's state (no secrets).
create or replace function public.provider_rate_status()
returns setof jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
           'provider', r.provider, 'model', r.model, 'tokens_per_min', r.tokens_per_min,
           'requests_per_min', r.requests_per_min, 'scale', round(r.scale::numeric, 3),
           'paused_until', r.paused_until, 'throttled', r.throttled)
    from provider_rate_buckets r
   order by r.provider, r.model
$$;

do $grants$
declare
  fn text;
begin
  foreach fn in array array[
    'nexus.refilled_bucket(text, text, double precision, double precision, double precision)',
    'public.take_provider_capacity(text, text, double precision, double precision, double precision, double precision, double precision, boolean, double precision)',
    'public.provider_throttled(text, text, double precision)',
    'public.provider_rate_status()']
  loop
    execute format('revoke execute on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role, nexus_process', fn);
  end loop;
end
$grants$;

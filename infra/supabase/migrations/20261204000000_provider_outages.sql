-- Provider outages cost no attempts and back the whole fleet off; summaries are kept by their
-- input so none is paid twice; a client-summary fold marks only the summaries it read; the
-- store can tell the dimensions its vector column holds.

-- ---------------------------------------------------------------------------------------------
-- The fleet's back-off, one row per provider (shared by every invocation and trigger).
-- closed: claims go ahead. open: transient failures (429, 5xx, timeouts, connection errors);
-- quota: the account has no quota left. While open or quota, nobody claims until probe_at; then
-- one worker claims a single item as a probe (probe_at moves on meanwhile, so the others keep
-- waiting): its success closes the back-off, its failure pushes probe_at further out.
create table public.provider_backoff (
  provider    text primary key,
  state       text not null default 'closed' check (state in ('closed', 'open', 'quota')),
  failures    integer not null default 0,
  opened_at   timestamptz,
  probe_at    timestamptz,
  probe_owner text,
  last_error  text,
  updated_at  timestamptz not null default now()
);

alter table public.provider_backoff enable row level security;
revoke all on public.provider_backoff from anon, authenticated;
grant all on public.provider_backoff to service_role;

-- Items given back because of a provider failure: no attempt counted, retried after a short
-- deferral of their own (so a probe does not keep picking the same item), cleared the moment
-- the provider recovers.
alter table public.knowledge_items
  add column transient_failures integer not null default 0,
  add column last_transient_error text;

-- May `worker` claim now? {"state", "claim", "probe", "probe_at", "opened_at", "last_error"}.
-- A probe claims one item; the next probe is due probe_seconds later unless the outcome is
-- recorded first.
create or replace function public.provider_gate(
  provider_name text, worker text, probe_seconds double precision default 120)
returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  current provider_backoff;
  probing provider_backoff;
  is_probe boolean;
begin
  select * into current from provider_backoff p where p.provider = provider_name;
  if not found or current.state = 'closed' then
    return jsonb_build_object('state', 'closed', 'claim', true, 'probe', false);
  end if;
  update provider_backoff p
     set probe_owner = worker, probe_at = now() + make_interval(secs => probe_seconds), updated_at = now()
   where p.provider = provider_name and p.state <> 'closed' and p.probe_at <= now()
  returning * into probing;
  is_probe := found;
  if is_probe then
    current := probing;
  end if;
  return jsonb_build_object(
    'state', current.state, 'claim', is_probe, 'probe', is_probe, 'probe_at', current.probe_at,
    'opened_at', current.opened_at, 'last_error', current.last_error, 'failures', current.failures);
end
$$;

-- A transient failure (or, with quota, insufficient_quota): open the back-off, or keep it open
-- longer. The next probe waits base_seconds * 2^(failures - 1), at least retry_after_seconds,
-- never more than probe_seconds.
create or replace function public.record_provider_failure(
  provider_name text, error text, quota boolean default false,
  retry_after_seconds double precision default null,
  base_seconds double precision default 10, probe_seconds double precision default 120)
returns jsonb
language sql
set search_path = public, pg_catalog
as $$
  insert into provider_backoff as p (provider, state, failures, opened_at, probe_at, last_error)
  values (provider_name, case when quota then 'quota' else 'open' end, 1, now(),
          now() + make_interval(secs => least(probe_seconds,
                                              greatest(coalesce(retry_after_seconds, 0),
                                                       case when quota then probe_seconds else base_seconds end))),
          left(error, 500))
  on conflict (provider) do update
     set state = case when quota then 'quota' else 'open' end,
         failures = p.failures + 1,
         opened_at = case when p.state = 'closed' then now() else coalesce(p.opened_at, now()) end,
         probe_at = now() + make_interval(secs => least(probe_seconds, greatest(
           coalesce(retry_after_seconds, 0),
           case when quota then probe_seconds
                else base_seconds * power(2, least(p.failures, 20)) end))),
         probe_owner = null,
         last_error = left(error, 500),
         updated_at = now()
  returning jsonb_build_object('state', p.state, 'probe_at', p.probe_at, 'failures', p.failures)
$$;

-- The provider answered: close the back-off, and let every item deferred by it be claimed now.
-- Returns whether a back-off was lifted.
create or replace function public.record_provider_success(provider_name text)
returns boolean
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  update provider_backoff p
     set state = 'closed', failures = 0, opened_at = null, probe_at = null, probe_owner = null,
         last_error = null, updated_at = now()
   where p.provider = provider_name and (p.state <> 'closed' or p.failures > 0);
  if not found then
    return false;
  end if;
  update knowledge_items k
     set next_attempt_at = null
   where k.status in ('pending', 'failed') and k.transient_failures > 0 and k.next_attempt_at > now()
     and k.last_transient_error is not null;
  return true;
end
$$;

-- Give claimed items back after a provider failure: the attempt the claim counted is returned,
-- the item stays as it was (pending, or failed with attempts left), and it waits
-- retry_base_seconds * 2^(its transient failures - 1), at most 6 hours, unless the provider
-- recovers first (record_provider_success).
create or replace function public.defer_knowledge_items(
  item_ids uuid[], worker text, error text, retry_base_seconds double precision default 30)
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with deferred as (
    update knowledge_items k
       set status = case when k.last_error is null then 'pending' else 'failed' end,
           attempts = greatest(k.attempts - 1, 0),
           transient_failures = k.transient_failures + 1,
           last_transient_error = left(error, 2000),
           next_attempt_at = now() + make_interval(
             secs => least(retry_base_seconds * power(2, least(k.transient_failures, 20)), 6 * 3600)),
           lease_owner = null, lease_expires_at = null, updated_at = now()
     where k.id = any(item_ids) and k.status = 'processing' and k.lease_owner = worker
    returning 1)
  select count(*)::integer from deferred
$$;

-- Claims return how often each item was given back for a provider failure, so a batch that
-- fails again with such an item in it is tried item by item (one input the provider cannot
-- take, answered with a 5xx, fails alone instead of holding the fleet in back-off). A probe
-- claim (`probe`) takes the pending item given back least often, deferred or not: every probe
-- tests the provider with a different item, and one always finds something to send.
drop function public.claim_knowledge_items(text, double precision, integer, integer, uuid[], bigint);

create or replace function public.claim_knowledge_items(
  worker text,
  lease_seconds double precision,
  max_items integer default 50,
  max_attempts integer default 5,
  item_ids uuid[] default null,
  max_chars bigint default null,
  probe boolean default false)
returns table (
  id uuid, client_id uuid, source text, content text, content_sha256 text,
  processed_sha256 text, embedding_model text, embedding_dimensions integer, attempts integer,
  transient_failures integer)
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  candidates refcursor;
  candidate record;
  picked uuid[] := '{}';
  picked_chars bigint := 0;
begin
  update knowledge_items k
     set status = 'failed',
         last_error = 'processing did not finish within its lease ' || k.attempts || ' times',
         lease_owner = null, lease_expires_at = null, updated_at = now()
   where k.status = 'processing' and k.lease_expires_at < now() and k.attempts >= max_attempts
     and (item_ids is null or k.id = any(item_ids));

  open candidates for
    select k.id as item_id, k.char_count
      from knowledge_items k
     where k.status <> 'done'
       and (item_ids is null or k.id = any(item_ids))
       and (k.status = 'pending'
            or (k.status = 'failed' and k.attempts < max_attempts)
            or (k.status = 'processing' and k.lease_expires_at < now()))
       and (item_ids is not null or k.next_attempt_at is null or k.next_attempt_at <= now()
            or (probe and k.status = 'pending'))
     order by case when probe then k.transient_failures else 0 end, k.created_at, k.id
       for update skip locked;
  loop
    fetch candidates into candidate;
    exit when not found
           or cardinality(picked) >= max_items
           or (max_chars is not null and cardinality(picked) > 0
               and picked_chars + candidate.char_count > max_chars);
    picked := picked || candidate.item_id;
    picked_chars := picked_chars + candidate.char_count;
  end loop;
  close candidates;

  return query
  update knowledge_items k
     set status = 'processing',
         attempts = k.attempts + 1,
         lease_owner = worker,
         lease_expires_at = now() + make_interval(secs => lease_seconds),
         updated_at = now()
   where k.id = any(picked)
  returning k.id, k.client_id, k.source, k.content, k.content_sha256,
            k.processed_sha256, k.embedding_model, k.embedding_dimensions, k.attempts,
            k.transient_failures;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Summaries by their input: the key is sha256 of (model, instruction, input text), so an
-- unchanged item reuses its summary and a long item given back mid-way keeps the partial
-- summaries of its parts. Rows older than 30 days are dropped by saves.
create table public.summary_cache (
  input_sha256 text primary key,
  summary      text not null,
  created_at   timestamptz not null default now()
);

alter table public.summary_cache enable row level security;
revoke all on public.summary_cache from anon, authenticated;
grant all on public.summary_cache to service_role;

create or replace function public.find_summaries(keys text[])
returns table (input_sha256 text, summary text)
language sql stable
set search_path = public, pg_catalog
as $$
  select s.input_sha256, s.summary from summary_cache s where s.input_sha256 = any(keys)
$$;

create or replace function public.save_summaries(keys text[], summaries text[])
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with expired as (
    delete from summary_cache where created_at < now() - interval '30 days'),
  saved as (
    insert into summary_cache (input_sha256, summary)
    select s.key, s.summary from unnest(keys, summaries) as s (key, summary)
    on conflict (input_sha256) do nothing
    returning 1)
  select count(*)::integer from saved
$$;

-- ---------------------------------------------------------------------------------------------
-- A fold marks only the item summaries it read: each item comes with the processed_at of the
-- summary it carries, and an item processed again since (a new summary, not folded) stays in
-- the backlog.
create or replace function public.client_summary_backlog(client uuid, max_items integer default 50)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
    'summary', coalesce((select s.summary from client_summaries s where s.client_id = client), ''),
    'version', coalesce((select s.version from client_summaries s where s.client_id = client), 0),
    'items', coalesce((
      select jsonb_agg(jsonb_build_object('id', k.id, 'summary', k.summary, 'processed_at', k.processed_at)
                       order by k.processed_at)
        from (select k.id, k.summary, k.processed_at from knowledge_items k
               where k.client_id = client and k.status = 'done' and not k.summary_folded
                 and k.summary is not null
               order by k.processed_at limit max_items) k), '[]'::jsonb))
$$;

drop function public.save_client_summary(uuid, bigint, text, uuid[], text);

create or replace function public.save_client_summary(
  client uuid, expected_version bigint, new_summary text, folded_item_ids uuid[], model_name text,
  folded_processed_at timestamptz[] default null)
returns boolean
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  if expected_version = 0 then
    insert into client_summaries as s (client_id, summary, item_count, model, version, updated_at)
    values (client, new_summary, cardinality(folded_item_ids), model_name, 1, now())
    on conflict (client_id) do nothing;
    if not found then
      return false;
    end if;
  else
    update client_summaries s
       set summary = new_summary, item_count = s.item_count + cardinality(folded_item_ids),
           model = model_name, version = s.version + 1, updated_at = now()
     where s.client_id = client and s.version = expected_version;
    if not found then
      return false;
    end if;
  end if;
  if folded_processed_at is null then
    update knowledge_items k set summary_folded = true
     where k.id = any(folded_item_ids) and k.client_id = client;
  else
    update knowledge_items k set summary_folded = true
      from unnest(folded_item_ids, folded_processed_at) as f (id, processed_at)
     where k.id = f.id and k.client_id = client and k.processed_at = f.processed_at;
  end if;
  return true;
end
$$;

-- An item processed again with the summary it already had (its content unchanged) stays folded
-- into its client's summary: there is nothing new to fold, so no chat call is made for it.
create or replace function public.finish_knowledge_item(
  item_id uuid, worker text, claimed_sha256 text, item_summary text,
  model text, dimensions integer, chunks integer, tokens integer, elapsed_ms integer)
returns boolean
language sql
set search_path = public, pg_catalog
as $$
  with done as (
    update knowledge_items k
       set status = 'done', processed = true, processed_sha256 = claimed_sha256,
           embedding_model = model, embedding_dimensions = dimensions,
           chunk_count = chunks, token_count = tokens,
           summary = item_summary,
           summary_folded = k.summary_folded and k.summary is not distinct from item_summary,
           processed_at = now(), processing_ms = elapsed_ms,
           last_error = null, lease_owner = null, lease_expires_at = null, next_attempt_at = null,
           updated_at = now()
     where k.id = item_id and k.status = 'processing' and k.lease_owner = worker
       and k.content_sha256 = claimed_sha256
    returning 1)
  select exists (select 1 from done)
$$;

create or replace function public.finish_knowledge_items(
  worker text, item_ids uuid[], claimed_sha256s text[], item_summaries text[], model text,
  dimensions integer, chunk_counts integer[], token_counts integer[], elapsed_mss integer[])
returns table (item_id uuid)
language sql
set search_path = public, pg_catalog
as $$
  with batch as (
    select * from unnest(item_ids, claimed_sha256s, item_summaries, chunk_counts, token_counts, elapsed_mss)
      as b (id, claimed_sha256, summary, chunks, tokens, elapsed_ms))
  update knowledge_items k
     set status = 'done', processed = true, processed_sha256 = b.claimed_sha256,
         embedding_model = model, embedding_dimensions = dimensions,
         chunk_count = b.chunks, token_count = b.tokens,
         summary = b.summary,
         summary_folded = k.summary_folded and k.summary is not distinct from b.summary,
         processed_at = now(), processing_ms = b.elapsed_ms,
         last_error = null, lease_owner = null, lease_expires_at = null, next_attempt_at = null,
         updated_at = now()
    from batch b
   where k.id = b.id and k.status = 'processing' and k.lease_owner = worker
     and k.content_sha256 = b.claimed_sha256
  returning k.id
$$;

-- ---------------------------------------------------------------------------------------------
-- Facts about the schema that settings must agree with, read before any provider is called.
create or replace function public.knowledge_schema()
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
    'embedding_dimensions', (select nullif(a.atttypmod, -1) from pg_attribute a
                              where a.attrelid = 'public.knowledge_chunks'::regclass
                                and a.attname = 'embedding' and not a.attisdropped))
$$;

-- `nexus status`: as before, plus the provider back-off and the items waiting on it.
create or replace function public.knowledge_status(failure_limit integer default 10)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
    'counts', coalesce((select jsonb_object_agg(status, items) from knowledge_item_status), '{}'::jsonb),
    'oldest_pending_at', (select min(created_at) from knowledge_items where status = 'pending'),
    'oldest_pending_age_seconds', (select round(extract(epoch from now() - min(created_at)))::bigint
                                     from knowledge_items where status = 'pending'),
    'processed_last_hour', (select count(*) from knowledge_items
                             where processed_at > now() - interval '1 hour'),
    'chunks', (select count(*) from knowledge_chunks),
    'chunks_awaiting_index', (select count(*) from knowledge_chunks where not vector_indexed),
    'deferred_by_provider', (select count(*) from knowledge_items
                              where status in ('pending', 'failed') and last_transient_error is not null
                                and next_attempt_at > now()),
    'providers', coalesce((
      select jsonb_agg(jsonb_build_object(
               'provider', p.provider, 'state', p.state, 'failures', p.failures,
               'opened_at', p.opened_at, 'probe_at', p.probe_at, 'last_error', p.last_error)
             order by p.provider)
        from provider_backoff p where p.state <> 'closed'), '[]'::jsonb),
    'recent_failures', coalesce((
      select jsonb_agg(f) from (
        select id, client_id, source, attempts, last_error, updated_at
          from knowledge_items
         where last_error is not null and status <> 'done'
         order by updated_at desc
         limit failure_limit) f), '[]'::jsonb))
$$;

do $$
declare
  fn text;
begin
  foreach fn in array array[
    'public.claim_knowledge_items(text, double precision, integer, integer, uuid[], bigint, boolean)',
    'public.provider_gate(text, text, double precision)',
    'public.record_provider_failure(text, text, boolean, double precision, double precision, double precision)',
    'public.record_provider_success(text)',
    'public.defer_knowledge_items(uuid[], text, text, double precision)',
    'public.find_summaries(text[])',
    'public.save_summaries(text[], text[])',
    'public.client_summary_backlog(uuid, integer)',
    'public.save_client_summary(uuid, bigint, text, uuid[], text, timestamptz[])',
    'public.knowledge_schema()',
    'public.knowledge_status(integer)']
  loop
    execute format('revoke execute on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
  end loop;
end
$$;

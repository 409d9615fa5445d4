-- The usage ledger: what each API answer said it cost (`usage`), attributed to client, item and
-- model, written in the transaction that stores what it paid for.
--
-- usage_records keeps one row per (item or client, model, kind) per stored piece of work: the
-- per-document record for billing. Reading spend per client and day from it would scan every
-- row of a busy client, so each record is also added to usage_pending, which
-- nexus.roll_up_usage() moves into usage_daily (one row per day, client, model and kind). The
-- move deletes what it adds, so a record committed while another roll-up ran is simply taken
-- by the next one; readers add what is still pending to what is rolled up. No writer ever
-- updates a shared row, so parallel writers never wait on each other.
--
-- Days are UTC days; the price is the caller's table at the time of the answer (usd is null
-- when the model had no price).

create table public.usage_records (
  id                bigint generated always as identity primary key,
  recorded_at       timestamptz not null default now(),
  client_id         uuid,
  knowledge_item_id uuid,  -- no foreign key: spend stays on record after an item is deleted
  model             text not null,
  kind              text not null check (kind in ('embedding', 'chat')),
  purpose           text not null check (purpose in ('item', 'fold', 'generation', 'search')),
  requests          integer not null default 0 check (requests >= 0),
  prompt_tokens     bigint not null default 0 check (prompt_tokens >= 0),
  completion_tokens bigint not null default 0 check (completion_tokens >= 0),
  usd               numeric(20, 9)
);
create index usage_records_client_time on public.usage_records (client_id, recorded_at);
create index usage_records_item on public.usage_records (knowledge_item_id)
  where knowledge_item_id is not null;

create table public.usage_pending (
  id                bigint primary key,  -- usage_records.id
  day               date not null,
  client_id         uuid,
  model             text not null,
  kind              text not null,
  requests          integer not null,
  prompt_tokens     bigint not null,
  completion_tokens bigint not null,
  usd               numeric(20, 9)
);
create index usage_pending_client on public.usage_pending (client_id);

create table public.usage_daily (
  day               date not null,
  client_id         uuid,
  model             text not null,
  kind              text not null,
  requests          bigint not null default 0,
  prompt_tokens     bigint not null default 0,
  completion_tokens bigint not null default 0,
  usd               numeric(20, 9) not null default 0,
  unpriced_tokens   bigint not null default 0,  -- tokens of answers whose model had no price
  unique nulls not distinct (client_id, day, model, kind)
);

alter table public.usage_records enable row level security;
alter table public.usage_pending enable row level security;
alter table public.usage_daily enable row level security;
create policy usage_records_read_own on public.usage_records
  for select to authenticated using (client_id = nexus.jwt_client_id());
create policy usage_pending_read_own on public.usage_pending
  for select to authenticated using (client_id = nexus.jwt_client_id());
create policy usage_daily_read_own on public.usage_daily
  for select to authenticated using (client_id = nexus.jwt_client_id());
revoke all on public.usage_records, public.usage_pending, public.usage_daily from anon, authenticated;
grant select on public.usage_records, public.usage_pending, public.usage_daily to authenticated;
grant all on public.usage_records, public.usage_pending, public.usage_daily to service_role;
grant select, insert on public.usage_records to nexus_process;
grant select, insert, delete on public.usage_pending to nexus_process;
grant select, insert, update on public.usage_daily to nexus_process;

-- entries: [{"client_id", "knowledge_item_id", "model", "kind", "purpose", "requests",
--            "prompt_tokens", "completion_tokens", "usd"}]; a missing client_id is the item's.
-- Returns how many were recorded.
create or replace function nexus.record_usage(entries jsonb)
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with given as (
    select * from jsonb_to_recordset(coalesce(entries, '[]'::jsonb)) as e (
      client_id uuid, knowledge_item_id uuid, model text, kind text, purpose text, requests integer,
      prompt_tokens bigint, completion_tokens bigint, usd numeric)),
  recorded as (
    insert into usage_records (client_id, knowledge_item_id, model, kind, purpose, requests,
                               prompt_tokens, completion_tokens, usd)
    select coalesce(g.client_id, (select k.client_id from knowledge_items k where k.id = g.knowledge_item_id)),
           g.knowledge_item_id, g.model, g.kind, coalesce(g.purpose, 'item'),
           coalesce(g.requests, 0), coalesce(g.prompt_tokens, 0), coalesce(g.completion_tokens, 0), g.usd
      from given g
    returning *),
  pending as (
    insert into usage_pending (id, day, client_id, model, kind, requests, prompt_tokens, completion_tokens, usd)
    select r.id, (r.recorded_at at time zone 'UTC')::date, r.client_id, r.model, r.kind, r.requests,
           r.prompt_tokens, r.completion_tokens, r.usd
      from recorded r
    returning 1)
  select count(*)::integer from pending
$$;

-- Move pending records into usage_daily. One roll-up at a time (others return at once: what they
-- would move is read from usage_pending meanwhile). Returns how many records it moved.
create or replace function nexus.roll_up_usage()
returns integer
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  moved integer;
begin
  if not pg_try_advisory_xact_lock(hashtext('nexus.roll_up_usage')) then
    return 0;
  end if;
  with taken as (
    delete from usage_pending returning *),
  summed as (
    insert into usage_daily as d (day, client_id, model, kind, requests, prompt_tokens, completion_tokens,
                                  usd, unpriced_tokens)
    select t.day, t.client_id, t.model, t.kind, sum(t.requests), sum(t.prompt_tokens),
           sum(t.completion_tokens), coalesce(sum(t.usd), 0),
           coalesce(sum(t.prompt_tokens + t.completion_tokens) filter (where t.usd is null), 0)
      from taken t
     group by t.day, t.client_id, t.model, t.kind
     order by t.client_id, t.day, t.model, t.kind
    on conflict (client_id, day, model, kind) do update
       set requests = d.requests + excluded.requests,
           prompt_tokens = d.prompt_tokens + excluded.prompt_tokens,
           completion_tokens = d.completion_tokens + excluded.completion_tokens,
           usd = d.usd + excluded.usd,
           unpriced_tokens = d.unpriced_tokens + excluded.unpriced_tokens
    returning 1)
  select count(*)::integer into moved from taken;
  return moved;
end
$$;

-- Spend per day, client, model and kind, rolled up or still pending: for dashboards (RLS: a user
-- sees only its own client's rows).
create or replace view public.usage_by_day
with (security_invoker = true) as
  select u.day, u.client_id, u.model, u.kind,
         sum(u.requests)::bigint as requests,
         sum(u.prompt_tokens)::bigint as prompt_tokens,
         sum(u.completion_tokens)::bigint as completion_tokens,
         (sum(u.prompt_tokens) + sum(u.completion_tokens))::bigint as tokens,
         sum(u.usd) as usd,
         sum(u.unpriced_tokens)::bigint as unpriced_tokens
    from (select d.day, d.client_id, d.model, d.kind, d.requests, d.prompt_tokens, d.completion_tokens,
                 d.usd, d.unpriced_tokens
            from usage_daily d
          union all
          select p.day, p.client_id, p.model, p.kind, p.requests, p.prompt_tokens, p.completion_tokens,
                 coalesce(p.usd, 0), case when p.usd is null then p.prompt_tokens + p.completion_tokens else 0 end
            from usage_pending p) u
   group by u.day, u.client_id, u.model, u.kind;
revoke all on public.usage_by_day from anon, authenticated;
grant select on public.usage_by_day to authenticated, service_role, nexus_process;

-- `nexus usage`: per client and model since a UTC day (and for one client, when given).
create or replace function public.usage_report(since date default null, client uuid default null)
returns table (client_id uuid, model text, kind text, requests bigint, prompt_tokens bigint,
               completion_tokens bigint, tokens bigint, usd numeric, unpriced_tokens bigint)
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  perform nexus.roll_up_usage();
  return query
  select u.client_id, u.model, u.kind, sum(u.requests)::bigint, sum(u.prompt_tokens)::bigint,
         sum(u.completion_tokens)::bigint, sum(u.tokens)::bigint, sum(u.usd), sum(u.unpriced_tokens)::bigint
    from usage_by_day u
   where (since is null or u.day >= since) and (client is null or u.client_id = client)
   group by u.client_id, u.model, u.kind
   order by u.client_id nulls last, u.kind, u.model;
end
$$;

-- Usage not attached to a stored piece of work (an item that failed or was given back, a fold
-- that lost its race): recorded on its own.
create or replace function public.record_usage(entries jsonb)
returns integer
language sql
set search_path = public, pg_catalog
as $$
  select nexus.record_usage(entries)
$$;

-- The calls that store work, each with the usage that paid for it, in the same transaction.
-- (New overloads: the `usage` argument has no default, so a call without it still finds the
-- function it always did.)
create or replace function public.complete_knowledge_item(
  item_id uuid, worker text, claimed_sha256 text, chunks jsonb, item_summary text,
  model text, dimensions integer, tokens integer, elapsed_ms integer, usage jsonb)
returns boolean
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  if not public.complete_knowledge_item(item_id, worker, claimed_sha256, chunks, item_summary, model,
                                        dimensions, tokens, elapsed_ms) then
    return false;
  end if;
  perform nexus.record_usage(usage);
  return true;
end
$$;

create or replace function public.save_client_summary(
  client uuid, expected_version bigint, new_summary text, folded_item_ids uuid[], model_name text,
  folded_processed_at timestamptz[], usage jsonb)
returns boolean
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  if not public.save_client_summary(client, expected_version, new_summary, folded_item_ids, model_name,
                                    folded_processed_at) then
    return false;
  end if;
  perform nexus.record_usage(usage);
  return true;
end
$$;

create or replace function public.store_generation_vectors(
  generation integer, worker text, item_ids uuid[], chunk_indexes integer[], hashes text[],
  embeddings text[], usage jsonb)
returns integer
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  stored integer;
begin
  stored := public.store_generation_vectors(generation, worker, item_ids, chunk_indexes, hashes, embeddings);
  perform nexus.record_usage(usage);
  return stored;
end
$$;

do $grants$
declare
  fn text;
begin
  foreach fn in array array[
    'nexus.record_usage(jsonb)',
    'nexus.roll_up_usage()',
    'public.record_usage(jsonb)',
    'public.complete_knowledge_item(uuid, text, text, jsonb, text, text, integer, integer, integer, jsonb)',
    'public.save_client_summary(uuid, bigint, text, uuid[], text, timestamptz[], jsonb)',
    'public.store_generation_vectors(integer, text, uuid[], integer[], text[], text[], jsonb)']
  loop
    execute format('revoke execute on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role, nexus_process', fn);
  end loop;
  revoke execute on function public.usage_report(date, uuid) from public, anon, authenticated;
  grant execute on function public.usage_report(date, uuid) to service_role;
end
$grants$;

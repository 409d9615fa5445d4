-- Monthly budgets per client. When a client's month-to-date spend (the usage ledger's USD, UTC
-- months) plus what its items being processed are estimated to cost reaches its budget, its
-- pending items wait: claims pass over them, they stay `pending`, and other clients go on. A
-- claim takes a client's items only while what is spent and in flight is below the budget, so
-- the last item taken crosses it by at most its own estimate. Raising the budget, clearing it,
-- or a new month lets them go at the next claim: nothing is marked, so nothing needs releasing.

create table public.client_budgets (
  client_id   uuid primary key references public.clients (id) on delete cascade,
  monthly_usd numeric(20, 9) not null check (monthly_usd >= 0),
  updated_at  timestamptz not null default now()
);
alter table public.client_budgets enable row level security;
create policy client_budgets_read_own on public.client_budgets
  for select to authenticated using (client_id = nexus.jwt_client_id());
revoke all on public.client_budgets from anon, authenticated;
grant select on public.client_budgets to authenticated;
grant all on public.client_budgets to service_role;
grant select on public.client_budgets to nexus_process;

-- What the client spent this UTC month: rolled up, and still pending roll-up.
create or replace function nexus.month_to_date_usd(client uuid)
returns numeric
language sql stable
set search_path = public, pg_catalog
as $$
  select coalesce((select sum(d.usd) from usage_daily d
                    where d.client_id = client
                      and d.day >= date_trunc('month', now() at time zone 'UTC')::date), 0)
       + coalesce((select sum(p.usd) from usage_pending p
                    where p.client_id = client
                      and p.day >= date_trunc('month', now() at time zone 'UTC')::date), 0)
$$;

-- What a client's items being processed are estimated to cost (characters / 4 tokens each).
create or replace function nexus.in_flight_usd(client uuid, usd_per_token double precision)
returns numeric
language sql stable
set search_path = public, pg_catalog
as $$
  select coalesce(sum(ceil(k.char_count / 4.0) * coalesce(usd_per_token, 0)), 0)::numeric
    from knowledge_items k
   where k.client_id = client and k.status = 'processing' and k.lease_expires_at > now()
$$;

-- The claim as before, passing over the items of clients at their budget. `usd_per_token`: what
-- processing is estimated to cost per content token (the caller's price table; null: unknown,
-- and only what is spent counts).
drop function public.claim_knowledge_items(text, double precision, integer, integer, uuid[], bigint, boolean);

create or replace function public.claim_knowledge_items(
  worker text,
  lease_seconds double precision,
  max_items integer default 50,
  max_attempts integer default 5,
  item_ids uuid[] default null,
  max_chars bigint default null,
  probe boolean default false,
  usd_per_token double precision default null)
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
  budgeted uuid[];
  room numeric[];  -- per budgeted client: budget - spent - in flight - taken by this claim
  slot integer;
begin
  update knowledge_items k
     set status = 'failed',
         last_error = 'processing did not finish within its lease ' || k.attempts || ' times',
         lease_owner = null, lease_expires_at = null, updated_at = now()
   where k.status = 'processing' and k.lease_expires_at < now() and k.attempts >= max_attempts
     and (item_ids is null or k.id = any(item_ids));

  select coalesce(array_agg(b.client_id), '{}'),
         coalesce(array_agg(b.monthly_usd - nexus.month_to_date_usd(b.client_id)
                            - nexus.in_flight_usd(b.client_id, usd_per_token)), '{}')
    into budgeted, room
    from client_budgets b;

  open candidates for
    select k.id as item_id, k.client_id as owner, k.char_count
      from knowledge_items k
     where k.status <> 'done'
       and (item_ids is null or k.id = any(item_ids))
       and (k.status = 'pending'
            or (k.status = 'failed' and k.attempts < max_attempts)
            or (k.status = 'processing' and k.lease_expires_at < now()))
       and (item_ids is not null or k.next_attempt_at is null or k.next_attempt_at <= now()
            or (probe and k.status = 'pending'))
       and not (k.client_id = any(budgeted)
                and room[array_position(budgeted, k.client_id)] <= 0)
     order by case when probe then k.transient_failures else 0 end, k.created_at, k.id
       for update skip locked;
  loop
    fetch candidates into candidate;
    exit when not found or cardinality(picked) >= max_items;
    slot := array_position(budgeted, candidate.owner);
    continue when slot is not null and room[slot] <= 0;  -- its client's budget is taken by this claim
    exit when max_chars is not null and cardinality(picked) > 0
              and picked_chars + candidate.char_count > max_chars;
    if slot is not null then
      room[slot] := room[slot] - ceil(candidate.char_count / 4.0) * coalesce(usd_per_token, 0);
    end if;
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

-- `nexus budget set`: a client's monthly budget in USD (the client must exist).
create or replace function public.set_client_budget(client uuid, monthly_usd numeric)
returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  if monthly_usd is null or monthly_usd < 0 then
    raise exception 'The monthly budget must be a number of USD, 0 or more.' using errcode = 'P0001';
  end if;
  if not exists (select 1 from clients c where c.id = client) then
    raise exception 'No client % exists (ingest with --create-client, or insert it into clients).', client
      using errcode = 'P0001';
  end if;
  insert into client_budgets as b (client_id, monthly_usd, updated_at)
  values (client, set_client_budget.monthly_usd, now())
  on conflict (client_id) do update set monthly_usd = excluded.monthly_usd, updated_at = now();
  return (select s from public.client_budget_status() s where (s ->> 'client_id')::uuid = client);
end
$$;

-- `nexus budget clear`: whether the client had a budget.
create or replace function public.clear_client_budget(client uuid)
returns boolean
language sql
set search_path = public, pg_catalog
as $$
  with cleared as (delete from client_budgets b where b.client_id = client returning 1)
  select exists (select 1 from cleared)
$$;

-- `nexus budget show` and `nexus status`: each budget, what is spent this month, and how many of
-- the client's items wait for it.
create or replace function public.client_budget_status()
returns setof jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
           'client_id', b.client_id,
           'monthly_usd', b.monthly_usd,
           'month', to_char(now() at time zone 'UTC', 'YYYY-MM'),
           'spent_usd', round(s.spent, 6),
           'over_budget', s.spent >= b.monthly_usd,
           'waiting_items', case when s.spent >= b.monthly_usd then
             (select count(*) from knowledge_items k
               where k.client_id = b.client_id and k.status = 'pending') else 0 end,
           'updated_at', b.updated_at)
    from client_budgets b
    cross join lateral (select nexus.month_to_date_usd(b.client_id) as spent) s
   order by b.client_id
$$;

-- The sweep rolls the ledger up (so budgets and reports read few rows).
create or replace function public.roll_up_usage()
returns integer
language sql
set search_path = public, pg_catalog
as $$
  select nexus.roll_up_usage()
$$;

do $grants$
declare
  fn text;
begin
  foreach fn in array array[
    'public.claim_knowledge_items(text, double precision, integer, integer, uuid[], bigint, boolean, double precision)',
    'public.set_client_budget(uuid, numeric)',
    'public.clear_client_budget(uuid)',
    'public.client_budget_status()',
    'public.roll_up_usage()',
    'nexus.month_to_date_usd(uuid)',
    'nexus.in_flight_usd(uuid, double precision)']
  loop
    execute format('revoke execute on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
  end loop;
  foreach fn in array array[
    'public.claim_knowledge_items(text, double precision, integer, integer, uuid[], bigint, boolean, double precision)',
    'public.client_budget_status()',
    'public.roll_up_usage()',
    'nexus.month_to_date_usd(uuid)',
    'nexus.in_flight_usd(uuid, double precision)']
  loop
    execute format('grant execute on function %s to nexus_process', fn);
  end loop;
end
$grants$;

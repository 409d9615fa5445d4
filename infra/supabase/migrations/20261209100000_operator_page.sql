-- The operator page (`nexus dashboard`): items done per hour, the failed items with their errors,
-- each client's items and spend, and putting failed items back in the queue. For operators only: service_role (and the owner),
-- never anon, authenticated or a function's own role.

-- Items done per hour over the last `window_hours` hours (this hour included, oldest first, hours
-- without any included), with the chunks and tokens they came to. An item processed again counts
-- once, in the hour it was last done.
create or replace function public.knowledge_throughput(window_hours integer default 24)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  with span as (
    select date_trunc('hour', now()) - make_interval(hours => least(greatest(window_hours, 1), 168) - 1)
           as first_hour),
  buckets as (
    select generate_series((select first_hour from span), date_trunc('hour', now()), interval '1 hour')
           as hour),
  done as (
    select date_trunc('hour', k.processed_at) as hour, count(*) as items,
           coalesce(sum(k.chunk_count), 0) as chunks, coalesce(sum(k.token_count), 0) as tokens
      from knowledge_items k
     where k.status = 'done' and k.processed_at >= (select first_hour from span)
     group by 1)
  select coalesce(jsonb_agg(jsonb_build_object('hour', b.hour, 'done', coalesce(d.items, 0),
                                               'chunks', coalesce(d.chunks, 0), 'tokens', coalesce(d.tokens, 0))
                            order by b.hour), '[]'::jsonb)
    from buckets b left join done d on d.hour = b.hour
$$;

-- The failed items, last failed first, with their errors and when a sweep retries them
-- (`next_attempt_at`; an item at NEXUS_MAX_ATTEMPTS is not retried: it waits for an operator).
create or replace function public.failed_knowledge_items(max_items integer default 50)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select coalesce(jsonb_agg(f order by f.updated_at desc, f.id), '[]'::jsonb)
    from (select k.id, k.client_id, c.name as client_name, k.source, k.attempts, k.last_error,
                 k.created_at, k.updated_at, k.next_attempt_at
            from knowledge_items k left join clients c on c.id = k.client_id
           where k.status = 'failed'
           order by k.updated_at desc, k.id
           limit greatest(max_items, 0)) f
$$;

-- Per client: its name, its items per status, and what its work cost since a UTC day (the usage
-- ledger, rolled up or not; `usd` counts priced tokens only, `unpriced_tokens` the rest). Clients
-- with items, spend or a budget; the `max_clients` that spent most first, then those with the
-- most items waiting. Spend of no client (a search across all of them) has a null client_id.
create or replace function public.client_overview(since date default null, max_clients integer default 50)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  with items as (
    select k.client_id,
           count(*) filter (where k.status = 'pending') as pending,
           count(*) filter (where k.status = 'processing') as processing,
           count(*) filter (where k.status = 'done') as done,
           count(*) filter (where k.status = 'failed') as failed
      from knowledge_items k
     group by k.client_id),
  spend as (
    select u.client_id, sum(u.requests)::bigint as requests, sum(u.tokens)::bigint as tokens,
           sum(u.usd) as usd, sum(u.unpriced_tokens)::bigint as unpriced_tokens
      from usage_by_day u
     where since is null or u.day >= since
     group by u.client_id),
  ids as (
    select i.client_id from items i
    union select s.client_id from spend s
    union select b.client_id from client_budgets b),
  rows as (
    select ids.client_id, c.name, coalesce(i.pending, 0) as pending, coalesce(i.processing, 0) as processing,
           coalesce(i.done, 0) as done, coalesce(i.failed, 0) as failed, coalesce(s.requests, 0) as requests,
           coalesce(s.tokens, 0) as tokens, s.usd, coalesce(s.unpriced_tokens, 0) as unpriced_tokens
      from ids
      left join clients c on c.id = ids.client_id
      left join items i on i.client_id is not distinct from ids.client_id
      left join spend s on s.client_id is not distinct from ids.client_id
     order by s.usd desc nulls last, coalesce(i.pending, 0) + coalesce(i.failed, 0) desc, c.name, ids.client_id
     limit greatest(max_clients, 0))
  select coalesce(jsonb_agg(to_jsonb(r) order by r.usd desc nulls last, r.pending + r.failed desc,
                                                 r.name, r.client_id), '[]'::jsonb)
    from rows r
$$;

-- Put failed items back in the queue as if new: `pending`, no attempt counted, no retry delay and
-- no error (the next failure records its own). `item` alone, or with `all_failed` every failed
-- item; an item in any other state is left alone (one being processed keeps its lease). Returns
-- how many were requeued; the next sweep (or `nexus process --all`) claims them.
create or replace function public.requeue_failed_items(item uuid default null, all_failed boolean default false)
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with requeued as (
    update knowledge_items k
       set status = 'pending', attempts = 0, next_attempt_at = null, last_error = null,
           lease_owner = null, lease_expires_at = null, updated_at = now()
     where k.status = 'failed' and (all_failed or k.id = item)
    returning 1)
  select count(*)::integer from requeued
$$;

revoke execute on function public.knowledge_throughput(integer) from public, anon, authenticated;
revoke execute on function public.failed_knowledge_items(integer) from public, anon, authenticated;
revoke execute on function public.client_overview(date, integer) from public, anon, authenticated;
revoke execute on function public.requeue_failed_items(uuid, boolean) from public, anon, authenticated;
grant execute on function public.knowledge_throughput(integer) to service_role;
grant execute on function public.failed_knowledge_items(integer) to service_role;
grant execute on function public.client_overview(date, integer) to service_role;
grant execute on function public.requeue_failed_items(uuid, boolean) to service_role;

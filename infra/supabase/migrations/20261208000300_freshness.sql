-- Freshness for `nexus status`: how long items took from ingest to done over the last hour
-- (p50 and p95, seconds), and how long the oldest of those still waiting has been waiting.
create or replace function public.knowledge_freshness(window_minutes integer default 60)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
    'window_minutes', window_minutes,
    'done_in_window', count(*),
    'ingest_to_done_p50_seconds',
      round((percentile_cont(0.5) within group (order by extract(epoch from k.processed_at - k.created_at)))::numeric, 3),
    'ingest_to_done_p95_seconds',
      round((percentile_cont(0.95) within group (order by extract(epoch from k.processed_at - k.created_at)))::numeric, 3))
    from knowledge_items k
   where k.status = 'done' and k.processed_at > now() - make_interval(mins => window_minutes)
$$;

revoke execute on function public.knowledge_freshness(integer) from public, anon, authenticated;
grant execute on function public.knowledge_freshness(integer) to service_role, nexus_process;

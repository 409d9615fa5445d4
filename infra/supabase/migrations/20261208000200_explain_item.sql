-- `nexus explain ITEM_ID`: where an item is and why, as facts (the reason is worded by the
-- caller): its status, attempts, errors, lease, the provider back-off and its client's budget
-- that hold it, its chunks and how many are in the vector index of the active generation, and
-- how long it has been since ingest. Null for an unknown item.
create or replace function public.explain_knowledge_item(item uuid)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  with k as (select * from knowledge_items i where i.id = item),
  g as (select * from embedding_generations e where e.state = 'active'),
  chunks as (
    select count(*) as total,
           count(*) filter (where c.vector_indexed and c.embedding is not null) as in_column_index
      from knowledge_chunks c where c.knowledge_item_id = item),
  table_vectors as (
    select count(*) as total, count(*) filter (where v.vector_indexed) as indexed
      from chunk_vectors v join g on v.generation_id = g.id
     where v.knowledge_item_id = item)
  select jsonb_build_object(
    'id', k.id,
    'client_id', k.client_id,
    'source', k.source,
    'status', k.status,
    'attempts', k.attempts,
    'last_error', k.last_error,
    'transient_failures', k.transient_failures,
    'last_transient_error', k.last_transient_error,
    'next_attempt_at', k.next_attempt_at,
    'lease_owner', k.lease_owner,
    'lease_expires_at', k.lease_expires_at,
    'lease_expired', k.lease_expires_at is not null and k.lease_expires_at < now(),
    'created_at', k.created_at,
    'processed_at', k.processed_at,
    'age_seconds', round(extract(epoch from now() - k.created_at))::bigint,
    'ingest_to_done_seconds', case when k.status = 'done'
                                   then round(extract(epoch from k.processed_at - k.created_at), 3) end,
    'summary_folded', k.summary_folded,
    'chunks', (select total from chunks),
    'chunks_in_vector_index', case when (select storage from g) = 'table'
                                   then (select indexed from table_vectors)
                                   else (select in_column_index from chunks) end,
    'embedding_generation', (select jsonb_build_object('model', g.model, 'dimensions', g.dimensions) from g),
    'providers', coalesce((
      select jsonb_agg(jsonb_build_object('provider', p.provider, 'state', p.state, 'opened_at', p.opened_at,
                                          'probe_at', p.probe_at, 'last_error', p.last_error)
                       order by p.provider)
        from provider_backoff p where p.state <> 'closed'), '[]'::jsonb),
    'budget', (select jsonb_build_object('monthly_usd', b.monthly_usd,
                                         'spent_usd', round(nexus.month_to_date_usd(b.client_id), 6),
                                         'month', to_char(now() at time zone 'UTC', 'YYYY-MM'),
                                         'over_budget', nexus.month_to_date_usd(b.client_id) >= b.monthly_usd)
                 from client_budgets b where b.client_id = k.client_id),
    'usage', coalesce((
      select jsonb_agg(jsonb_build_object('kind', u.kind, 'model', u.model, 'tokens', u.tokens, 'usd', u.usd)
                       order by u.kind, u.model)
        from (select r.kind, r.model, sum(r.prompt_tokens + r.completion_tokens) as tokens, sum(r.usd) as usd
                from usage_records r where r.knowledge_item_id = item group by r.kind, r.model) u), '[]'::jsonb))
    from k
$$;

revoke execute on function public.explain_knowledge_item(uuid) from public, anon, authenticated;
grant execute on function public.explain_knowledge_item(uuid) to service_role;

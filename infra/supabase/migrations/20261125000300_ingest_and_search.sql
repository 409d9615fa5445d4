-- pgvector first (added for Supabase, where `postgres` is not a superuser): its `hnsw.*` settings
-- exist only once its library is loaded in the session, and only a superuser may put an unknown
-- setting on a function. Casting a literal to `vector` loads the library, so this file applies in
-- a session of its own (psql per file, the SQL editor, `supabase db push`, an upgrade). The
-- settings also need pgvector 0.8.0 or later.
do $pgvector$
declare
  installed record;
begin
  select e.extversion, n.nspname into installed
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace
   where e.extname = 'vector';
  if installed is null then
    raise exception 'The pgvector extension is not installed: enable "vector" (Supabase: Database, Extensions) or run create extension vector.';
  end if;
  if string_to_array(split_part(installed.extversion, '-', 1), '.')::int[] < array[0, 8, 0] then
    raise exception 'pgvector % is installed, and Nexus Workers needs 0.8.0 or later: run alter extension vector update.', installed.extversion;
  end if;
  execute format('select %L::%I.vector', '[0]', installed.nspname);
end
$pgvector$;

-- SQL functions both store backends call (psycopg directly, PostgREST through `rpc`).

-- Store a batch of items atomically. `items` is a JSON array of objects with keys
-- client_id, source, content, metadata, external_id, idempotency_key, token_estimate, content_type.
-- One row per input item (item_index is its 0-based position) with outcome:
--   created               a new row, status pending
--   duplicate             same idempotency key, or same (client_id, external_id) and content
--   updated               same (client_id, external_id) with new content: replaced, pending again
--   unknown_client        no such client; nothing in the batch is stored
--   idempotency_conflict  the key was used before for a different item; nothing is stored
create or replace function public.ingest_knowledge_items(items jsonb)
returns table (item_index integer, item_id uuid, outcome text, item_status text)
language plpgsql
set search_path = public, nexus, pg_catalog
as $$
declare
  it record;
  found_row record;
  new_id uuid;
begin
  return query
    select (e.ord - 1)::integer, null::uuid, 'unknown_client'::text, null::text
    from jsonb_array_elements(items) with ordinality as e (item, ord)
    where not exists (select 1 from clients c where c.id = (e.item ->> 'client_id')::uuid);
  if found then
    return;
  end if;

  return query
    select (e.ord - 1)::integer, k.id, 'idempotency_conflict'::text, k.status
    from jsonb_array_elements(items) with ordinality as e (item, ord)
    join knowledge_items k
      on k.client_id = (e.item ->> 'client_id')::uuid
     and k.idempotency_key = e.item ->> 'idempotency_key'
    where k.content_sha256 <> nexus.sha256_hex(e.item ->> 'content')
       or k.source <> e.item ->> 'source';
  if found then
    return;
  end if;

  for it in
    select e.item, (e.ord - 1)::integer as idx
    from jsonb_array_elements(items) with ordinality as e (item, ord)
  loop
    new_id := null;
    insert into knowledge_items as k
      (client_id, source, content, metadata, external_id, idempotency_key, token_estimate, content_type)
    values (
      (it.item ->> 'client_id')::uuid,
      it.item ->> 'source',
      it.item ->> 'content',
      coalesce(it.item -> 'metadata', '{}'::jsonb),
      it.item ->> 'external_id',
      it.item ->> 'idempotency_key',
      (it.item ->> 'token_estimate')::integer,
      it.item ->> 'content_type')
    on conflict do nothing
    returning k.id into new_id;

    if new_id is not null then
      return query select it.idx, new_id, 'created'::text, 'pending'::text;
      continue;
    end if;

    -- A concurrent or earlier request stored it: find which key matched.
    select k.id, k.status, k.content_sha256, k.idempotency_key = it.item ->> 'idempotency_key' as by_key
      into found_row
      from knowledge_items k
     where k.client_id = (it.item ->> 'client_id')::uuid
       and (k.idempotency_key = it.item ->> 'idempotency_key' or k.external_id = it.item ->> 'external_id')
     order by (k.idempotency_key = it.item ->> 'idempotency_key') desc nulls last
     limit 1;

    if found_row.id is null then
      raise exception 'knowledge item % conflicted with a row that is gone; retry the request', it.idx
        using errcode = '40001';
    end if;

    if coalesce(found_row.by_key, false)
       or found_row.content_sha256 = nexus.sha256_hex(it.item ->> 'content') then
      return query select it.idx, found_row.id, 'duplicate'::text, found_row.status;
    else
      update knowledge_items k
         set content = it.item ->> 'content',
             source = it.item ->> 'source',
             metadata = coalesce(it.item -> 'metadata', '{}'::jsonb),
             token_estimate = (it.item ->> 'token_estimate')::integer,
             content_type = it.item ->> 'content_type',
             status = 'pending', processed = false, attempts = 0, last_error = null,
             updated_at = now()
       where k.id = found_row.id;
      return query select it.idx, found_row.id, 'updated'::text, 'pending'::text;
    end if;
  end loop;
end
$$;

revoke execute on function public.ingest_knowledge_items(jsonb) from public, anon, authenticated;
grant execute on function public.ingest_knowledge_items(jsonb) to service_role;

-- Nearest chunks by cosine similarity (HNSW), optionally for one client. SECURITY INVOKER:
-- called with a user's JWT, RLS still limits the rows to that user's client.
create or replace function public.match_knowledge_chunks(
  query_embedding vector,
  match_count integer default 10,
  filter_client_id uuid default null)
returns table (
  id uuid,
  knowledge_item_id uuid,
  client_id uuid,
  chunk_index integer,
  content text,
  source text,
  similarity double precision)
language sql stable
set search_path = public, extensions, pg_catalog
set hnsw.iterative_scan = 'relaxed_order'
as $$
  select c.id, c.knowledge_item_id, c.client_id, c.chunk_index, c.content, i.source,
         1 - (c.embedding <=> query_embedding) as similarity
  from (
    select kc.*
    from knowledge_chunks kc
    where kc.embedding is not null
      and (filter_client_id is null or kc.client_id = filter_client_id)
    order by kc.embedding <=> query_embedding
    limit greatest(match_count, 0)
  ) c
  join knowledge_items i on i.id = c.knowledge_item_id
  order by c.embedding <=> query_embedding
$$;

grant execute on function public.match_knowledge_chunks(vector, integer, uuid)
  to authenticated, service_role;

-- Create a client when it does not exist yet (operators, the CLI and the demo); returns its id.
create or replace function public.ensure_client(client_id uuid, client_name text default '')
returns uuid
language sql
set search_path = public, pg_catalog
as $$
  insert into clients as c (id, name) values (client_id, coalesce(client_name, ''))
  on conflict (id) do update set name = case when excluded.name = '' then c.name else excluded.name end
  returning c.id
$$;

revoke execute on function public.ensure_client(uuid, text) from public, anon, authenticated;
grant execute on function public.ensure_client(uuid, text) to service_role;

-- Backlog and health at a glance: counts per status, oldest pending item, recent failures.
create or replace view public.knowledge_item_status
with (security_invoker = true) as
select status,
       count(*)::integer as items,
       min(created_at) filter (where status = 'pending') as oldest_pending_at,
       max(processed_at) as last_processed_at
from public.knowledge_items
group by status;

revoke all on public.knowledge_item_status from anon, authenticated;
grant select on public.knowledge_item_status to service_role;

-- The same, as one JSON document for `nexus status` (both backends call it).
create or replace function public.knowledge_status(failure_limit integer default 10)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
    'counts', coalesce((select jsonb_object_agg(status, items) from knowledge_item_status), '{}'::jsonb),
    'oldest_pending_at', (select min(created_at) from knowledge_items where status = 'pending'),
    'recent_failures', coalesce((
      select jsonb_agg(f) from (
        select id, client_id, source, attempts, last_error, updated_at
        from knowledge_items
        where last_error is not null and status <> 'done'
        order by updated_at desc
        limit failure_limit) f), '[]'::jsonb))
$$;

revoke execute on function public.knowledge_status(integer) from public, anon, authenticated;
grant execute on function public.knowledge_status(integer) to service_role;

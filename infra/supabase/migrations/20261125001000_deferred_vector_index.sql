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

-- Chunk writes leave the HNSW graph out of the transaction that stores them.
--
-- Inserting one 1536-d row into the HNSW index costs milliseconds of server CPU (5 ms on a
-- 2-core machine without SIMD), while the rest of the row costs about 0.1 ms: with the graph in
-- the COPY, a 500-document batch spent 74% of its time there and items waited for it to be `done`.
-- Now a chunk is stored with `vector_indexed = false`, outside the partial HNSW index, and
-- `index_pending_chunks` moves rows into it afterwards (the process function runs it after each
-- trigger's work, with the time left). Search stays exact meanwhile: `match_knowledge_chunks`
-- ranks the indexed rows through HNSW and the not-yet-indexed ones by an exact scan, then merges.

-- Rows stored before this migration are already in the graph: they read as indexed (a column
-- default is evaluated once for existing rows), new rows are not.
alter table public.knowledge_chunks add column vector_indexed boolean not null default true;
alter table public.knowledge_chunks alter column vector_indexed set default false;

drop index if exists public.knowledge_chunks_embedding_hnsw_half;
create index knowledge_chunks_embedding_hnsw_half
  on public.knowledge_chunks using hnsw ((embedding::halfvec(1536)) halfvec_cosine_ops)
  where vector_indexed;
-- The rows awaiting the graph, by client: the exact part of a search, and the indexer's queue.
create index knowledge_chunks_unindexed_idx
  on public.knowledge_chunks (client_id) where not vector_indexed;

-- Move up to max_rows rows into the HNSW index; returns how many. Concurrent callers take
-- disjoint rows (SKIP LOCKED); a row being rewritten by a processing transaction is skipped.
create or replace function public.index_pending_chunks(max_rows integer default 256)
returns integer
language sql
set search_path = public, pg_catalog
set enable_seqscan = off
as $$
  with batch as (
    select kc.id
      from knowledge_chunks kc
     where not kc.vector_indexed
     limit greatest(max_rows, 0)
       for update skip locked),
  moved as (
    update knowledge_chunks kc
       set vector_indexed = true
      from batch b
     where kc.id = b.id
    returning 1)
  select count(*)::integer from moved
$$;

revoke execute on function public.index_pending_chunks(integer) from public, anon, authenticated;
grant execute on function public.index_pending_chunks(integer) to service_role;

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
set hnsw.ef_search = 100
set enable_seqscan = off
as $$
  with indexed as (
    select kc.id, kc.knowledge_item_id, kc.client_id, kc.chunk_index, kc.content, kc.embedding
      from knowledge_chunks kc
     where kc.vector_indexed
       and kc.embedding is not null
       and (filter_client_id is null or kc.client_id = filter_client_id)
     order by kc.embedding::halfvec(1536) <=> query_embedding::halfvec(1536)
     limit greatest(match_count, 0) * case when filter_client_id is null then 2 else 4 end),
  fresh as (
    select kc.id, kc.knowledge_item_id, kc.client_id, kc.chunk_index, kc.content, kc.embedding
      from knowledge_chunks kc
     where not kc.vector_indexed
       and kc.embedding is not null
       and (filter_client_id is null or kc.client_id = filter_client_id)
     order by kc.embedding <=> query_embedding
     limit greatest(match_count, 0)),
  candidates as (
    select * from indexed
    union all
    select * from fresh)
  select c.id, c.knowledge_item_id, c.client_id, c.chunk_index, c.content, i.source,
         1 - (c.embedding <=> query_embedding) as similarity
    from candidates c
    join knowledge_items i on i.id = c.knowledge_item_id
   order by c.embedding <=> query_embedding
   limit greatest(match_count, 0)
$$;

revoke execute on function public.match_knowledge_chunks(vector, integer, uuid) from public, anon;
grant execute on function public.match_knowledge_chunks(vector, integer, uuid) to authenticated, service_role;

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
    'recent_failures', coalesce((
      select jsonb_agg(f) from (
        select id, client_id, source, attempts, last_error, updated_at
          from knowledge_items
         where last_error is not null and status <> 'done'
         order by updated_at desc
         limit failure_limit) f), '[]'::jsonb))
$$;

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

-- Search tuning from bench/search_bench.py: the planner underprices a full scan sorted by
-- halfvec distance on small tables (86 ms instead of 7 ms on 5k chunks), so sequential scans are
-- off inside the function (the client_id btree stays available for small filtered sets); and a
-- client filter draws twice as many candidates before the exact re-rank, for recall.
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
  with candidates as (
    select kc.id, kc.knowledge_item_id, kc.client_id, kc.chunk_index, kc.content, kc.embedding
      from knowledge_chunks kc
     where kc.embedding is not null
       and (filter_client_id is null or kc.client_id = filter_client_id)
     order by kc.embedding::halfvec(1536) <=> query_embedding::halfvec(1536)
     limit greatest(match_count, 0) * case when filter_client_id is null then 2 else 4 end)
  select c.id, c.knowledge_item_id, c.client_id, c.chunk_index, c.content, i.source,
         1 - (c.embedding <=> query_embedding) as similarity
    from candidates c
    join knowledge_items i on i.id = c.knowledge_item_id
   order by c.embedding <=> query_embedding
   limit greatest(match_count, 0)
$$;

revoke execute on function public.match_knowledge_chunks(vector, integer, uuid) from public, anon;
grant execute on function public.match_knowledge_chunks(vector, integer, uuid) to authenticated, service_role;

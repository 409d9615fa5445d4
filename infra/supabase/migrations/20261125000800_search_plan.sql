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

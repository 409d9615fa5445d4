-- When each chunk's vector joined the vector index, so `nexus status` can say how long items take
-- from ingest to searchable through the index, not only to done. A trigger stamps the moment a
-- row's vector_indexed turns true (one by one, or marked for a bulk build), in both the column's
-- table and chunk_vectors; rows indexed before this migration have no stamp and are not counted.
alter table public.knowledge_chunks add column vector_indexed_at timestamptz;
alter table public.chunk_vectors add column vector_indexed_at timestamptz;

create or replace function nexus.stamp_vector_indexed()
returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
  new.vector_indexed_at := now();
  return new;
end
$$;

create trigger knowledge_chunks_vector_indexed_at
  before update of vector_indexed on public.knowledge_chunks
  for each row when (new.vector_indexed and not old.vector_indexed)
  execute function nexus.stamp_vector_indexed();
create trigger chunk_vectors_vector_indexed_at
  before update of vector_indexed on public.chunk_vectors
  for each row when (new.vector_indexed and not old.vector_indexed)
  execute function nexus.stamp_vector_indexed();

-- Freshness as before, plus ingest-to-indexed: for the items done in the window whose chunks are
-- all in the active generation's vector index, from ingest to the last of them joining it.
create or replace function public.knowledge_freshness(window_minutes integer default 60)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  with done as (
    select k.id, k.created_at, extract(epoch from k.processed_at - k.created_at) as to_done
      from knowledge_items k
     where k.status = 'done' and k.processed_at > now() - make_interval(mins => window_minutes)),
  g as (select * from embedding_generations e where e.state = 'active'),
  indexed as (
    select d.id,
           extract(epoch from (
             case when (select storage from g) = 'table'
                  then (select case when bool_and(v.vector_indexed) then max(v.vector_indexed_at) end
                          from chunk_vectors v
                         where v.knowledge_item_id = d.id and v.generation_id = (select id from g))
                  else (select case when bool_and(c.vector_indexed) then max(c.vector_indexed_at) end
                          from knowledge_chunks c where c.knowledge_item_id = d.id) end) - d.created_at)
             as to_indexed
      from done d)
  select jsonb_build_object(
    'window_minutes', window_minutes,
    'done_in_window', (select count(*) from done),
    'ingest_to_done_p50_seconds',
      (select round((percentile_cont(0.5) within group (order by to_done))::numeric, 3) from done),
    'ingest_to_done_p95_seconds',
      (select round((percentile_cont(0.95) within group (order by to_done))::numeric, 3) from done),
    'indexed_in_window', (select count(to_indexed) from indexed),
    'ingest_to_indexed_p50_seconds',
      (select round((percentile_cont(0.5) within group (order by to_indexed))::numeric, 3)
         from indexed where to_indexed is not null),
    'ingest_to_indexed_p95_seconds',
      (select round((percentile_cont(0.95) within group (order by to_indexed))::numeric, 3)
         from indexed where to_indexed is not null))
$$;

revoke execute on function nexus.stamp_vector_indexed() from public;

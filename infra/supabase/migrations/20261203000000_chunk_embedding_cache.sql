-- Vectors paid for but not stored with a chunk. A claim that runs out of time gives back the
-- items it could not summarise in time (shared/pipeline.py, FINISH_RESERVE_S), after their chunks
-- were embedded; those vectors are kept here, and find_chunk_embeddings reads them as well as the
-- stored chunks, so the next claim of those items sends nothing to the embeddings API again.
-- Only such claims write rows, so the table stays small; a save also drops rows older than 30
-- days (by then their items were processed or given up on).
create table public.chunk_embedding_cache (
  content_sha256       text not null,
  embedding_model      text not null,
  embedding_dimensions integer not null,
  embedding            vector not null,
  created_at           timestamptz not null default now(),
  primary key (content_sha256, embedding_model, embedding_dimensions)
);

alter table public.chunk_embedding_cache enable row level security;
revoke all on public.chunk_embedding_cache from anon, authenticated;
grant all on public.chunk_embedding_cache to service_role;

-- Keep vectors by chunk text hash; returns how many were new. Vectors come as pgvector text
-- ('[1,2,3]') so PostgREST's JSON arguments and psycopg's parameters pass the same way.
create or replace function public.save_chunk_embeddings(
  hashes text[], model text, dimensions integer, embeddings text[])
returns integer
language sql
set search_path = public, extensions, pg_catalog
as $$
  with expired as (
    delete from chunk_embedding_cache where created_at < now() - interval '30 days'),
  saved as (
    insert into chunk_embedding_cache (content_sha256, embedding_model, embedding_dimensions, embedding)
    select s.hash, model, dimensions, s.embedding::vector
      from unnest(hashes, embeddings) as s (hash, embedding)
    on conflict (content_sha256, embedding_model, embedding_dimensions) do nothing
    returning 1)
  select count(*)::integer from saved
$$;

revoke execute on function public.save_chunk_embeddings(text[], text, integer, text[])
  from public, anon, authenticated;
grant execute on function public.save_chunk_embeddings(text[], text, integer, text[]) to service_role;

-- Stored embeddings for chunk texts, by text hash, model and dimensions (reused across items),
-- from stored chunks and from the cache above.
create or replace function public.find_chunk_embeddings(hashes text[], model text, dimensions integer)
returns table (content_sha256 text, embedding vector)
language sql stable
set search_path = public, extensions, pg_catalog
as $$
  select distinct on (found.content_sha256) found.content_sha256, found.embedding
    from (select c.content_sha256, c.embedding
            from knowledge_chunks c
           where c.content_sha256 = any(hashes)
             and c.embedding_model = model and c.embedding_dimensions = dimensions
             and c.embedding is not null
          union all
          select k.content_sha256, k.embedding
            from chunk_embedding_cache k
           where k.content_sha256 = any(hashes)
             and k.embedding_model = model and k.embedding_dimensions = dimensions) as found
$$;

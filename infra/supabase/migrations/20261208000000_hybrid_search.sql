-- Hybrid search: Postgres full-text search over the chunks beside vector search, fused by
-- reciprocal rank fusion. Exact terms that embeddings blur (error codes, part numbers, names)
-- get a lexical path.
--
-- The text side is a GIN index on the expression to_tsvector('english', content) (English
-- stemming; words of other scripts are kept as written), not a stored tsvector column: a stored
-- column cost the whole-command bench 0.5 s in 3.0 (to_tsvector on every chunk written, and rows
-- twice the size), the expression index 0.35 s, and the chunk table keeps its size. Its pending
-- list takes inserts (64 MB before it is merged), so writes do not wait on the index's tree.

create index knowledge_chunks_content_tsv_idx on public.knowledge_chunks
  using gin (to_tsvector('english', content)) with (gin_pending_list_limit = 65536);

-- A chunk's similarity to a query vector in the active embedding generation (null when the
-- chunk has no vector there yet).
create or replace function nexus.active_similarity(
  chunk_item uuid, chunk_number integer, chunk_embedding vector, query_embedding vector)
returns double precision
language plpgsql stable
set search_path = public, extensions, pg_catalog
as $$
declare
  g embedding_generations;
  similarity double precision;
begin
  select * into g from embedding_generations e where e.state = 'active';
  if not found or g.storage = 'column' then
    return 1 - (chunk_embedding <=> query_embedding);
  end if;
  select 1 - (v.embedding <=> query_embedding) into similarity
    from chunk_vectors v
   where v.knowledge_item_id = chunk_item and v.chunk_index = chunk_number and v.generation_id = g.id;
  return similarity;
end
$$;

-- The columns of match_knowledge_chunks, ranked by reciprocal rank fusion of full-text search and
-- vector search (score: the sum of 1 / (5 + rank) over both lists), each contributing up to four
-- times match_count candidates (at most 400); on equal fused scores the chunk the words found
-- goes first (the top of each list alone score the same, and an exact word is the firmer
-- evidence). k = 5 rather than the usual 60: two short lists whose tops matter most; on the
-- PostgreSQL manual's own index it gave recall@10 0.877 and MRR 0.689 where 60 gave 0.863 and
-- 0.669 (bench/README.md, "Hybrid search"). `similarity` is the chunk's vector similarity to the query, as match_knowledge_chunks
-- gives it (null with no query_embedding: a search by text alone).
--
-- The text side matches any of the query's words (English stemming, stop words dropped), and
-- scores a chunk by the rarity of the words it holds among the chunks searched (the client's
-- when filter_client_id is given: its own statistics, not the whole table's), BM25's idf, each
-- weighted up by how often the chunk holds it (ts_rank). A rare exact term (an error code, a part
-- number, a name) outweighs common words. The chunks whose words weigh most (twice the pool) are
-- ranked so. With no words left in query_text, the search is by vector alone.
-- Invoker's rights: RLS decides which chunks a caller sees, as for match_knowledge_chunks.
create or replace function public.match_knowledge_chunks_hybrid(
  query_text text, query_embedding vector, match_count integer default 10, filter_client_id uuid default null)
returns table (id uuid, knowledge_item_id uuid, client_id uuid, chunk_index integer, content text,
               source text, similarity double precision)
language plpgsql stable
set search_path = public, extensions, pg_catalog
as $$
declare
  wanted integer := greatest(coalesce(match_count, 0), 0);
  pool integer := least(greatest(coalesce(match_count, 0), 0) * 4, 400);
  searched double precision;
begin
  select greatest(coalesce(sum(i.chunk_count), 0), 1) into searched
    from knowledge_items i
   where (filter_client_id is null or i.client_id = filter_client_id) and i.status = 'done';
  return query
  with vector_ranked as (
    select m.id, row_number() over (order by m.similarity desc, m.id) as rank, m.similarity
      from public.match_knowledge_chunks(query_embedding, pool, filter_client_id) m
     where query_embedding is not null),
  words as (
    select distinct quote_literal(w.lexeme)::tsquery as word
      from unnest(tsvector_to_array(to_tsvector('english', coalesce(query_text, '')))) as w (lexeme)),
  matches as (  -- (chunk, word): each word's chunks straight from the index, up to 10,000
    select c.id, w.word
      from words w
      cross join lateral (
        select kc.id from knowledge_chunks kc
         where to_tsvector('english', kc.content) @@ w.word
           and (filter_client_id is null or kc.client_id = filter_client_id)
         limit 10000) c),
  weighted as (  -- each word's rarity among the chunks searched (a word in more than 10,000
                 -- counts as in 10,000: it hardly tells its chunks apart anyway)
    select m.word, ln(1 + (searched - count(*) + 0.5) / (count(*) + 0.5)) as idf
      from matches m
     group by m.word),
  by_words as (  -- the chunks holding the rarest words, first
    select m.id, sum(w.idf) as weight
      from matches m
      join weighted w on w.word = m.word
     group by m.id
     order by weight desc, m.id
     limit pool * 2),
  documents as materialized (  -- their words, worked out once each
    select b.id, to_tsvector('english', kc.content) as doc
      from by_words b
      join knowledge_chunks kc on kc.id = b.id),
  text_ranked as (  -- among those, how often each holds its words
    select s.id, row_number() over (order by s.score desc, s.id) as rank
      from (select d.id, sum(w.idf * (1 + ts_rank(d.doc, w.word))) as score
              from documents d
              join weighted w on d.doc @@ w.word
             group by d.id
             order by score desc, d.id
             limit pool) s),
  fused as (
    select f.id, sum(1.0 / (5 + f.rank)) as score, min(f.text_rank) as text_rank
      from (select v.id, v.rank, null::bigint as text_rank from vector_ranked v
            union all
            select t.id, t.rank, t.rank from text_ranked t) f
     group by f.id
     order by score desc, text_rank nulls last, f.id
     limit wanted)
  select kc.id, kc.knowledge_item_id, kc.client_id, kc.chunk_index, kc.content, i.source,
         case when query_embedding is null then null
              else coalesce(v.similarity,
                            nexus.active_similarity(kc.knowledge_item_id, kc.chunk_index, kc.embedding,
                                                    query_embedding)) end
    from fused f
    join knowledge_chunks kc on kc.id = f.id
    join knowledge_items i on i.id = kc.knowledge_item_id
    left join vector_ranked v on v.id = f.id
   order by f.score desc, f.text_rank nulls last, f.id;
end
$$;

revoke execute on function public.match_knowledge_chunks_hybrid(text, vector, integer, uuid) from public, anon;
grant execute on function public.match_knowledge_chunks_hybrid(text, vector, integer, uuid)
  to authenticated, service_role;
revoke execute on function nexus.active_similarity(uuid, integer, vector, vector) from public;
grant execute on function nexus.active_similarity(uuid, integer, vector, vector)
  to authenticated, service_role, nexus_process;

-- Which stored chunk rows stay when items are completed again: the one copy of the rule, called
-- by both store backends (the psycopg backend before its binary COPY of the rest;
-- complete_knowledge_item below for PostgREST).
--
-- A stored row stays when its item was processed before and one of the item's new chunks has the
-- same index, text hash, embedding model and dimensions, token count and character span: an
-- unchanged item writes nothing, and an edited one rewrites (and sends through the deferred HNSW
-- index) only the chunks from the edit on. Every other stored row of the items is deleted, all of
-- them for an item never processed (rows written by hand are replaced too).
--
-- item_ids, reprocessed, item_models, item_dimensions: one entry per item completed now
-- (reprocessed: its claim saw a processed_sha256). chunk_*: one entry per new chunk, by item; the
-- chunks of an item not reprocessed may be left out, as none of its rows can stay.
-- Returns the rows kept, as (item_id, chunk_index): every other new chunk is the caller's to write.
create or replace function public.keep_unchanged_chunks(
  item_ids uuid[], reprocessed boolean[], item_models text[], item_dimensions integer[],
  chunk_item_ids uuid[], chunk_indexes integer[], chunk_sha256s text[], chunk_token_counts integer[],
  chunk_char_starts integer[], chunk_char_ends integer[])
returns table (item_id uuid, chunk_index integer)
language sql
set search_path = public, pg_catalog
as $$
  with item as (
    select * from unnest(item_ids, reprocessed, item_models, item_dimensions)
      as i (id, was_processed, model, dimensions)),
  new_chunk as (
    select * from unnest(chunk_item_ids, chunk_indexes, chunk_sha256s, chunk_token_counts,
                         chunk_char_starts, chunk_char_ends)
      as n (item_id, chunk_index, content_sha256, token_count, char_start, char_end)),
  -- the items' stored rows, read by item id (the (knowledge_item_id, chunk_index) index) and
  -- matched in memory: a text hash also matches rows of other items (knowledge_chunks_reuse_idx)
  stored as materialized (
    select c.id, c.knowledge_item_id, c.chunk_index, c.content_sha256, c.embedding_model,
           c.embedding_dimensions, c.token_count, c.char_start, c.char_end
      from knowledge_chunks c
     where c.knowledge_item_id = any(item_ids)),
  -- the new chunks of reprocessed items, with what their stored rows must match
  wanted as materialized (
    select n.item_id, n.chunk_index, n.content_sha256, i.model, i.dimensions,
           n.token_count, n.char_start, n.char_end
      from new_chunk n
      join item i on i.id = n.item_id
     where i.was_processed),
  -- each stored row, judged: it stays when a wanted chunk at its index matches it in full
  judged as materialized (
    select s.id, s.knowledge_item_id, s.chunk_index,
           coalesce(s.content_sha256 = w.content_sha256
                    and s.embedding_model = w.model and s.embedding_dimensions = w.dimensions
                    and s.token_count is not distinct from w.token_count
                    and s.char_start is not distinct from w.char_start
                    and s.char_end is not distinct from w.char_end, false) as stays
      from stored s
      left join wanted w on w.item_id = s.knowledge_item_id and w.chunk_index = s.chunk_index),
  dropped as (
    delete from knowledge_chunks c
     using judged j
     where c.knowledge_item_id = any(item_ids) and c.id = j.id and not j.stays)
  select j.knowledge_item_id, j.chunk_index from judged j where j.stays
$$;

revoke execute on function public.keep_unchanged_chunks(
  uuid[], boolean[], text[], integer[], uuid[], integer[], text[], integer[], integer[], integer[])
  from public, anon, authenticated;
grant execute on function public.keep_unchanged_chunks(
  uuid[], boolean[], text[], integer[], uuid[], integer[], text[], integer[], integer[], integer[])
  to service_role;

-- The PostgREST backend's completion of one item: mark it done, keep its unchanged chunk rows
-- (keep_unchanged_chunks) and insert the other chunks, in one call (one transaction).
-- chunks: [{"chunk_index", "content", "embedding" (pgvector text), "token_count", "char_start", "char_end"}]
create or replace function public.complete_knowledge_item(
  item_id uuid, worker text, claimed_sha256 text, chunks jsonb, item_summary text,
  model text, dimensions integer, tokens integer, elapsed_ms integer)
returns boolean
language plpgsql
set search_path = public, extensions, pg_catalog
as $$
declare
  owner_client uuid;
  was_processed boolean;
  indexes integer[];
  hashes text[];
  token_counts integer[];
  char_starts integer[];
  char_ends integer[];
  kept integer[];
begin
  -- read before finish_knowledge_item sets processed_sha256: whether the claim saw the item processed
  select k.client_id, k.processed_sha256 is not null into owner_client, was_processed
    from knowledge_items k where k.id = complete_knowledge_item.item_id;
  if not public.finish_knowledge_item(item_id, worker, claimed_sha256, item_summary, model, dimensions,
                                      jsonb_array_length(chunks), tokens, elapsed_ms) then
    return false;
  end if;

  select array_agg(n.chunk_index), array_agg(nexus.sha256_hex(n.content)), array_agg(n.token_count),
         array_agg(n.char_start), array_agg(n.char_end)
    into indexes, hashes, token_counts, char_starts, char_ends
    from jsonb_to_recordset(chunks) as n (chunk_index integer, content text, token_count integer,
                                          char_start integer, char_end integer);
  select coalesce(array_agg(k.chunk_index), '{}') into kept
    from public.keep_unchanged_chunks(
           array[complete_knowledge_item.item_id], array[was_processed], array[model], array[dimensions],
           array_fill(complete_knowledge_item.item_id, array[coalesce(cardinality(indexes), 0)]),
           indexes, hashes, token_counts, char_starts, char_ends) as k;

  insert into knowledge_chunks (knowledge_item_id, chunk_index, content, embedding, client_id, token_count,
                                embedding_model, embedding_dimensions, char_start, char_end)
  select complete_knowledge_item.item_id, r.chunk_index, r.content, r.embedding::vector, owner_client,
         r.token_count, model, dimensions, r.char_start, r.char_end
    from jsonb_to_recordset(chunks) as r (chunk_index integer, content text, embedding text,
                                          token_count integer, char_start integer, char_end integer)
   where r.chunk_index <> all(kept);
  return true;
end
$$;

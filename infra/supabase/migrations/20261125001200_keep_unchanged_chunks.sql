-- Completing an item again keeps its stored chunk rows that did not change (same index, text
-- hash, embedding model and dimensions, token count and character span) instead of deleting and
-- re-inserting every row: an unchanged item writes nothing, and an edited one rewrites (and sends
-- through the deferred HNSW index) only the chunks from the edit on. The psycopg backend does the same before its
-- binary COPY (`PostgresStore._drop_changed_chunks`); this is the PostgREST backend's path.
create or replace function public.complete_knowledge_item(
  item_id uuid, worker text, claimed_sha256 text, chunks jsonb, item_summary text,
  model text, dimensions integer, tokens integer, elapsed_ms integer)
returns boolean
language plpgsql
set search_path = public, extensions, pg_catalog
as $$
declare
  owner_client uuid;
begin
  if not public.finish_knowledge_item(item_id, worker, claimed_sha256, item_summary, model, dimensions,
                                      jsonb_array_length(chunks), tokens, elapsed_ms) then
    return false;
  end if;
  select k.client_id into owner_client from knowledge_items k where k.id = item_id;

  delete from knowledge_chunks c
   where c.knowledge_item_id = item_id
     and not exists (
       select 1
         from jsonb_to_recordset(chunks) as n (chunk_index integer, content text, token_count integer,
                                               char_start integer, char_end integer)
        where n.chunk_index = c.chunk_index
          and nexus.sha256_hex(n.content) = c.content_sha256
          and c.embedding_model = model and c.embedding_dimensions = dimensions
          and n.token_count is not distinct from c.token_count
          and n.char_start is not distinct from c.char_start
          and n.char_end is not distinct from c.char_end);

  insert into knowledge_chunks (knowledge_item_id, chunk_index, content, embedding, client_id, token_count,
                                embedding_model, embedding_dimensions, char_start, char_end)
  select item_id, r.chunk_index, r.content, r.embedding::vector, owner_client, r.token_count,
         model, dimensions, r.char_start, r.char_end
    from jsonb_to_recordset(chunks) as r (chunk_index integer, content text, embedding text,
                                          token_count integer, char_start integer, char_end integer)
   where not exists (select 1 from knowledge_chunks c
                      where c.knowledge_item_id = item_id and c.chunk_index = r.chunk_index);
  return true;
end
$$;

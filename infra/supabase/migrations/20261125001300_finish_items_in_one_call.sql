-- Mark a batch of claimed items done in one statement (the psycopg backend's completion, before
-- it COPYs their chunks in the same transaction): 500 items took 64 ms as one call of
-- finish_knowledge_item each, pipelined; one set-based UPDATE takes a few. Same conditions per
-- item as finish_knowledge_item: this worker still holds the lease and the content is the one it
-- processed. Returns the ids it marked done; the caller writes chunks only for those.
create or replace function public.finish_knowledge_items(
  worker text, item_ids uuid[], claimed_sha256s text[], item_summaries text[], model text,
  dimensions integer, chunk_counts integer[], token_counts integer[], elapsed_mss integer[])
returns table (item_id uuid)
language sql
set search_path = public, pg_catalog
as $$
  with batch as (
    select * from unnest(item_ids, claimed_sha256s, item_summaries, chunk_counts, token_counts, elapsed_mss)
      as b (id, claimed_sha256, summary, chunks, tokens, elapsed_ms))
  update knowledge_items k
     set status = 'done', processed = true, processed_sha256 = b.claimed_sha256,
         embedding_model = model, embedding_dimensions = dimensions,
         chunk_count = b.chunks, token_count = b.tokens,
         summary = b.summary, summary_folded = false,
         processed_at = now(), processing_ms = b.elapsed_ms,
         last_error = null, lease_owner = null, lease_expires_at = null, next_attempt_at = null,
         updated_at = now()
    from batch b
   where k.id = b.id and k.status = 'processing' and k.lease_owner = worker
     and k.content_sha256 = b.claimed_sha256
  returning k.id
$$;

revoke execute on function public.finish_knowledge_items(
  text, uuid[], text[], text[], text, integer, integer[], integer[], integer[]) from public, anon, authenticated;
grant execute on function public.finish_knowledge_items(
  text, uuid[], text[], text[], text, integer, integer[], integer[], integer[]) to service_role;

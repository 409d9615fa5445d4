-- The search function's database role: it reads chunks (and which embedding generation is
-- active) and records what embedding a query cost; nothing else. Like the other function roles
-- (20261205000100) it has no login until an operator gives it one:
--   alter role nexus_search with login password '…';
-- It bypasses RLS as the service role does; the function itself keeps a user to its own client.
do $role$
begin
  if not exists (select 1 from pg_roles where rolname = 'nexus_search') then
    create role nexus_search nologin noinherit bypassrls;
  end if;
end
$role$;

grant usage on schema public, nexus to nexus_search;
do $extensions$
begin
  if exists (select 1 from pg_namespace where nspname = 'extensions') then
    grant usage on schema extensions to nexus_search;
  end if;
end
$extensions$;

grant select on public.knowledge_chunks, public.knowledge_items, public.chunk_vectors,
  public.embedding_generations to nexus_search;
-- Recording usage runs as its owner, so a role that may record spend need not read the ledger
-- (writing it returns the new rows, which would take SELECT on every client's records).
alter function public.record_usage(jsonb) security definer set search_path = pg_catalog, public;

grant execute on function public.match_knowledge_chunks(vector, integer, uuid),
  public.match_knowledge_chunks_hybrid(text, vector, integer, uuid),
  public.knowledge_schema(),
  public.record_usage(jsonb),
  nexus.active_similarity(uuid, integer, vector, vector),
  nexus.column_dimensions(),
  nexus.generation_json(public.embedding_generations)
  to nexus_search;

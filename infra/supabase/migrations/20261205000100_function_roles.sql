-- One database role per deployed function, each able to do that function's work and nothing
-- else, so a leaked DSN (the public ingest function's above all) cannot read tokens or rewrite
-- chunks. The migrations create them without a login; an operator gives each a password:
--   alter role nexus_ingest with login password '…';   (likewise nexus_process, nexus_gcal)
-- and points that function's DATABASE_URL at it (docs/deploy.md). The roles bypass RLS, as the
-- service role does, but hold only the grants below; every SQL function they run is SECURITY
-- INVOKER, so those grants are what each can touch.
do $roles$
declare
  name text;
begin
  foreach name in array array['nexus_ingest', 'nexus_process', 'nexus_gcal'] loop
    if not exists (select 1 from pg_roles where rolname = name) then
      execute format('create role %I nologin noinherit bypassrls', name);
    end if;
  end loop;
end
$roles$;

grant usage on schema public, nexus to nexus_ingest, nexus_process, nexus_gcal;
do $extensions$
begin
  if exists (select 1 from pg_namespace where nspname = 'extensions') then
    grant usage on schema extensions to nexus_process;
  end if;
end
$extensions$;

-- ingest: store items once (ingest_knowledge_items), nothing else.
grant select on public.clients to nexus_ingest;
grant select, insert, update on public.knowledge_items to nexus_ingest;

-- process: claim, chunk, embed, summarise and store; search for the vector index's upkeep.
grant select on public.clients to nexus_process;
grant select, update on public.knowledge_items to nexus_process;
grant select, insert, update, delete on public.knowledge_chunks, public.client_summaries,
  public.chunk_embedding_cache, public.summary_cache, public.provider_backoff to nexus_process;
grant select on public.knowledge_item_status to nexus_process;  -- knowledge_status reads it

-- gcal_refresh: the Google token rows in system_config, through the token functions.
grant select, insert, update on public.system_config to nexus_gcal;
grant execute on function nexus.check_google_token_key(text) to nexus_gcal;  -- put_google_token's check

-- Each role may run its own SQL functions (every overload of each name).
do $functions$
declare
  wanted record;
  fn regprocedure;
begin
  for wanted in
    select * from (values
      ('nexus_ingest', array['ingest_knowledge_items']),
      ('nexus_process', array[
        'claim_knowledge_items', 'finish_knowledge_item', 'finish_knowledge_items', 'keep_unchanged_chunks',
        'complete_knowledge_item', 'fail_knowledge_item', 'release_knowledge_items', 'defer_knowledge_items',
        'find_chunk_embeddings', 'save_chunk_embeddings', 'find_summaries', 'save_summaries',
        'client_summary_backlog', 'clients_with_summary_backlog', 'save_client_summary',
        'index_pending_chunks', 'provider_gate', 'record_provider_failure', 'record_provider_success',
        'knowledge_schema', 'knowledge_status']),
      ('nexus_gcal', array[
        'read_google_token', 'list_google_tokens', 'put_google_token', 'claim_google_token_refresh',
        'finish_google_token_refresh', 'reencrypt_google_token'])
    ) as w (role_name, functions)
  loop
    for fn in
      select p.oid::regprocedure from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'public' and p.proname = any(wanted.functions)
    loop
      execute format('grant execute on function %s to %I', fn, wanted.role_name);
    end loop;
  end loop;
end
$functions$;

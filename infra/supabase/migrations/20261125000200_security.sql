-- Row level security on every table: a Supabase JWT sees only its own client's rows;
-- `anon` sees nothing; `system_config` is invisible to both. service_role bypasses RLS.

alter table public.clients enable row level security;
alter table public.knowledge_items enable row level security;
alter table public.knowledge_chunks enable row level security;
alter table public.client_summaries enable row level security;
alter table public.system_config enable row level security;

create policy clients_read_own on public.clients
  for select to authenticated using (id = nexus.jwt_client_id());
create policy knowledge_items_read_own on public.knowledge_items
  for select to authenticated using (client_id = nexus.jwt_client_id());
create policy knowledge_chunks_read_own on public.knowledge_chunks
  for select to authenticated using (client_id = nexus.jwt_client_id());
create policy client_summaries_read_own on public.client_summaries
  for select to authenticated using (client_id = nexus.jwt_client_id());

-- Writes go through the functions (service_role); the API roles only read, under RLS.
revoke all on public.clients, public.knowledge_items, public.knowledge_chunks,
  public.client_summaries, public.system_config from anon, authenticated;
grant select on public.clients, public.knowledge_items, public.knowledge_chunks,
  public.client_summaries to authenticated;
grant all on public.clients, public.knowledge_items, public.knowledge_chunks,
  public.client_summaries, public.system_config to service_role;

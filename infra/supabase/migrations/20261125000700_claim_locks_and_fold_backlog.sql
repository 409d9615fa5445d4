-- Claims lock only what they take, and a sweep can find clients whose summary fold was missed.

-- Same contract as before. The candidates are fetched one at a time from a FOR UPDATE SKIP LOCKED
-- cursor, which locks a row only when it is fetched, so a claim holds the rows it takes (and the
-- one it stopped at) instead of up to max_items rows: a concurrent sweeper finds the rest.
create or replace function public.claim_knowledge_items(
  worker text,
  lease_seconds double precision,
  max_items integer default 50,
  max_attempts integer default 5,
  item_ids uuid[] default null,
  max_chars bigint default null)
returns table (
  id uuid, client_id uuid, source text, content text, content_sha256 text,
  processed_sha256 text, embedding_model text, embedding_dimensions integer, attempts integer)
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  candidates refcursor;
  candidate record;
  picked uuid[] := '{}';
  picked_chars bigint := 0;
begin
  update knowledge_items k
     set status = 'failed',
         last_error = 'processing did not finish within its lease ' || k.attempts || ' times',
         lease_owner = null, lease_expires_at = null, updated_at = now()
   where k.status = 'processing' and k.lease_expires_at < now() and k.attempts >= max_attempts
     and (item_ids is null or k.id = any(item_ids));

  open candidates for
    select k.id as item_id, k.char_count
      from knowledge_items k
     where k.status <> 'done'
       and (item_ids is null or k.id = any(item_ids))
       and (k.status = 'pending'
            or (k.status = 'failed' and k.attempts < max_attempts)
            or (k.status = 'processing' and k.lease_expires_at < now()))
       and (item_ids is not null or k.next_attempt_at is null or k.next_attempt_at <= now())
     order by k.created_at, k.id
       for update skip locked;
  loop
    fetch candidates into candidate;
    exit when not found
           or cardinality(picked) >= max_items
           or (max_chars is not null and cardinality(picked) > 0
               and picked_chars + candidate.char_count > max_chars);
    picked := picked || candidate.item_id;
    picked_chars := picked_chars + candidate.char_count;
  end loop;
  close candidates;

  return query
  update knowledge_items k
     set status = 'processing',
         attempts = k.attempts + 1,
         lease_owner = worker,
         lease_expires_at = now() + make_interval(secs => lease_seconds),
         updated_at = now()
   where k.id = any(picked)
  returning k.id, k.client_id, k.source, k.content, k.content_sha256,
            k.processed_sha256, k.embedding_model, k.embedding_dimensions, k.attempts;
end
$$;

-- Clients with done items not yet folded into their summary (a crash or a failed fold after the
-- items were stored leaves such a backlog); the sweep folds them.
create or replace function public.clients_with_summary_backlog(max_clients integer default 100)
returns setof uuid
language sql stable
set search_path = public, pg_catalog
as $$
  select distinct k.client_id
    from knowledge_items k
   where k.status = 'done' and not k.summary_folded and k.summary is not null
   limit max_clients
$$;

create index if not exists knowledge_items_summary_backlog_idx
  on public.knowledge_items (client_id) where status = 'done' and not summary_folded;

revoke execute on function public.clients_with_summary_backlog(integer) from public, anon, authenticated;
grant execute on function public.clients_with_summary_backlog(integer) to service_role;

-- pgvector first (added for Supabase, where `postgres` is not a superuser): its `hnsw.*` settings
-- exist only once its library is loaded in the session, and only a superuser may put an unknown
-- setting on a function. Casting a literal to `vector` loads the library, so this file applies in
-- a session of its own (psql per file, the SQL editor, `supabase db push`, an upgrade). The
-- settings also need pgvector 0.8.0 or later.
do $pgvector$
declare
  installed record;
begin
  select e.extversion, n.nspname into installed
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace
   where e.extname = 'vector';
  if installed is null then
    raise exception 'The pgvector extension is not installed: enable "vector" (Supabase: Database, Extensions) or run create extension vector.';
  end if;
  if string_to_array(split_part(installed.extversion, '-', 1), '.')::int[] < array[0, 8, 0] then
    raise exception 'pgvector % is installed, and Nexus Workers needs 0.8.0 or later: run alter extension vector update.', installed.extversion;
  end if;
  execute format('select %L::%I.vector', '[0]', installed.nspname);
end
$pgvector$;

-- Processing: claims with leases, atomic completion, failures with backoff, embedding reuse,
-- and incremental client summaries. Both store backends call these functions.

alter table public.knowledge_items
  add column next_attempt_at timestamptz,
  add column summary_folded boolean not null default false;

alter table public.knowledge_chunks
  add column char_start integer,
  add column char_end integer;

alter table public.client_summaries
  add column version bigint not null default 0;

-- Any change of content (through ingest or straight SQL) makes the item pending again.
create or replace function nexus.reset_changed_item() returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
  if new.content is distinct from old.content then
    new.status := 'pending';
    new.processed := false;
    new.attempts := 0;
    new.last_error := null;
    new.lease_owner := null;
    new.lease_expires_at := null;
    new.next_attempt_at := null;
    new.updated_at := now();
  end if;
  return new;
end
$$;

create trigger knowledge_items_reset_changed
  before update of content on public.knowledge_items
  for each row execute function nexus.reset_changed_item();

-- Claim up to max_items for `worker` until now() + lease_seconds: pending items, failed ones
-- under max_attempts whose backoff has passed, and processing ones whose lease expired.
-- With item_ids, only those (ignoring backoff: a queue redelivery is its own backoff).
-- Items whose lease expired max_attempts times are marked failed instead of claimed again.
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
begin
  update knowledge_items k
     set status = 'failed',
         last_error = 'processing did not finish within its lease ' || k.attempts || ' times',
         lease_owner = null, lease_expires_at = null, updated_at = now()
   where k.status = 'processing' and k.lease_expires_at < now() and k.attempts >= max_attempts
     and (item_ids is null or k.id = any(item_ids));

  -- Oldest first, skipping rows other workers hold; at most max_items and (beyond the first
  -- item) at most max_chars characters, so one claim is one right-sized batch of work.
  return query
  with locked as (
    select k.id, k.created_at, k.char_count
      from knowledge_items k
     where k.status <> 'done'
       and (item_ids is null or k.id = any(item_ids))
       and (k.status = 'pending'
            or (k.status = 'failed' and k.attempts < max_attempts)
            or (k.status = 'processing' and k.lease_expires_at < now()))
       and (item_ids is not null or k.next_attempt_at is null or k.next_attempt_at <= now())
     order by k.created_at
     limit max_items
       for update skip locked),
  candidates as (
    select l.id
      from (select l.id, sum(l.char_count) over (order by l.created_at, l.id) as running,
                   row_number() over (order by l.created_at, l.id) as position
              from locked l) l
     where max_chars is null or l.position = 1 or l.running <= max_chars)
  update knowledge_items k
     set status = 'processing',
         attempts = k.attempts + 1,
         lease_owner = worker,
         lease_expires_at = now() + make_interval(secs => lease_seconds),
         updated_at = now()
    from candidates c
   where k.id = c.id
  returning k.id, k.client_id, k.source, k.content, k.content_sha256,
            k.processed_sha256, k.embedding_model, k.embedding_dimensions, k.attempts;
end
$$;

-- Mark a claimed item done, if `worker` still holds its lease and its content is still the one
-- it processed. Returns false otherwise (the caller must then roll back its chunk writes).
create or replace function public.finish_knowledge_item(
  item_id uuid, worker text, claimed_sha256 text, item_summary text,
  model text, dimensions integer, chunks integer, tokens integer, elapsed_ms integer)
returns boolean
language sql
set search_path = public, pg_catalog
as $$
  with done as (
    update knowledge_items k
       set status = 'done', processed = true, processed_sha256 = claimed_sha256,
           embedding_model = model, embedding_dimensions = dimensions,
           chunk_count = chunks, token_count = tokens,
           summary = item_summary, summary_folded = false,
           processed_at = now(), processing_ms = elapsed_ms,
           last_error = null, lease_owner = null, lease_expires_at = null, next_attempt_at = null,
           updated_at = now()
     where k.id = item_id and k.status = 'processing' and k.lease_owner = worker
       and k.content_sha256 = claimed_sha256
    returning 1)
  select exists (select 1 from done)
$$;

-- The same plus the chunk rows, in one call (the PostgREST backend; psycopg uses binary COPY).
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
begin
  if not public.finish_knowledge_item(item_id, worker, claimed_sha256, item_summary, model, dimensions,
                                      jsonb_array_length(chunks), tokens, elapsed_ms) then
    return false;
  end if;
  select k.client_id into owner_client from knowledge_items k where k.id = item_id;
  delete from knowledge_chunks c where c.knowledge_item_id = item_id;
  insert into knowledge_chunks (knowledge_item_id, chunk_index, content, embedding, client_id, token_count,
                                embedding_model, embedding_dimensions, char_start, char_end)
  select item_id, r.chunk_index, r.content, r.embedding::vector, owner_client, r.token_count,
         model, dimensions, r.char_start, r.char_end
    from jsonb_to_recordset(chunks) as r (chunk_index integer, content text, embedding text,
                                          token_count integer, char_start integer, char_end integer);
  return true;
end
$$;

-- Record a failed attempt: back to `failed` with the error, retried after an exponential backoff
-- while attempts < max_attempts; `permanent` errors use up the remaining attempts at once.
-- Previous chunks are kept. Returns the new status, or null if `worker` no longer holds the lease.
create or replace function public.fail_knowledge_item(
  item_id uuid, worker text, error text, max_attempts integer,
  retry_base_seconds double precision default 30, permanent boolean default false)
returns text
language sql
set search_path = public, pg_catalog
as $$
  update knowledge_items k
     set status = 'failed',
         last_error = left(error, 2000),
         attempts = case when permanent then greatest(k.attempts, max_attempts) else k.attempts end,
         next_attempt_at = now() + make_interval(
           secs => least(retry_base_seconds * power(2, greatest(k.attempts - 1, 0)), 6 * 3600)),
         lease_owner = null, lease_expires_at = null, updated_at = now()
   where k.id = item_id and k.status = 'processing' and k.lease_owner = worker
  returning k.status
$$;

-- Give claimed items back untouched (the invocation ran out of time before starting them).
create or replace function public.release_knowledge_items(item_ids uuid[], worker text)
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with released as (
    update knowledge_items k
       set status = case when k.last_error is null then 'pending' else 'failed' end,
           attempts = greatest(k.attempts - 1, 0),
           lease_owner = null, lease_expires_at = null, updated_at = now()
     where k.id = any(item_ids) and k.status = 'processing' and k.lease_owner = worker
    returning 1)
  select count(*)::integer from released
$$;

-- Stored embeddings for chunk texts, by text hash, model and dimensions (reused across items).
create or replace function public.find_chunk_embeddings(hashes text[], model text, dimensions integer)
returns table (content_sha256 text, embedding vector)
language sql stable
set search_path = public, extensions, pg_catalog
as $$
  select distinct on (c.content_sha256) c.content_sha256, c.embedding
    from knowledge_chunks c
   where c.content_sha256 = any(hashes)
     and c.embedding_model = model and c.embedding_dimensions = dimensions
     and c.embedding is not null
$$;

-- What a client's summary must still absorb: its current summary and version, and the item
-- summaries not yet folded into it (oldest first).
create or replace function public.client_summary_backlog(client uuid, max_items integer default 50)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
    'summary', coalesce((select s.summary from client_summaries s where s.client_id = client), ''),
    'version', coalesce((select s.version from client_summaries s where s.client_id = client), 0),
    'items', coalesce((
      select jsonb_agg(jsonb_build_object('id', k.id, 'summary', k.summary) order by k.processed_at)
        from (select k.id, k.summary, k.processed_at from knowledge_items k
               where k.client_id = client and k.status = 'done' and not k.summary_folded
                 and k.summary is not null
               order by k.processed_at limit max_items) k), '[]'::jsonb))
$$;

-- Save a folded client summary if nobody saved another since `expected_version` was read
-- (optimistic concurrency); marks the folded items. Returns false on a lost race.
create or replace function public.save_client_summary(
  client uuid, expected_version bigint, new_summary text, folded_item_ids uuid[], model_name text)
returns boolean
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  if expected_version = 0 then
    insert into client_summaries as s (client_id, summary, item_count, model, version, updated_at)
    values (client, new_summary, cardinality(folded_item_ids), model_name, 1, now())
    on conflict (client_id) do nothing;
    if not found then
      return false;
    end if;
  else
    update client_summaries s
       set summary = new_summary, item_count = s.item_count + cardinality(folded_item_ids),
           model = model_name, version = s.version + 1, updated_at = now()
     where s.client_id = client and s.version = expected_version;
    if not found then
      return false;
    end if;
  end if;
  update knowledge_items k set summary_folded = true
   where k.id = any(folded_item_ids) and k.client_id = client;
  return true;
end
$$;

-- Backlog, failures and throughput in one JSON document (`nexus status`).
create or replace function public.knowledge_status(failure_limit integer default 10)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
    'counts', coalesce((select jsonb_object_agg(status, items) from knowledge_item_status), '{}'::jsonb),
    'oldest_pending_at', (select min(created_at) from knowledge_items where status = 'pending'),
    'oldest_pending_age_seconds', (select round(extract(epoch from now() - min(created_at)))::bigint
                                     from knowledge_items where status = 'pending'),
    'processed_last_hour', (select count(*) from knowledge_items
                             where processed_at > now() - interval '1 hour'),
    'chunks', (select count(*) from knowledge_chunks),
    'recent_failures', coalesce((
      select jsonb_agg(f) from (
        select id, client_id, source, attempts, last_error, updated_at
          from knowledge_items
         where last_error is not null and status <> 'done'
         order by updated_at desc
         limit failure_limit) f), '[]'::jsonb))
$$;

do $$
declare
  fn text;
begin
  foreach fn in array array[
    'public.claim_knowledge_items(text, double precision, integer, integer, uuid[], bigint)',
    'public.finish_knowledge_item(uuid, text, text, text, text, integer, integer, integer, integer)',
    'public.complete_knowledge_item(uuid, text, text, jsonb, text, text, integer, integer, integer)',
    'public.fail_knowledge_item(uuid, text, text, integer, double precision, boolean)',
    'public.release_knowledge_items(uuid[], text)',
    'public.find_chunk_embeddings(text[], text, integer)',
    'public.client_summary_backlog(uuid, integer)',
    'public.save_client_summary(uuid, bigint, text, uuid[], text)']
  loop
    execute format('revoke execute on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
  end loop;
end
$$;

-- Index half-precision copies of the embeddings: HNSW inserts run about twice as fast and the
-- index is half the size; search re-ranks the candidates by their exact full-precision distance.
drop index if exists public.knowledge_chunks_embedding_hnsw;
create index knowledge_chunks_embedding_hnsw_half
  on public.knowledge_chunks using hnsw ((embedding::halfvec(1536)) halfvec_cosine_ops);

create or replace function public.match_knowledge_chunks(
  query_embedding vector,
  match_count integer default 10,
  filter_client_id uuid default null)
returns table (
  id uuid,
  knowledge_item_id uuid,
  client_id uuid,
  chunk_index integer,
  content text,
  source text,
  similarity double precision)
language sql stable
set search_path = public, extensions, pg_catalog
set hnsw.iterative_scan = 'relaxed_order'
set hnsw.ef_search = 100
as $$
  with candidates as (
    select kc.id, kc.knowledge_item_id, kc.client_id, kc.chunk_index, kc.content, kc.embedding
      from knowledge_chunks kc
     where kc.embedding is not null
       and (filter_client_id is null or kc.client_id = filter_client_id)
     order by kc.embedding::halfvec(1536) <=> query_embedding::halfvec(1536)
     limit greatest(match_count, 0) * 2)
  select c.id, c.knowledge_item_id, c.client_id, c.chunk_index, c.content, i.source,
         1 - (c.embedding <=> query_embedding) as similarity
    from candidates c
    join knowledge_items i on i.id = c.knowledge_item_id
   order by c.embedding <=> query_embedding
   limit greatest(match_count, 0)
$$;

grant execute on function public.match_knowledge_chunks(vector, integer, uuid) to authenticated, service_role;

-- A chunk's client is its item's client, enforced: RLS on chunks relies on it.
alter table public.knowledge_items
  add constraint knowledge_items_id_client_key unique (id, client_id);
alter table public.knowledge_chunks
  drop constraint knowledge_chunks_knowledge_item_id_fkey,
  alter column client_id set not null,
  add constraint knowledge_chunks_item_client_fkey foreign key (knowledge_item_id, client_id)
    references public.knowledge_items (id, client_id) on delete cascade;

revoke execute on function public.match_knowledge_chunks(vector, integer, uuid) from public, anon;

-- Policies evaluate the JWT's client once per statement (an initPlan), not once per row; the
-- function no longer needs an exception block (a subtransaction) to reject a malformed claim.
create or replace function nexus.jwt_client_id() returns uuid
language sql stable
set search_path = pg_catalog
as $$
  select case when raw ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
              then raw::uuid end
    from (select coalesce(claims ->> 'client_id', claims -> 'app_metadata' ->> 'client_id') as raw
            from (select nullif(current_setting('request.jwt.claims', true), '')::jsonb as claims) c) r
$$;

alter policy clients_read_own on public.clients using (id = (select nexus.jwt_client_id()));
alter policy knowledge_items_read_own on public.knowledge_items
  using (client_id = (select nexus.jwt_client_id()));
alter policy knowledge_chunks_read_own on public.knowledge_chunks
  using (client_id = (select nexus.jwt_client_id()));
alter policy client_summaries_read_own on public.client_summaries
  using (client_id = (select nexus.jwt_client_id()));

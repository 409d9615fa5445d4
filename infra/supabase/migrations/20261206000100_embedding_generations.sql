-- pgvector first (as in …000800): this file puts `hnsw.*` settings on a function, which a
-- non-superuser may do only once pgvector's library is loaded in the session.
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

-- Embedding generations: one (model, dimensions) pair each, so a database can move to another
-- model or size while search keeps answering and nothing is paid twice (`nexus embeddings`).
--
-- * A generation's vectors live either in `knowledge_chunks.embedding` (storage `column`: the
--   seed's column and its HNSW index; at most one generation holds it, one whose dimensions are
--   the column's) or in `chunk_vectors` (storage `table`), one row per chunk and generation, with
--   a partial HNSW index of its own on `embedding::halfvec(D)` where `generation_id = <id>`.
-- * States: `active` (exactly one once anything is processed; search and the query embedder use
--   it), `building` (being filled), `ready` (every chunk has its vector), `retired` (the previous
--   active one, kept for `rollback` until `drop`).
-- * Processing writes the active generation's vectors with the chunks, in the same transaction,
--   then the building or ready generation's for the same chunks. Sweeps fill what is still
--   missing after live work (claim_generation_chunks / store_generation_vectors), reusing any
--   vector stored for the same text, model and dimensions.
-- * Vectors are tied to their chunk row by (knowledge_item_id, chunk_index) and go when it goes:
--   an edited item's rewritten chunks get new vectors for every generation.

create table public.embedding_generations (
  id           smallint generated always as identity primary key,
  model        text not null check (length(model) between 1 and 200),
  dimensions   integer not null check (dimensions between 1 and 4000),  -- halfvec's HNSW limit
  state        text not null check (state in ('active', 'building', 'ready', 'retired')),
  storage      text not null check (storage in ('column', 'table')),
  created_at   timestamptz not null default now(),
  activated_at timestamptz,
  completed_at timestamptz,
  retired_at   timestamptz,
  -- some chunk may lack a vector for it: sweeps look (a full scan) only while this is true
  unfilled     boolean not null default true,
  unique (model, dimensions)
);
create unique index embedding_generations_one_active on public.embedding_generations ((true))
  where state = 'active';
create unique index embedding_generations_one_in_progress on public.embedding_generations ((true))
  where state in ('building', 'ready');
create unique index embedding_generations_one_column on public.embedding_generations (storage)
  where storage = 'column';

create table public.chunk_vectors (
  knowledge_item_id uuid not null,
  chunk_index       integer not null,
  generation_id     smallint not null references public.embedding_generations (id) on delete cascade,
  client_id         uuid not null,
  embedding         vector not null,
  vector_indexed    boolean not null default false,
  created_at        timestamptz not null default now(),
  primary key (knowledge_item_id, chunk_index, generation_id),
  foreign key (knowledge_item_id, chunk_index)
    references public.knowledge_chunks (knowledge_item_id, chunk_index) on delete cascade
);
-- The rows awaiting their generation's HNSW index: the exact part of a search, the indexer's queue.
create index chunk_vectors_unindexed_idx on public.chunk_vectors (generation_id, client_id)
  where not vector_indexed;

-- Chunks a worker is embedding for a generation (a lease, so two sweeps never pay for one chunk).
create table public.generation_fill_leases (
  generation_id     smallint not null references public.embedding_generations (id) on delete cascade,
  knowledge_item_id uuid not null,
  chunk_index       integer not null,
  worker            text not null,
  lease_until       timestamptz not null,
  primary key (generation_id, knowledge_item_id, chunk_index)
);

alter table public.embedding_generations enable row level security;
alter table public.chunk_vectors enable row level security;
alter table public.generation_fill_leases enable row level security;
create policy chunk_vectors_read_own on public.chunk_vectors
  for select to authenticated using (client_id = nexus.jwt_client_id());
revoke all on public.embedding_generations, public.chunk_vectors, public.generation_fill_leases
  from anon, authenticated;
grant select on public.chunk_vectors to authenticated;
grant select on public.embedding_generations to authenticated;  -- which one search uses; no secrets
create policy embedding_generations_read on public.embedding_generations
  for select to authenticated using (true);
grant all on public.embedding_generations, public.chunk_vectors, public.generation_fill_leases
  to service_role;
grant select, update (state, completed_at, unfilled) on public.embedding_generations to nexus_process;
grant select, insert, update, delete on public.chunk_vectors, public.generation_fill_leases to nexus_process;

-- A database that already holds vectors: they are its first, active generation, in the column.
insert into public.embedding_generations (model, dimensions, state, storage, activated_at, unfilled)
select c.embedding_model, c.embedding_dimensions, 'active', 'column', now(), false
  from public.knowledge_chunks c
 where c.embedding is not null and c.embedding_model is not null and c.embedding_dimensions is not null
 group by 1, 2
 order by count(*) desc
 limit 1;

-- The dimensions `knowledge_chunks.embedding` is declared with (1536 as the seed has it).
create or replace function nexus.column_dimensions()
returns integer
language sql stable
set search_path = public, pg_catalog
as $$
  select nullif(a.atttypmod, -1) from pg_attribute a
   where a.attrelid = 'public.knowledge_chunks'::regclass and a.attname = 'embedding' and not a.attisdropped
$$;

create or replace function nexus.generation_json(g public.embedding_generations)
returns jsonb
language sql stable
as $$
  select jsonb_build_object('id', g.id, 'model', g.model, 'dimensions', g.dimensions, 'state', g.state,
                            'storage', g.storage, 'created_at', g.created_at, 'activated_at', g.activated_at,
                            'completed_at', g.completed_at, 'retired_at', g.retired_at, 'unfilled', g.unfilled)
$$;

-- What settings must agree with: the column's dimensions and every generation.
create or replace function public.knowledge_schema()
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select jsonb_build_object(
    'embedding_dimensions', nexus.column_dimensions(),
    'generations', coalesce((select jsonb_agg(nexus.generation_json(g) order by g.id)
                               from embedding_generations g), '[]'::jsonb))
$$;

-- The active generation, created from the caller's settings when the database has none yet (its
-- first processing run); returns it.
-- Security definer: the process role may not create tables' indexes, and this is its one way to
-- add a generation (the first, from its settings, on a database with none).
create or replace function public.ensure_embedding_generation(model text, dimensions integer)
returns jsonb
language plpgsql
security definer
set search_path = public, pg_catalog
as $$
declare
  g embedding_generations;
begin
  select * into g from embedding_generations where state = 'active';
  if found then
    return nexus.generation_json(g);
  end if;
  lock table embedding_generations in share row exclusive mode;  -- one creator at a time
  select * into g from embedding_generations where state = 'active';
  if not found then
    insert into embedding_generations (model, dimensions, state, storage, activated_at, unfilled)
    values (model, dimensions, 'active',
            case when dimensions = nexus.column_dimensions()
                  and not exists (select 1 from embedding_generations where storage = 'column')
                 then 'column' else 'table' end,
            now(), exists (select 1 from knowledge_chunks))
    returning * into g;
    if g.storage = 'table' then
      perform nexus.create_generation_index(g);
    end if;
  end if;
  return nexus.generation_json(g);
end
$$;

create or replace function nexus.generation_index_name(generation integer)
returns text
language sql immutable
as $$ select format('chunk_vectors_hnsw_g%s', generation) $$;

-- A table generation's own HNSW index (empty at first: rows join it through index_pending_chunks).
create or replace function nexus.create_generation_index(g public.embedding_generations)
returns void
language plpgsql
set search_path = public, extensions, pg_catalog
as $$
begin
  execute format(
    'create index if not exists %I on public.chunk_vectors using hnsw '
    '((embedding::halfvec(%s)) halfvec_cosine_ops) where generation_id = %s and vector_indexed',
    nexus.generation_index_name(g.id), g.dimensions, g.id);
end
$$;

-- Every generation with its progress: chunks with a vector for it, chunks in all, and how many
-- of its vectors still wait for its HNSW index.
create or replace function public.embedding_generations_status()
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select coalesce(jsonb_agg(nexus.generation_json(g) || jsonb_build_object(
           'chunks_total', t.total,
           'chunks_embedded', case when g.storage = 'column'
                                   then (select count(*) from knowledge_chunks c where c.embedding is not null)
                                   else (select count(*) from chunk_vectors v where v.generation_id = g.id) end,
           'chunks_awaiting_index', case when g.storage = 'column'
                                   then (select count(*) from knowledge_chunks c
                                          where not c.vector_indexed and c.embedding is not null)
                                   else (select count(*) from chunk_vectors v
                                          where v.generation_id = g.id and not v.vector_indexed) end)
           order by g.id), '[]'::jsonb)
    from embedding_generations g
   cross join (select count(*) as total from knowledge_chunks) t
$$;

-- What a generation (model, dimensions) would cost to fill: every distinct chunk text, and those
-- with no vector stored for that model and dimensions anywhere (chunks, other generations, the
-- embedding cache), with their tokens. Changes nothing.
create or replace function public.plan_embedding_generation(model text, dimensions integer)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  with texts as (
    select c.content_sha256, max(c.token_count) as tokens, count(*) as chunks
      from knowledge_chunks c group by c.content_sha256),
  reusable as (
    select c.content_sha256 from knowledge_chunks c
     where c.embedding is not null and c.embedding_model = model and c.embedding_dimensions = dimensions
    union
    select c.content_sha256 from chunk_vectors v
      join embedding_generations g on g.id = v.generation_id
      join knowledge_chunks c on c.knowledge_item_id = v.knowledge_item_id and c.chunk_index = v.chunk_index
     where g.model = plan_embedding_generation.model and g.dimensions = plan_embedding_generation.dimensions
    union
    select k.content_sha256 from chunk_embedding_cache k
     where k.embedding_model = model and k.embedding_dimensions = dimensions)
  select jsonb_build_object(
    'chunks_total', coalesce(sum(t.chunks), 0),
    'texts_total', count(*),
    'inputs_to_embed', count(*) filter (where r.content_sha256 is null),
    'tokens_to_embed', coalesce(sum(t.tokens) filter (where r.content_sha256 is null), 0),
    'tokens_reused', coalesce(sum(t.tokens) filter (where r.content_sha256 is not null), 0))
    from texts t left join reusable r using (content_sha256)
$$;

-- Add a building generation. Refused (one sentence) when another is building or ready, when the
-- pair is already a generation, or when no generation is active yet.
create or replace function public.start_embedding_generation(model text, dimensions integer)
returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  g embedding_generations;
  existing embedding_generations;
begin
  lock table embedding_generations in share row exclusive mode;
  if not exists (select 1 from embedding_generations where state = 'active') then
    raise exception 'No embedding generation is active yet: process something first (it starts with NEXUS_EMBEDDING_MODEL and NEXUS_EMBEDDING_DIMENSIONS).'
      using errcode = 'P0001';
  end if;
  select * into existing from embedding_generations e
   where e.model = start_embedding_generation.model and e.dimensions = start_embedding_generation.dimensions;
  if found then
    raise exception 'Generation % (%, % dimensions) already exists and is %: %.', existing.id, model, dimensions,
      existing.state, case existing.state when 'retired' then 'use nexus embeddings rollback, or drop it first'
                                          when 'active' then 'nothing to do'
                                          else 'let the sweeps fill it, then cut over' end
      using errcode = 'P0001';
  end if;
  select * into existing from embedding_generations where state in ('building', 'ready');
  if found then
    raise exception 'Generation % (%, % dimensions) is already %: cut over to it or drop it first.',
      existing.id, existing.model, existing.dimensions, existing.state using errcode = 'P0001';
  end if;
  insert into embedding_generations (model, dimensions, state, storage)
  values (model, dimensions, 'building',
          case when dimensions = nexus.column_dimensions()
                and not exists (select 1 from embedding_generations where storage = 'column')
               then 'column' else 'table' end)
  returning * into g;
  if g.storage = 'table' then
    perform nexus.create_generation_index(g);
  end if;
  return nexus.generation_json(g);
end
$$;

-- Lease up to max_chunks chunks that have no vector for the generation yet (of only_items when
-- given), by item. When a full look finds nothing missing and no worker holds a lease, the
-- generation is filled (`unfilled` false) and, if building, ready. A retired one is never filled.
create or replace function public.claim_generation_chunks(
  generation integer, worker text, max_chunks integer, lease_seconds double precision,
  only_items uuid[] default null)
returns table (knowledge_item_id uuid, chunk_index integer, content text, content_sha256 text,
               token_count integer)
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  g embedding_generations;
  claimed integer;
begin
  select * into g from embedding_generations e where e.id = generation;
  if not found or g.state = 'retired' then
    return;
  end if;
  return query
  with lacking as (
    select c.knowledge_item_id, c.chunk_index
      from knowledge_chunks c
     where (only_items is null or c.knowledge_item_id = any(only_items))
       and case when g.storage = 'column' then c.embedding is null
                else not exists (select 1 from chunk_vectors v
                                  where v.knowledge_item_id = c.knowledge_item_id
                                    and v.chunk_index = c.chunk_index and v.generation_id = g.id) end
       and not exists (select 1 from generation_fill_leases l
                        where l.generation_id = g.id and l.knowledge_item_id = c.knowledge_item_id
                          and l.chunk_index = c.chunk_index and l.lease_until > now())
     order by c.knowledge_item_id, c.chunk_index
     limit greatest(max_chunks, 0)),
  leased as (
    insert into generation_fill_leases as l (generation_id, knowledge_item_id, chunk_index, worker, lease_until)
    select g.id, k.knowledge_item_id, k.chunk_index, claim_generation_chunks.worker,
           now() + make_interval(secs => lease_seconds)
      from lacking k
    on conflict on constraint generation_fill_leases_pkey do update
       set worker = excluded.worker, lease_until = excluded.lease_until
     where l.lease_until <= now()
    returning l.knowledge_item_id, l.chunk_index)
  select c.knowledge_item_id, c.chunk_index, c.content, c.content_sha256, c.token_count
    from leased k
    join knowledge_chunks c on c.knowledge_item_id = k.knowledge_item_id and c.chunk_index = k.chunk_index;
  get diagnostics claimed = row_count;
  if claimed = 0 and only_items is null
     and not exists (select 1 from generation_fill_leases l where l.generation_id = g.id and l.lease_until > now()) then
    update embedding_generations e
       set unfilled = false,
           state = case when e.state = 'building' then 'ready' else e.state end,
           completed_at = case when e.state = 'building' then now() else e.completed_at end
     where e.id = g.id;
  end if;
end
$$;

-- Store vectors for a generation (pgvector text, as PostgREST and psycopg both pass it) for the
-- chunks that still hold the text they were made from, and drop the caller's leases on them.
-- Returns how many were stored. Vectors of the wrong size are refused, naming the generation.
create or replace function public.store_generation_vectors(
  generation integer, worker text, item_ids uuid[], chunk_indexes integer[], hashes text[],
  embeddings text[])
returns integer
language plpgsql
set search_path = public, extensions, pg_catalog
as $$
declare
  g embedding_generations;
  wrong integer;
  stored integer;
begin
  select * into g from embedding_generations e where e.id = generation;
  if not found then
    raise exception 'Embedding generation % does not exist (dropped meanwhile?).', generation using errcode = 'P0001';
  end if;
  select vector_dims(s.embedding::vector) into wrong
    from unnest(embeddings) as s (embedding)
   where vector_dims(s.embedding::vector) <> g.dimensions limit 1;
  if wrong is not null then
    raise exception 'A vector for generation % (%) has % dimensions; it needs %.', g.id, g.model, wrong, g.dimensions
      using errcode = 'P0001';
  end if;
  if g.storage = 'column' then
    with given as (
      select * from unnest(item_ids, chunk_indexes, hashes, embeddings) as s (item_id, chunk_index, sha, embedding))
    update knowledge_chunks c
       set embedding = given.embedding::vector, embedding_model = g.model, embedding_dimensions = g.dimensions,
           vector_indexed = false
      from given
     where c.knowledge_item_id = given.item_id and c.chunk_index = given.chunk_index
       and c.content_sha256 = given.sha and c.embedding is null;
  else
    with given as (
      select * from unnest(item_ids, chunk_indexes, hashes, embeddings) as s (item_id, chunk_index, sha, embedding))
    insert into chunk_vectors (knowledge_item_id, chunk_index, generation_id, client_id, embedding)
    select c.knowledge_item_id, c.chunk_index, g.id, c.client_id, given.embedding::vector
      from given
      join knowledge_chunks c on c.knowledge_item_id = given.item_id and c.chunk_index = given.chunk_index
                             and c.content_sha256 = given.sha
    on conflict do nothing;
  end if;
  get diagnostics stored = row_count;
  delete from generation_fill_leases l
   using unnest(item_ids, chunk_indexes) as s (item_id, chunk_index)
   where l.generation_id = g.id and l.knowledge_item_id = s.item_id and l.chunk_index = s.chunk_index
     and l.worker = store_generation_vectors.worker;
  return stored;
end
$$;

-- Give a worker's leases back (its embedding call failed) and say the generation lacks vectors:
-- sweeps look again, and a ready generation is building again until they are filled.
create or replace function public.release_generation_chunks(generation integer, worker text)
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with marked as (
    update embedding_generations e
       set unfilled = true, state = case when e.state = 'ready' then 'building' else e.state end
     where e.id = generation),
  released as (
    delete from generation_fill_leases l
     where l.generation_id = generation and l.worker = release_generation_chunks.worker
    returning 1)
  select count(*)::integer from released
$$;

-- Make the ready generation active, and the active one retired (kept), in one transaction; when
-- chunks still lack its vector, it is building again instead and the answer says how many.
create or replace function public.cutover_embedding_generation()
returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  target embedding_generations;
  previous embedding_generations;
  missing bigint;
begin
  lock table embedding_generations in share row exclusive mode;
  select * into target from embedding_generations where state in ('building', 'ready');
  if not found then
    raise exception 'No generation is building or ready: start one with nexus embeddings start.' using errcode = 'P0001';
  end if;
  -- counted again here: a chunk written by a worker that did not know of the generation yet
  select count(*) into missing from knowledge_chunks c
   where case when target.storage = 'column' then c.embedding is null
              else not exists (select 1 from chunk_vectors v where v.generation_id = target.id
                                 and v.knowledge_item_id = c.knowledge_item_id and v.chunk_index = c.chunk_index) end;
  if missing > 0 then
    update embedding_generations set state = 'building', unfilled = true where id = target.id;
    return jsonb_build_object('missing', missing, 'building', nexus.generation_json(target));
  end if;
  delete from embedding_generations where state = 'retired';  -- only the previous one is kept
  update embedding_generations set state = 'retired', retired_at = now() where state = 'active'
  returning * into previous;
  update embedding_generations set state = 'active', activated_at = now() where id = target.id
  returning * into target;
  return jsonb_build_object('active', nexus.generation_json(target), 'retired', nexus.generation_json(previous));
end
$$;

-- Make the retired generation active again (sweeps fill what edits since cutover left it without),
-- and the active one ready (kept), in one transaction.
create or replace function public.rollback_embedding_generation()
returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  target embedding_generations;
  previous embedding_generations;
begin
  lock table embedding_generations in share row exclusive mode;
  select * into target from embedding_generations where state = 'retired';
  if not found then
    raise exception 'No retired generation is kept to roll back to.' using errcode = 'P0001';
  end if;
  if exists (select 1 from embedding_generations where state in ('building', 'ready')) then
    raise exception 'Another generation is building or ready: drop it before rolling back.' using errcode = 'P0001';
  end if;
  update embedding_generations set state = 'ready', retired_at = null, unfilled = true where state = 'active'
  returning * into previous;
  update embedding_generations set state = 'active', activated_at = now(), retired_at = null, unfilled = true
   where id = target.id
  returning * into target;
  return jsonb_build_object('active', nexus.generation_json(target), 'ready', nexus.generation_json(previous));
end
$$;

-- Remove a retired, building or ready generation: its vectors and its index (the column's
-- vectors are set to null; its index stays, empty, for a later generation of its size). The
-- active generation cannot be dropped.
create or replace function public.drop_embedding_generation(generation integer)
returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  g embedding_generations;
begin
  select * into g from embedding_generations e where e.id = generation for update;
  if not found then
    raise exception 'Embedding generation % does not exist.', generation using errcode = 'P0001';
  end if;
  if g.state = 'active' then
    raise exception 'Generation % (%, % dimensions) is active: cut over to another one before dropping it.',
      g.id, g.model, g.dimensions using errcode = 'P0001';
  end if;
  if g.storage = 'column' then
    update knowledge_chunks set embedding = null where embedding is not null;
  else
    execute format('drop index if exists public.%I', nexus.generation_index_name(g.id));
  end if;
  delete from embedding_generations e where e.id = g.id;  -- its chunk_vectors rows and leases cascade
  return nexus.generation_json(g);
end
$$;

-- Stored embeddings by text hash for a model and dimensions: as before (chunks' column, the
-- cache), plus the vectors of any generation of that model and dimensions.
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
          select c.content_sha256, v.embedding
            from embedding_generations g
            join chunk_vectors v on v.generation_id = g.id
            join knowledge_chunks c on c.knowledge_item_id = v.knowledge_item_id and c.chunk_index = v.chunk_index
           where g.model = find_chunk_embeddings.model and g.dimensions = find_chunk_embeddings.dimensions
             and g.storage = 'table' and c.content_sha256 = any(hashes)
          union all
          select k.content_sha256, k.embedding
            from chunk_embedding_cache k
           where k.content_sha256 = any(hashes)
             and k.embedding_model = model and k.embedding_dimensions = dimensions) as found
$$;

-- Move up to max_rows vectors into their HNSW index: the column's first, then the generations'
-- (each into its own partial index). Returns how many moved.
create or replace function public.index_pending_chunks(max_rows integer default 256)
returns integer
language plpgsql
set search_path = public, pg_catalog
set enable_seqscan = off
as $$
declare
  moved integer;
  more integer;
begin
  with batch as (
    select kc.id from knowledge_chunks kc
     where not kc.vector_indexed
     limit greatest(max_rows, 0)
       for update skip locked),
  flipped as (
    update knowledge_chunks kc set vector_indexed = true from batch b where kc.id = b.id returning 1)
  select count(*)::integer into moved from flipped;
  if moved < max_rows then
    with batch as (
      select v.knowledge_item_id, v.chunk_index, v.generation_id from chunk_vectors v
       where not v.vector_indexed
       limit max_rows - moved
         for update skip locked),
    flipped as (
      update chunk_vectors v set vector_indexed = true from batch b
       where v.knowledge_item_id = b.knowledge_item_id and v.chunk_index = b.chunk_index
         and v.generation_id = b.generation_id
      returning 1)
    select count(*)::integer into more from flipped;
    moved := moved + more;
  end if;
  return moved;
end
$$;

-- Search the active generation: the column's rows as before, or the generation's own rows (its
-- HNSW index over the indexed ones, an exact scan over the waiting ones, merged). Same name,
-- arguments and columns as ever; a query vector of the wrong size gets one sentence.
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
language plpgsql stable
set search_path = public, extensions, pg_catalog
set hnsw.iterative_scan = 'relaxed_order'
set hnsw.ef_search = 100
set enable_seqscan = off
set plan_cache_mode = force_custom_plan
as $$
declare
  g embedding_generations;
begin
  select * into g from embedding_generations e where e.state = 'active';
  if found and vector_dims(query_embedding) <> g.dimensions then
    raise exception 'The query vector has % dimensions, and the active embedding generation (%, % dimensions) needs %.',
      vector_dims(query_embedding), g.model, g.dimensions, g.dimensions using errcode = '22000';
  end if;
  if not found or g.storage = 'column' then
    return query
    with indexed as (
      select kc.id, kc.knowledge_item_id, kc.client_id, kc.chunk_index, kc.content, kc.embedding
        from knowledge_chunks kc
       where kc.vector_indexed
         and kc.embedding is not null
         and (filter_client_id is null or kc.client_id = filter_client_id)
       order by kc.embedding::halfvec(1536) <=> query_embedding::halfvec(1536)
       limit greatest(match_count, 0) * case when filter_client_id is null then 2 else 4 end),
    fresh as (
      select kc.id, kc.knowledge_item_id, kc.client_id, kc.chunk_index, kc.content, kc.embedding
        from knowledge_chunks kc
       where not kc.vector_indexed
         and kc.embedding is not null
         and (filter_client_id is null or kc.client_id = filter_client_id)
       order by kc.embedding <=> query_embedding
       limit greatest(match_count, 0)),
    candidates as (
      select * from indexed
      union all
      select * from fresh)
    select c.id, c.knowledge_item_id, c.client_id, c.chunk_index, c.content, i.source,
           1 - (c.embedding <=> query_embedding) as similarity
      from candidates c
      join knowledge_items i on i.id = c.knowledge_item_id
     order by c.embedding <=> query_embedding
     limit greatest(match_count, 0);
    return;
  end if;
  return query execute format($query$
    with indexed as (
      select v.knowledge_item_id, v.chunk_index, v.embedding
        from chunk_vectors v
       where v.generation_id = %1$s and v.vector_indexed
         and ($2::uuid is null or v.client_id = $2)
       order by v.embedding::halfvec(%2$s) <=> $1::halfvec(%2$s)
       limit $3 * case when $2::uuid is null then 2 else 4 end),
    fresh as (
      select v.knowledge_item_id, v.chunk_index, v.embedding
        from chunk_vectors v
       where v.generation_id = %1$s and not v.vector_indexed
         and ($2::uuid is null or v.client_id = $2)
       order by v.embedding <=> $1
       limit $3),
    candidates as (
      select * from indexed
      union all
      select * from fresh)
    select kc.id, kc.knowledge_item_id, kc.client_id, kc.chunk_index, kc.content, i.source,
           1 - (c.embedding <=> $1) as similarity
      from candidates c
      join knowledge_chunks kc on kc.knowledge_item_id = c.knowledge_item_id and kc.chunk_index = c.chunk_index
      join knowledge_items i on i.id = c.knowledge_item_id
     order by c.embedding <=> $1
     limit $3$query$, g.id, g.dimensions)
  using query_embedding, filter_client_id, greatest(match_count, 0);
end
$$;

revoke execute on function public.match_knowledge_chunks(vector, integer, uuid) from public, anon;
grant execute on function public.match_knowledge_chunks(vector, integer, uuid) to authenticated, service_role;

-- The new functions: the service role may run them all, the process role what processing needs.
do $grants$
declare
  fn text;
begin
  foreach fn in array array[
    'public.ensure_embedding_generation(text, integer)',
    'public.embedding_generations_status()',
    'public.plan_embedding_generation(text, integer)',
    'public.start_embedding_generation(text, integer)',
    'public.claim_generation_chunks(integer, text, integer, double precision, uuid[])',
    'public.store_generation_vectors(integer, text, uuid[], integer[], text[], text[])',
    'public.release_generation_chunks(integer, text)',
    'public.cutover_embedding_generation()',
    'public.rollback_embedding_generation()',
    'public.drop_embedding_generation(integer)']
  loop
    execute format('revoke execute on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
  end loop;
  foreach fn in array array[
    'public.ensure_embedding_generation(text, integer)',
    'public.claim_generation_chunks(integer, text, integer, double precision, uuid[])',
    'public.store_generation_vectors(integer, text, uuid[], integer[], text[], text[])',
    'public.release_generation_chunks(integer, text)']
  loop
    execute format('grant execute on function %s to nexus_process', fn);
  end loop;
end
$grants$;
revoke execute on function nexus.column_dimensions(), nexus.generation_json(public.embedding_generations),
  nexus.generation_index_name(integer), nexus.create_generation_index(public.embedding_generations)
  from public;
grant execute on function nexus.column_dimensions(), nexus.generation_json(public.embedding_generations),
  nexus.generation_index_name(integer), nexus.create_generation_index(public.embedding_generations)
  to service_role, nexus_process, authenticated;

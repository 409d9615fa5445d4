-- Building the HNSW graph in bulk when most chunks are still waiting for it.
--
-- Moving rows into the graph one by one (index_pending_chunks) costs about 3 ms of server CPU per
-- 1536-d row here, even spread over two sessions; building the index from scratch over the same
-- rows, with parallel maintenance workers, costs about 0.5 ms per row. After a large import (a
-- new database, a bulk load) most rows are waiting, and a rebuild finishes several times sooner.
--
-- A rebuild is a few statements a client runs on a connection of its own, outside a transaction
-- (shared/store/postgres.py, `PostgresStore.build_vector_index`):
--   1. begin_vector_index_build: whether a rebuild pays (and the caller may: only the table's
--      owner can drop and create its indexes), taking a lease so one worker builds at a time;
--      returns the index's definition, kept here so a crash between 2 and 4 loses nothing;
--   2. drop index concurrently (searches keep answering: rows outside any index are ranked by an
--      exact scan, as waiting rows always are);
--   3. mark_chunks_indexed: every waiting row joins the indexed side, with no index to insert into;
--   4. create index concurrently, from the kept definition (writes and searches go on meanwhile);
--   5. end_vector_index_build: drops the lease.
-- A worker that dies part way leaves the index missing or invalid and its lease running out; the
-- next call of begin_vector_index_build after the lease rebuilds it, whatever the backlog.

create table public.vector_index_builds (
  index_name  text primary key,
  definition  text not null,
  worker      text not null,
  lease_until timestamptz not null,
  started_at  timestamptz not null default now()
);

alter table public.vector_index_builds enable row level security;
revoke all on public.vector_index_builds from anon, authenticated;
grant all on public.vector_index_builds to service_role;

-- The definition to build (`create index …`, without `concurrently`), or null when the rows are
-- better moved one by one: fewer than min_rows waiting, at least as many already indexed as
-- waiting, more than max_rows in all (more than the caller's time allows), another worker's lease
-- running, or the caller not the table's owner.
create or replace function public.begin_vector_index_build(worker text, lease_s double precision,
  min_rows integer, max_rows bigint)
returns text
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  target constant text := 'knowledge_chunks_embedding_hnsw_half';
  existing regclass := to_regclass('public.' || target);
  valid boolean;
  kept vector_index_builds%rowtype;
  waiting bigint;
  indexed bigint;
  wanted text;
begin
  if not pg_has_role(current_user, (select relowner from pg_class where oid = 'public.knowledge_chunks'::regclass),
                     'USAGE') then
    return null;
  end if;
  select * into kept from vector_index_builds b where b.index_name = target;
  if found and kept.lease_until > now() and kept.worker <> begin_vector_index_build.worker then
    return null;
  end if;
  select i.indisvalid into valid from pg_index i where i.indexrelid = existing;
  if existing is not null and valid then
    select count(*) into waiting from knowledge_chunks where not vector_indexed;
    select count(*) into indexed from (select 1 from knowledge_chunks where vector_indexed limit waiting) r;
    if waiting < min_rows or indexed >= waiting or indexed + waiting > max_rows then
      delete from vector_index_builds b  -- a finished build whose worker died before step 5
       where b.index_name = target and b.lease_until <= now();
      return null;
    end if;
    wanted := pg_get_indexdef(existing);
  elsif kept.definition is not null then
    wanted := kept.definition;  -- a build that did not finish
  elsif existing is not null then
    wanted := pg_get_indexdef(existing);  -- invalid, left by an interrupted build of someone else's
  else
    return null;  -- dropped on purpose: not ours to bring back
  end if;
  insert into vector_index_builds as b (index_name, definition, worker, lease_until)
  values (target, wanted, worker, now() + make_interval(secs => lease_s))
  on conflict on constraint vector_index_builds_pkey do update
     set definition = excluded.definition, worker = excluded.worker,
         lease_until = excluded.lease_until, started_at = now()
   where b.lease_until <= now() or b.worker = excluded.worker
  returning b.definition into wanted;
  return wanted;  -- null when another worker took the lease first
end
$$;

-- Every waiting row joins the indexed side; returns how many. Run only while the index is
-- dropped (a rebuild's step 3), when it writes no graph entries.
create or replace function public.mark_chunks_indexed()
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with moved as (
    update knowledge_chunks set vector_indexed = true where not vector_indexed returning 1)
  select count(*)::integer from moved
$$;

create or replace function public.end_vector_index_build(worker text)
returns boolean
language sql
set search_path = public, pg_catalog
as $$
  with ended as (
    delete from vector_index_builds b
     where b.index_name = 'knowledge_chunks_embedding_hnsw_half' and b.worker = end_vector_index_build.worker
    returning 1)
  select exists (select 1 from ended)
$$;

revoke execute on function public.begin_vector_index_build(text, double precision, integer, bigint),
  public.mark_chunks_indexed(), public.end_vector_index_build(text) from public, anon, authenticated;
grant execute on function public.begin_vector_index_build(text, double precision, integer, bigint),
  public.mark_chunks_indexed(), public.end_vector_index_build(text) to service_role;
-- The process role owns no table, so its answer is always null (rows go in one by one), but it
-- may ask: one code path for every DSN.
grant execute on function public.begin_vector_index_build(text, double precision, integer, bigint)
  to nexus_process;

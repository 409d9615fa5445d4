-- Bulk builds (…_bulk_vector_index.sql) for every vector index, not only the column's: a new
-- generation's backfill loads its vectors outside its HNSW index, and building that index once
-- over all of them is several times faster than moving them in one by one.
--
-- begin_vector_index_build looks at the column's index, then each table generation's that is not
-- retired, and leases the first whose rows mostly wait; mark_vectors_indexed(index) marks that
-- index's waiting rows; end_vector_index_build drops the worker's lease, whichever index it was.

-- The rule for one index: its definition when a rebuild pays (or one did not finish), else null.
-- generation: the generation whose chunk_vectors rows the index holds; null for the column's.
create or replace function nexus.vector_index_build(
  target text, generation integer, worker text, lease_s double precision, min_rows integer, max_rows bigint)
returns text
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  existing regclass := to_regclass('public.' || target);
  valid boolean;
  kept vector_index_builds%rowtype;
  waiting bigint;
  indexed bigint;
  wanted text;
begin
  select * into kept from vector_index_builds b where b.index_name = target;
  if found and kept.lease_until > now() and kept.worker <> vector_index_build.worker then
    return null;
  end if;
  select i.indisvalid into valid from pg_index i where i.indexrelid = existing;
  if existing is not null and valid then
    if generation is null then
      select count(*) into waiting from knowledge_chunks where not vector_indexed;
      select count(*) into indexed from (select 1 from knowledge_chunks where vector_indexed limit waiting) r;
    else
      select count(*) into waiting from chunk_vectors v where v.generation_id = generation and not v.vector_indexed;
      select count(*) into indexed
        from (select 1 from chunk_vectors v where v.generation_id = generation and v.vector_indexed limit waiting) r;
    end if;
    if waiting < min_rows or indexed >= waiting or indexed + waiting > max_rows then
      delete from vector_index_builds b  -- a finished build whose worker died before its end
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

create or replace function public.begin_vector_index_build(worker text, lease_s double precision,
  min_rows integer, max_rows bigint)
returns text
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  candidate record;
  wanted text;
begin
  -- only the tables' owner can drop and create their indexes
  if not pg_has_role(current_user, (select relowner from pg_class where oid = 'public.knowledge_chunks'::regclass),
                     'USAGE') then
    return null;
  end if;
  for candidate in
    select 'knowledge_chunks_embedding_hnsw_half' as name, null::integer as generation, 0 as rank
    union all
    select nexus.generation_index_name(g.id), g.id, 1
      from embedding_generations g where g.storage = 'table' and g.state <> 'retired'
    order by 3, 2
  loop
    wanted := nexus.vector_index_build(candidate.name, candidate.generation, worker, lease_s, min_rows, max_rows);
    if wanted is not null then
      return wanted;
    end if;
  end loop;
  return null;
end
$$;

-- Every waiting row of the index's table (and generation) joins the indexed side; returns how
-- many. Run only while the index is dropped (a rebuild's step 3), when it writes no graph entries.
create or replace function public.mark_vectors_indexed(index_name text)
returns integer
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  generation integer;
  moved integer;
begin
  if index_name = 'knowledge_chunks_embedding_hnsw_half' then
    update knowledge_chunks set vector_indexed = true where not vector_indexed;
  else
    select g.id into generation from embedding_generations g where nexus.generation_index_name(g.id) = index_name;
    if generation is null then
      raise exception 'No vector index is called %.', index_name using errcode = 'P0001';
    end if;
    update chunk_vectors v set vector_indexed = true where v.generation_id = generation and not v.vector_indexed;
  end if;
  get diagnostics moved = row_count;
  return moved;
end
$$;

create or replace function public.end_vector_index_build(worker text)
returns boolean
language sql
set search_path = public, pg_catalog
as $$
  with ended as (
    delete from vector_index_builds b where b.worker = end_vector_index_build.worker returning 1)
  select exists (select 1 from ended)
$$;

drop function public.mark_chunks_indexed();

revoke execute on function public.mark_vectors_indexed(text) from public, anon, authenticated;
grant execute on function public.mark_vectors_indexed(text) to service_role;
revoke execute on function nexus.vector_index_build(text, integer, text, double precision, integer, bigint)
  from public;
grant execute on function nexus.vector_index_build(text, integer, text, double precision, integer, bigint)
  to service_role;

-- Ingest lookups that stay on the unique indexes whatever plan plpgsql cached: a lateral LIMIT 1
-- probe per item and a UNION ALL of the two key lookups, instead of a join and an OR that turned into
-- sequential scans once the table grew past the statistics the cached plan was built on.

create or replace function public.ingest_knowledge_items(items jsonb)
returns table (item_index integer, item_id uuid, outcome text, item_status text)
language plpgsql
set search_path = public, nexus, pg_catalog
as $$
declare
  it record;
  found_row record;
  new_id uuid;
begin
  return query
    select (e.ord - 1)::integer, null::uuid, 'unknown_client'::text, null::text
    from jsonb_array_elements(items) with ordinality as e (item, ord)
    where not exists (select 1 from clients c where c.id = (e.item ->> 'client_id')::uuid);
  if found then
    return;
  end if;

  return query
    select (e.ord - 1)::integer, k.id, 'idempotency_conflict'::text, k.status
    from jsonb_array_elements(items) with ordinality as e (item, ord)
    cross join lateral (
      select k.id, k.status, k.content_sha256, k.source
      from knowledge_items k
      where k.client_id = (e.item ->> 'client_id')::uuid
        and k.idempotency_key = e.item ->> 'idempotency_key'
      limit 1) k
    where k.content_sha256 <> nexus.sha256_hex(e.item ->> 'content')
       or k.source <> e.item ->> 'source';
  if found then
    return;
  end if;

  for it in
    select e.item, (e.ord - 1)::integer as idx
    from jsonb_array_elements(items) with ordinality as e (item, ord)
  loop
    new_id := null;
    insert into knowledge_items as k
      (client_id, source, content, metadata, external_id, idempotency_key, token_estimate, content_type)
    values (
      (it.item ->> 'client_id')::uuid,
      it.item ->> 'source',
      it.item ->> 'content',
      coalesce(it.item -> 'metadata', '{}'::jsonb),
      it.item ->> 'external_id',
      it.item ->> 'idempotency_key',
      (it.item ->> 'token_estimate')::integer,
      it.item ->> 'content_type')
    on conflict do nothing
    returning k.id into new_id;

    if new_id is not null then
      return query select it.idx, new_id, 'created'::text, 'pending'::text;
      continue;
    end if;

    -- A concurrent or earlier request stored it: find which key matched.
    select m.id, m.status, m.content_sha256, m.by_key
      into found_row
      from (
        select k.id, k.status, k.content_sha256, true as by_key
          from knowledge_items k
         where k.client_id = (it.item ->> 'client_id')::uuid
           and k.idempotency_key = it.item ->> 'idempotency_key'
        union all
        select k.id, k.status, k.content_sha256, false
          from knowledge_items k
         where k.client_id = (it.item ->> 'client_id')::uuid
           and k.external_id = it.item ->> 'external_id'
      ) m
     order by m.by_key desc
     limit 1;

    if found_row.id is null then
      raise exception 'knowledge item % conflicted with a row that is gone; retry the request', it.idx
        using errcode = '40001';
    end if;

    if coalesce(found_row.by_key, false)
       or found_row.content_sha256 = nexus.sha256_hex(it.item ->> 'content') then
      return query select it.idx, found_row.id, 'duplicate'::text, found_row.status;
    else
      update knowledge_items k
         set content = it.item ->> 'content',
             source = it.item ->> 'source',
             metadata = coalesce(it.item -> 'metadata', '{}'::jsonb),
             token_estimate = (it.item ->> 'token_estimate')::integer,
             content_type = it.item ->> 'content_type',
             status = 'pending', processed = false, attempts = 0, last_error = null,
             updated_at = now()
       where k.id = found_row.id;
      return query select it.idx, found_row.id, 'updated'::text, 'pending'::text;
    end if;
  end loop;
end
$$;

revoke execute on function public.ingest_knowledge_items(jsonb) from public, anon, authenticated;
grant execute on function public.ingest_knowledge_items(jsonb) to service_role;

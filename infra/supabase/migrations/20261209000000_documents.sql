-- Documents: where a chunk sits in its document (page, heading path), and a large PDF's pages
-- extracted in batches with checkpoints.
--
-- A file ingested as content_base64 is kept in knowledge_items.content as a data URL
-- (`data:application/pdf;base64,…`), so ingest, deduplication and claims treat it like any
-- text; processing extracts its text (shared/text/extract.py, shared/process/documents.py).

-- A PDF's extracted pages, kept while its item is being processed: an invocation that runs out
-- of time leaves the pages it extracted here, and the next claim of the item goes on from them.
-- Rows of older content are replaced; the item's rows go once it is done.
create table public.document_pages (
  knowledge_item_id uuid not null references public.knowledge_items (id) on delete cascade,
  content_sha256    text not null,
  page              integer not null,
  text              text not null,
  created_at        timestamptz not null default now(),
  primary key (knowledge_item_id, page)
);

alter table public.document_pages enable row level security;
revoke all on public.document_pages from anon, authenticated;
grant all on public.document_pages to service_role;
grant select, insert, update, delete on public.document_pages to nexus_process;

-- Store a batch of pages of an item's content `sha`; pages of other content are dropped.
create or replace function public.save_document_pages(
  item_id uuid, sha text, pages integer[], texts text[])
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with stale as (
    delete from document_pages d where d.knowledge_item_id = item_id and d.content_sha256 <> sha),
  saved as (
    insert into document_pages (knowledge_item_id, content_sha256, page, text)
    select item_id, sha, p.page, p.text from unnest(pages, texts) as p (page, text)
    on conflict (knowledge_item_id, page) do update
      set content_sha256 = excluded.content_sha256, text = excluded.text, created_at = now()
    returning 1)
  select count(*)::integer from saved
$$;

-- The pages stored for an item's content `sha`.
create or replace function public.document_pages(item_id uuid, sha text)
returns table (page integer, text text)
language sql stable
set search_path = public, pg_catalog
as $$
  select d.page, d.text from document_pages d
   where d.knowledge_item_id = item_id and d.content_sha256 = sha
   order by d.page
$$;

create or replace function public.drop_document_pages(item_ids uuid[])
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with dropped as (delete from document_pages d where d.knowledge_item_id = any(item_ids) returning 1)
  select count(*)::integer from dropped
$$;

-- An item's structure as processing found it, for the content it chunked: its sections, each
-- [start offset, page or null, [heading, …]], and for each chunk (by chunk_index) the index of
-- the section it starts in (-1: before the first). A chunk's page and heading path come from here.
create table public.knowledge_item_outlines (
  knowledge_item_id  uuid primary key references public.knowledge_items (id) on delete cascade,
  client_id          uuid not null,
  content_sha256     text not null,
  sections           jsonb not null,
  chunk_sections     integer[] not null,
  pages              integer,
  pages_without_text integer[] not null default '{}',
  updated_at         timestamptz not null default now()
);

alter table public.knowledge_item_outlines enable row level security;
create policy knowledge_item_outlines_read_own on public.knowledge_item_outlines
  for select to authenticated using (client_id = nexus.jwt_client_id());
revoke all on public.knowledge_item_outlines from anon, authenticated;
grant select on public.knowledge_item_outlines to authenticated, nexus_search;
grant all on public.knowledge_item_outlines to service_role;
grant select, insert, update, delete on public.knowledge_item_outlines to nexus_process;

-- Keep outlines ([{knowledge_item_id, client_id, content_sha256, sections, chunk_sections,
-- pages, pages_without_text}]); an item's earlier outline is replaced.
create or replace function public.save_item_outlines(outlines jsonb)
returns integer
language sql
set search_path = public, pg_catalog
as $$
  with saved as (
    insert into knowledge_item_outlines as o (knowledge_item_id, client_id, content_sha256, sections,
                                              chunk_sections, pages, pages_without_text)
    select r.knowledge_item_id, r.client_id, r.content_sha256, r.sections, r.chunk_sections, r.pages,
           coalesce(r.pages_without_text, '{}')
      from jsonb_to_recordset(outlines) as r (knowledge_item_id uuid, client_id uuid, content_sha256 text,
                                              sections jsonb, chunk_sections integer[], pages integer,
                                              pages_without_text integer[])
    on conflict (knowledge_item_id) do update
      set client_id = excluded.client_id, content_sha256 = excluded.content_sha256,
          sections = excluded.sections, chunk_sections = excluded.chunk_sections,
          pages = excluded.pages, pages_without_text = excluded.pages_without_text, updated_at = now()
    returning 1)
  select count(*)::integer from saved
$$;

-- Where each chunk sits: its page and heading path (null where its item has no outline for the
-- content its chunks were made from). Runs as the caller, so a user sees only its own client's.
create or replace function public.chunk_locations(chunk_ids uuid[])
returns table (id uuid, page integer, headings text[])
language sql stable
set search_path = public, pg_catalog
as $$
  select c.id, (s.section ->> 1)::integer,
         array(select jsonb_array_elements_text(coalesce(s.section -> 2, '[]'::jsonb)))
    from knowledge_chunks c
    join knowledge_items i on i.id = c.knowledge_item_id
    join knowledge_item_outlines o on o.knowledge_item_id = c.knowledge_item_id
                                  and o.content_sha256 = i.content_sha256
    cross join lateral (select o.sections -> o.chunk_sections[c.chunk_index + 1] as section) s
   where c.id = any(chunk_ids) and o.chunk_sections[c.chunk_index + 1] >= 0
$$;

revoke execute on function public.save_document_pages(uuid, text, integer[], text[]),
  public.document_pages(uuid, text), public.drop_document_pages(uuid[]),
  public.save_item_outlines(jsonb)
  from public, anon, authenticated;
grant execute on function public.save_document_pages(uuid, text, integer[], text[]),
  public.document_pages(uuid, text), public.drop_document_pages(uuid[]),
  public.save_item_outlines(jsonb)
  to service_role, nexus_process;
revoke execute on function public.chunk_locations(uuid[]) from public, anon;
grant execute on function public.chunk_locations(uuid[]) to authenticated, service_role, nexus_search;

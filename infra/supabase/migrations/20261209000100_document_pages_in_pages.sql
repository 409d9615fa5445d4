-- A long PDF's kept pages, read in pages of rows: PostgREST answers at most `db-max-rows` rows per
-- call, so a document of more pages than that is read from after the last page it got, until a
-- call answers fewer rows than asked (shared/store/base.py, document_pages). It replaces the
-- two-argument form, which answered every page at once.
drop function if exists public.document_pages(uuid, text);

create or replace function public.document_pages(item_id uuid, sha text, after_page integer,
                                                 max_pages integer)
returns table (page integer, text text)
language sql stable
set search_path = public, pg_catalog
as $$
  select d.page, d.text from document_pages d
   where d.knowledge_item_id = item_id and d.content_sha256 = sha and d.page > after_page
   order by d.page
   limit greatest(max_pages, 0)
$$;

revoke execute on function public.document_pages(uuid, text, integer, integer) from public, anon, authenticated;
grant execute on function public.document_pages(uuid, text, integer, integer) to service_role, nexus_process;

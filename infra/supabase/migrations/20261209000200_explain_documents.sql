-- `nexus explain` on documents: how many of a long PDF's pages are extracted and kept so far
-- (while it goes on across claims), and, once done, its page count and the pages without a text
-- layer. The facts of 20261208000200 stay as they were: that function is kept under another name
-- and this one adds to what it answers.
alter function public.explain_knowledge_item(uuid) rename to explain_knowledge_item_facts;
alter function public.explain_knowledge_item_facts(uuid) set schema nexus;

create or replace function public.explain_knowledge_item(item uuid)
returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select facts || jsonb_build_object(
    'document_pages_kept', (select count(*) from knowledge_items k
                              join document_pages d on d.knowledge_item_id = k.id
                                                   and d.content_sha256 = k.content_sha256
                             where k.id = item),
    'pages', (select o.pages from knowledge_items k
                join knowledge_item_outlines o on o.knowledge_item_id = k.id
                                              and o.content_sha256 = k.content_sha256
               where k.id = item),
    'pages_without_text', (select to_jsonb(o.pages_without_text) from knowledge_items k
                             join knowledge_item_outlines o on o.knowledge_item_id = k.id
                                                           and o.content_sha256 = k.content_sha256
                            where k.id = item))
    from nexus.explain_knowledge_item_facts(item) as facts
   where facts is not null
$$;

revoke execute on function nexus.explain_knowledge_item_facts(uuid) from public, anon, authenticated;
grant execute on function nexus.explain_knowledge_item_facts(uuid) to service_role;
revoke execute on function public.explain_knowledge_item(uuid) from public, anon, authenticated;
grant execute on function public.explain_knowledge_item(uuid) to service_role;

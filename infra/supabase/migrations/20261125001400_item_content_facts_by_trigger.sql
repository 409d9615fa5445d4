-- An item's `content_sha256` and `char_count` are no longer stored generated columns. As such
-- they were computed again on every UPDATE of the row, whatever it changed (measured on
-- PostgreSQL 18: sha256 and detoasting the content were three quarters of an update that only
-- sets the status), and processing updates each item several times (claimed, done, folded
-- into the client summary). They are now plain columns kept right by triggers: set on insert,
-- recomputed by an update that changes the content or writes either column, so they can never
-- disagree with the content. Marking 625 corpus items done: 100 ms before, 23 ms after.
alter table public.knowledge_items
  alter column content_sha256 drop expression,
  alter column char_count drop expression;

create or replace function nexus.set_item_content_facts() returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
  new.content_sha256 := nexus.sha256_hex(new.content);
  new.char_count := char_length(new.content);
  return new;
end
$$;

create trigger knowledge_items_content_facts_on_insert
  before insert on public.knowledge_items
  for each row execute function nexus.set_item_content_facts();

create trigger knowledge_items_content_facts_on_update
  before update of content, content_sha256, char_count on public.knowledge_items
  for each row when (new.content is distinct from old.content
                     or new.content_sha256 is distinct from old.content_sha256
                     or new.char_count is distinct from old.char_count)
  execute function nexus.set_item_content_facts();

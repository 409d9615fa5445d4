-- The optional database webhook: after an item is inserted or its content changes, pg_net POSTs
-- a Supabase-webhook body to the process function, authenticated with a secret from Supabase
-- Vault (never written into SQL). Off by default, because the AWS route already queues every new
-- item to SQS (both on means every item is claimed twice; harmless, but twice the work).
--
-- This file only creates functions, so it applies anywhere, including a Postgres without pg_net
-- or Vault (the embedded one). Turn the webhook on, once the two Vault secrets exist:
--
--   select vault.create_secret('https://<id>.lambda-url.<region>.on.aws/', 'nexus_process_url');
--   select vault.create_secret('<NEXUS_WEBHOOK_SECRET>', 'nexus_webhook_secret');
--   select nexus.enable_process_webhook();
--
-- and off with `select nexus.disable_process_webhook();`. See docs/deploy.md.

-- The trigger: one queued HTTP request per change, sent by pg_net after the transaction commits
-- (a rolled-back insert sends nothing). The body carries the row without its content (up to
-- 5 MiB): the process function reads the item from the database anyway.
create or replace function nexus.notify_process_webhook() returns trigger
language plpgsql
security definer
set search_path = pg_catalog
as $$
declare
  process_url text;
  webhook_secret text;
  fields constant text[] := array['id', 'client_id', 'source', 'external_id', 'content_sha256',
                                  'char_count', 'status', 'created_at', 'updated_at'];
  new_row jsonb;
  old_row jsonb;
begin
  if tg_op = 'UPDATE' and new.content_sha256 is not distinct from old.content_sha256 then
    return null;  -- `update of content` also fires when the same text is written again
  end if;
  select s.decrypted_secret into process_url
    from vault.decrypted_secrets s where s.name = 'nexus_process_url';
  select s.decrypted_secret into webhook_secret
    from vault.decrypted_secrets s where s.name = 'nexus_webhook_secret';
  if coalesce(process_url, '') = '' or coalesce(webhook_secret, '') = '' then
    raise warning 'nexus process webhook: Vault secret nexus_process_url or nexus_webhook_secret '
                  'is missing; item % was not sent (the scheduled sweep will process it)', new.id;
    return null;
  end if;

  select jsonb_object_agg(e.key, e.value) into new_row
    from jsonb_each(to_jsonb(new)) e where e.key = any (fields);
  if tg_op = 'UPDATE' then
    select jsonb_object_agg(e.key, e.value) into old_row
      from jsonb_each(to_jsonb(old)) e where e.key = any (fields);
  end if;

  perform net.http_post(
    url := process_url,
    body := jsonb_build_object(
      'type', tg_op, 'table', tg_table_name, 'schema', tg_table_schema,
      'record', new_row, 'old_record', old_row),
    headers := jsonb_build_object(
      'Content-Type', 'application/json',
      'Authorization', 'Bearer ' || webhook_secret),
    -- The function answers after processing the item; a slow answer is no failure here (the
    -- function keeps running, and the sweep retries whatever did not finish).
    timeout_milliseconds := 5000);
  return null;
exception when others then
  -- A webhook must never make an insert fail: the sweep is the safety net.
  raise warning 'nexus process webhook: item % was not sent: %', new.id, sqlerrm;
  return null;
end
$$;

-- Create (or re-create) the trigger. Raises, naming what is missing, when pg_net or Vault is absent.
create or replace function nexus.enable_process_webhook() returns text
language plpgsql
set search_path = pg_catalog
as $$
begin
  if to_regprocedure('net.http_post(text, jsonb, jsonb, jsonb, integer)') is null then
    raise exception 'pg_net is not installed (no net.http_post): enable it first (Supabase: '
                    'Database > Extensions > pg_net, or `create extension pg_net;`)' using errcode = '55000';
  end if;
  if to_regclass('vault.decrypted_secrets') is null then
    raise exception 'Supabase Vault is not available (no vault.decrypted_secrets view)'
      using errcode = '55000';
  end if;
  if not exists (select 1 from vault.decrypted_secrets where name = 'nexus_process_url')
     or not exists (select 1 from vault.decrypted_secrets where name = 'nexus_webhook_secret') then
    raise exception 'create the Vault secrets nexus_process_url and nexus_webhook_secret first '
                    '(select vault.create_secret(value, name))' using errcode = '55000';
  end if;
  drop trigger if exists knowledge_items_process_webhook on public.knowledge_items;
  create trigger knowledge_items_process_webhook
    after insert or update of content on public.knowledge_items
    for each row execute function nexus.notify_process_webhook();
  return 'knowledge_items_process_webhook enabled';
end
$$;

create or replace function nexus.disable_process_webhook() returns text
language plpgsql
set search_path = pg_catalog
as $$
begin
  drop trigger if exists knowledge_items_process_webhook on public.knowledge_items;
  return 'knowledge_items_process_webhook disabled';
end
$$;

-- Only the database owner (the migration role) may switch the webhook or read Vault through it.
revoke all on function nexus.notify_process_webhook() from public;
revoke all on function nexus.enable_process_webhook() from public;
revoke all on function nexus.disable_process_webhook() from public;

-- Supabase's API roles exist on Supabase already; create them on a bare Postgres so the same
-- migrations (and RLS policies) apply everywhere.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;

-- Supabase keeps extensions in the `extensions` schema; a bare Postgres has no such schema.
do $$
begin
  if exists (select 1 from pg_namespace where nspname = 'extensions') then
    create extension if not exists vector with schema extensions;
  else
    create extension if not exists vector;
  end if;
end
$$;

grant usage on schema public to anon, authenticated, service_role;

-- Private helpers used by policies and functions; not exposed through PostgREST.
create schema if not exists nexus;
grant usage on schema nexus to anon, authenticated, service_role;

-- The client a Supabase JWT speaks for: a top-level `client_id` claim, or `app_metadata.client_id`.
create or replace function nexus.jwt_client_id() returns uuid
language plpgsql stable
set search_path = pg_catalog
as $$
declare
  claims jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
  raw text := coalesce(claims ->> 'client_id', claims -> 'app_metadata' ->> 'client_id');
begin
  return raw::uuid;
exception when invalid_text_representation then
  return null;
end
$$;
grant execute on function nexus.jwt_client_id() to anon, authenticated, service_role;

-- Hex sha256 of a text's UTF-8 bytes. convert_to is only STABLE in general, but a database's
-- encoding never changes, so for a fixed 'UTF8' target this is immutable (generated columns need that).
create or replace function nexus.sha256_hex(content text) returns text
language sql immutable strict parallel safe
set search_path = pg_catalog
as $$ select encode(sha256(convert_to(content, 'UTF8')), 'hex') $$;
grant execute on function nexus.sha256_hex(text) to anon, authenticated, service_role;

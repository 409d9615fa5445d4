-- Google OAuth tokens for Calendar, kept in public.system_config under `google_oauth_token`
-- (other accounts: `google_oauth_token:<name>`). Both store backends call these functions
-- (psycopg directly, PostgREST through `rpc`); only service_role may execute them.
--
-- A token row's value (see shared/google_tokens.py):
--   secrets       Fernet ciphertext of {"access_token", "refresh_token", "client_secret"}
--   client_id     the OAuth client the refresh token belongs to (not secret)
--   expiry        when the access token expires (ISO 8601, UTC), null when unknown
--   scopes        granted scopes (array of strings)
--   status        ok | reauth_required | error
--   refreshed_at  last successful refresh; last_error: the last failure, one sentence
--   lease_id, lease_until   present only while one invocation is refreshing the token
--
-- One refresher at a time: `claim_google_token_refresh` locks the row, and hands out a lease only
-- when the token needs refreshing and nobody holds an unexpired lease. No transaction stays open
-- during the call to Google, so this works through the transaction pooler and through PostgREST.

create or replace function nexus.check_google_token_key(token_key text) returns void
language plpgsql immutable
set search_path = pg_catalog
as $$
begin
  if token_key is null or token_key !~ '^google_oauth_token(:[A-Za-z0-9_.@-]{1,64})?$' then
    raise exception 'not a Google token key: %', token_key using errcode = '22023';
  end if;
end
$$;

-- The stored value, or null when there is none.
create or replace function public.read_google_token(token_key text) returns jsonb
language plpgsql stable
set search_path = public, pg_catalog
as $$
begin
  perform nexus.check_google_token_key(token_key);
  return (select c.value from system_config c where c.key = token_key);
end
$$;

-- Every stored Google token: a JSON array of {"key", "token"}, ordered by key.
create or replace function public.list_google_tokens() returns jsonb
language sql stable
set search_path = public, pg_catalog
as $$
  select coalesce(jsonb_agg(jsonb_build_object('key', c.key, 'token', c.value) order by c.key), '[]'::jsonb)
    from system_config c
   where c.key ~ '^google_oauth_token(:[A-Za-z0-9_.@-]{1,64})?$'
$$;

-- Store a token (after `nexus gcal init` / `import`), replacing any row and any lease on it.
create or replace function public.put_google_token(token_key text, token jsonb) returns void
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  perform nexus.check_google_token_key(token_key);
  insert into system_config as c (key, value, updated_at)
  values (token_key, token - 'lease_id' - 'lease_until', now())
  on conflict (key) do update set value = excluded.value, updated_at = now();
end
$$;

-- Decide who refreshes. Returns {"outcome", "token", "wait_seconds"} where outcome is
--   missing          no such row
--   reauth_required  Google refused the refresh token; nothing to do until init/import
--   fresh            status ok and more than margin_seconds left (and not forced)
--   busy             another invocation holds the lease; wait up to wait_seconds, then ask again
--   claimed          the caller holds the lease (token.lease_id) for lease_seconds
-- A row in status `error` is always due, so a transient failure is retried on the next run.
create or replace function public.claim_google_token_refresh(
  token_key text, margin_seconds integer, lease_seconds integer, force boolean default false
) returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  current_value jsonb;
  held_until timestamptz;
begin
  perform nexus.check_google_token_key(token_key);
  select c.value into current_value from system_config c where c.key = token_key for update;
  if not found then
    return jsonb_build_object('outcome', 'missing');
  end if;
  if current_value ->> 'status' = 'reauth_required' then
    return jsonb_build_object('outcome', 'reauth_required', 'token', current_value);
  end if;
  if not force
     and current_value ->> 'status' = 'ok'
     and (current_value ->> 'expiry')::timestamptz > clock_timestamp() + make_interval(secs => margin_seconds) then
    return jsonb_build_object('outcome', 'fresh', 'token', current_value);
  end if;
  held_until := (current_value ->> 'lease_until')::timestamptz;
  if held_until > clock_timestamp() then
    return jsonb_build_object(
      'outcome', 'busy', 'token', current_value,
      'wait_seconds', extract(epoch from held_until - clock_timestamp()));
  end if;
  current_value := current_value || jsonb_build_object(
    'lease_id', gen_random_uuid(),
    'lease_until', clock_timestamp() + make_interval(secs => lease_seconds));
  update system_config c set value = current_value, updated_at = now() where c.key = token_key;
  return jsonb_build_object('outcome', 'claimed', 'token', current_value);
end
$$;

-- Write the result of a claimed refresh (new token, or the old one with status and last_error)
-- and release the lease. False when the lease is no longer the caller's (it expired and another
-- invocation claimed it, or a new token was imported meanwhile): then nothing is written.
create or replace function public.finish_google_token_refresh(token_key text, lease_id text, token jsonb)
returns boolean
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  perform nexus.check_google_token_key(token_key);
  update system_config c
     set value = token - 'lease_id' - 'lease_until', updated_at = now()
   where c.key = token_key and c.value ->> 'lease_id' = finish_google_token_refresh.lease_id;
  return found;
end
$$;

-- Replace the ciphertext after a key rotation, only if it is still the one that was read
-- (a refresh that wrote a new token meanwhile wins; rotate again).
create or replace function public.reencrypt_google_token(token_key text, old_secrets text, new_secrets text)
returns boolean
language plpgsql
set search_path = public, pg_catalog
as $$
begin
  perform nexus.check_google_token_key(token_key);
  update system_config c
     set value = jsonb_set(c.value, '{secrets}', to_jsonb(new_secrets)), updated_at = now()
   where c.key = token_key and c.value ->> 'secrets' = old_secrets;
  return found;
end
$$;

revoke execute on function nexus.check_google_token_key(text) from public, anon, authenticated;
grant execute on function nexus.check_google_token_key(text) to service_role;
revoke execute on function public.read_google_token(text) from public, anon, authenticated;
grant execute on function public.read_google_token(text) to service_role;
revoke execute on function public.list_google_tokens() from public, anon, authenticated;
grant execute on function public.list_google_tokens() to service_role;
revoke execute on function public.put_google_token(text, jsonb) from public, anon, authenticated;
grant execute on function public.put_google_token(text, jsonb) to service_role;
revoke execute on function public.claim_google_token_refresh(text, integer, integer, boolean)
  from public, anon, authenticated;
grant execute on function public.claim_google_token_refresh(text, integer, integer, boolean) to service_role;
revoke execute on function public.finish_google_token_refresh(text, text, jsonb) from public, anon, authenticated;
grant execute on function public.finish_google_token_refresh(text, text, jsonb) to service_role;
revoke execute on function public.reencrypt_google_token(text, text, text) from public, anon, authenticated;
grant execute on function public.reencrypt_google_token(text, text, text) to service_role;

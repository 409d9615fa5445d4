-- provider_gate also says how many seconds remain until the next probe is due (`probe_in_s`, by
-- the database's clock), so a scheduled sweep that finds the fleet backed off can wait for it
-- inside its invocation instead of ending: with a sweep every 5 minutes, a probe still goes out
-- every NEXUS_PROVIDER_PROBE_SECONDS.
create or replace function public.provider_gate(
  provider_name text, worker text, probe_seconds double precision default 120)
returns jsonb
language plpgsql
set search_path = public, pg_catalog
as $$
declare
  current provider_backoff;
  probing provider_backoff;
  is_probe boolean;
begin
  select * into current from provider_backoff p where p.provider = provider_name;
  if not found or current.state = 'closed' then
    return jsonb_build_object('state', 'closed', 'claim', true, 'probe', false);
  end if;
  update provider_backoff p
     set probe_owner = worker, probe_at = now() + make_interval(secs => probe_seconds), updated_at = now()
   where p.provider = provider_name and p.state <> 'closed' and p.probe_at <= now()
  returning * into probing;
  is_probe := found;
  if is_probe then
    current := probing;
  end if;
  return jsonb_build_object(
    'state', current.state, 'claim', is_probe, 'probe', is_probe, 'probe_at', current.probe_at,
    'probe_in_s', greatest(extract(epoch from current.probe_at - now()), 0),
    'opened_at', current.opened_at, 'last_error', current.last_error, 'failures', current.failures);
end
$$;

revoke execute on function public.provider_gate(text, text, double precision) from public, anon, authenticated;
grant execute on function public.provider_gate(text, text, double precision) to service_role;

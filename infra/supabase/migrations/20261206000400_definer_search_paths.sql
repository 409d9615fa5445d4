-- The generation functions that run as their owner (security definer) search pg_catalog first,
-- so no object another role could create in `public` stands in for a built-in they call; the
-- index helper they call does the same (its `halfvec` is found in `extensions` or `public`).
alter function public.ensure_embedding_generation(text, integer) set search_path = pg_catalog, public;
alter function public.start_embedding_generation(text, integer) set search_path = pg_catalog, public;
alter function public.drop_embedding_generation(integer) set search_path = pg_catalog, public;
alter function nexus.create_generation_index(public.embedding_generations)
  set search_path = pg_catalog, public, extensions;

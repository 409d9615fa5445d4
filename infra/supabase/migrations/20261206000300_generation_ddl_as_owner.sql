-- `nexus embeddings start` and `drop` create and drop a generation's HNSW index, which only the
-- tables' owner may do; through PostgREST they run as service_role. Like
-- ensure_embedding_generation, they now run as their owner (both have a fixed search_path, and
-- only service_role may execute them).
alter function public.start_embedding_generation(text, integer) security definer;
alter function public.drop_embedding_generation(integer) security definer;

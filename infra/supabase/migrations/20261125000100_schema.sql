-- The data contract: the seed's three tables (columns kept), clients, summaries, processing state.

create table public.clients (
  id          uuid primary key default gen_random_uuid(),
  name        text not null default '',
  metadata    jsonb not null default '{}'::jsonb,
  created_at  timestamptz not null default now()
);

create table public.knowledge_items (
  id                   uuid primary key default gen_random_uuid(),
  client_id            uuid not null references public.clients (id) on delete cascade,
  source               text not null,
  content              text not null,
  metadata             jsonb not null default '{}'::jsonb,
  created_at           timestamptz not null default now(),
  processed            boolean not null default false,
  -- ingest
  external_id          text,
  idempotency_key      text,
  content_sha256       text not null
                       generated always as (nexus.sha256_hex(content)) stored,
  char_count           integer not null generated always as (char_length(content)) stored,
  token_estimate       integer,
  content_type         text,
  updated_at           timestamptz not null default now(),
  -- processing state
  status               text not null default 'pending'
                       check (status in ('pending', 'processing', 'done', 'failed')),
  attempts             integer not null default 0,
  last_error           text,
  lease_owner          text,
  lease_expires_at     timestamptz,
  -- what the current chunk set was built from (skip re-embedding when unchanged)
  processed_sha256     text,
  embedding_model      text,
  embedding_dimensions integer,
  chunk_count          integer,
  token_count          integer,
  summary              text,
  processed_at         timestamptz,
  processing_ms        integer
);

create unique index knowledge_items_client_external_id_key
  on public.knowledge_items (client_id, external_id) where external_id is not null;
create unique index knowledge_items_client_idempotency_key
  on public.knowledge_items (client_id, idempotency_key) where idempotency_key is not null;
create index knowledge_items_client_created_idx on public.knowledge_items (client_id, created_at desc);
-- The sweep's claim scans only unfinished items, oldest first.
create index knowledge_items_unfinished_idx
  on public.knowledge_items (created_at) where status <> 'done';

create table public.knowledge_chunks (
  id                   uuid primary key default gen_random_uuid(),
  knowledge_item_id    uuid not null references public.knowledge_items (id) on delete cascade,
  chunk_index          integer not null,
  content              text not null,
  embedding            vector(1536),
  created_at           timestamptz not null default now(),
  -- denormalised so search filters by client without a join, and RLS is a column check
  client_id            uuid,
  content_sha256       text not null
                       generated always as (nexus.sha256_hex(content)) stored,
  token_count          integer,
  embedding_model      text,
  embedding_dimensions integer,
  unique (knowledge_item_id, chunk_index)
);

create index knowledge_chunks_embedding_hnsw
  on public.knowledge_chunks using hnsw (embedding vector_cosine_ops);
create index knowledge_chunks_client_idx on public.knowledge_chunks (client_id);
-- Reuse of an embedding for the same text, model and dimensions, across items.
create index knowledge_chunks_reuse_idx
  on public.knowledge_chunks (content_sha256, embedding_model, embedding_dimensions);

create table public.client_summaries (
  client_id    uuid primary key references public.clients (id) on delete cascade,
  summary      text not null default '',
  item_count   integer not null default 0,
  model        text,
  updated_at   timestamptz not null default now()
);

create table public.system_config (
  key          text primary key,
  value        jsonb not null,
  updated_at   timestamptz not null default now()
);

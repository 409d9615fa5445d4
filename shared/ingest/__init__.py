"""`shared.ingest`."""

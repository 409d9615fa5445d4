"""`shared.runtime`."""

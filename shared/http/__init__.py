"""`shared.http`."""

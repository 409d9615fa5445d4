"""`shared.search`."""

"""`shared.providers`."""

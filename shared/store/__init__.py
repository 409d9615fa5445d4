"""`shared.store`."""

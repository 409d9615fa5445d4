"""`shared.local`."""

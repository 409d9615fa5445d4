"""`shared.cli`."""

"""`shared.process`."""

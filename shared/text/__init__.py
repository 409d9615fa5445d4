"""`shared.text`."""

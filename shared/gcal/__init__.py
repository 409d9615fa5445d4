"""`shared.gcal`."""

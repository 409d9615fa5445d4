"""Real local stand-ins for hosted services the tests talk to over HTTP."""

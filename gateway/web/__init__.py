"""The optional built-in web UI: a live page over SSE and a JSON query API on the local store."""

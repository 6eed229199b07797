"""One handler per trigger: each parses its input first, then calls the service, then settles or answers."""

"""One module per command group; each parses flags, calls `ApiClient` and prints."""

"""pytest plugin: records a test run as one DataCat session (being written)."""

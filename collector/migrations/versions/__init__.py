"""Revisions of the audit store schema, oldest first (``0001`` is the initial schema)."""

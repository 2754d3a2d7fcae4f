"""Helpers for testing with runbroker: a throwaway PostgreSQL cluster (``postgres``)."""

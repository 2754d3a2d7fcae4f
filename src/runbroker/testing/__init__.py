"""Helpers for testing with runbroker: a throwaway PostgreSQL cluster (``postgres``) and
simulated area detectors that write real HDF5 / TIFF / NPY files (``detectors``)."""

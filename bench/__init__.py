"""Muslin benchmarks: `python -m bench [--quick]` (root; everything in throwaway namespaces)."""

"""Benchmarks (run by hand or `make bench`; a smoke size runs in CI)."""
